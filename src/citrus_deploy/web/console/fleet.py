"""The fleet as the console shows it: a row per server, as the JSON API lists them, with the
region, size and time of its last deployment; for the fleet page and its live view alike."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg_pool
from psycopg.rows import dict_row

from citrus_deploy.store import servers
from citrus_deploy.web.console.queries import sql

FLEET_LIMIT = 1000  # the fleet page shows at most this many servers


@dataclass(frozen=True)
class FleetRow:
    name: str
    status: str
    region: str | None
    size: str | None
    ip: str | None
    agent_name: str | None
    agent_status: str | None
    deployment_id: int | None
    deployment_kind: str | None
    deployment_state: str | None
    deployment_error: str | None
    deployment_at: datetime | None
    managed_by: str | None


async def load_fleet(pool: psycopg_pool.AsyncConnectionPool[Any]) -> tuple[FleetRow, ...]:
    """Every server as the JSON API lists it, with region, size and its last deployment's time."""
    found = await servers.list_servers(pool, limit=FLEET_LIMIT)
    names = [s.name for s in found]
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            sql()["console_fleet_details"],
            {"names": names, "ids": [s.deployment_id for s in found]},
        )
        details = {r["name"]: r for r in await cur.fetchall()}
    rows = []
    for s in found:
        more = details.get(s.name, {})
        rows.append(
            FleetRow(
                name=s.name,
                status=s.status,
                region=more.get("region"),
                size=more.get("size"),
                ip=s.ipv4_address,
                agent_name=s.agent_name,
                agent_status=s.agent_status,
                deployment_id=s.deployment_id,
                deployment_kind=s.deployment_kind,
                deployment_state=s.deployment_state,
                deployment_error=s.deployment_error,
                deployment_at=more.get("finished_at") or more.get("created_at"),
                managed_by=s.managed_by.kind if s.managed_by else None,
            )
        )
    return tuple(rows)


def only(rows: Iterable[FleetRow], status: str | None) -> tuple[FleetRow, ...]:
    return tuple(r for r in rows if status is None or r.status == status)
