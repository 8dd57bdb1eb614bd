"""The stale-agent check: the old platform's 10-minute 'failed' rule, finally built.

Agents still 'offline' AGENT_CONNECT_TIMEOUT after their row was created become 'failed', and
so do their servers still 'provisioning' (one statement); servers still 'provisioning' whose
agent is 'online' become 'active' (another). Each runs in its own transaction. Servers awaiting
their agent are found through the side table servers_awaiting_agent (db/schema.sql says why).
Several checkers may run at once (one per worker, or the CLI beside them): a row another
checker changed or removed first no longer matches when its lock is released, so each row
changes, and is reported, exactly once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from db import queries

log = logging.getLogger("citrus.stale")
_NAMES_IN_LOG = 20


@dataclass(frozen=True)
class StaleResult:
    failed_agents: list[str] = field(default_factory=list)  # agent names
    failed_servers: list[str] = field(default_factory=list)
    active_servers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return len(self.failed_agents) + len(self.failed_servers) + len(self.active_servers)


async def check(conn: psycopg.AsyncConnection[Any], timeout_seconds: float) -> StaleResult:
    """Runs the three transitions on `conn` (autocommit or not: each is committed)."""
    started = time.perf_counter()
    sql = queries.load()
    failed_agents: list[str] = []
    failed_servers: list[str] = []
    active_servers: list[str] = []
    for kind, name in await _run(
        conn, sql["fail_stale_agents"], {"timeout_seconds": timeout_seconds}
    ):
        (failed_agents if kind == "agent" else failed_servers).append(name)
    for name, status in await _run(conn, sql["settle_provisioning_servers"], {}):
        (active_servers if status == "active" else failed_servers).append(name)
    result = StaleResult(
        failed_agents, failed_servers, active_servers, time.perf_counter() - started
    )
    _log(result, timeout_seconds)
    return result


async def _run(
    conn: psycopg.AsyncConnection[Any], statement: str, params: dict[str, Any]
) -> list[tuple[str, str]]:
    async with conn.transaction():
        cur = await conn.execute(statement, params)
        return [(row[0], row[1]) for row in await cur.fetchall()]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_IN_LOG])
    more = len(names) - _NAMES_IN_LOG
    return f"{shown} and {more} more" if more > 0 else shown


def _log(result: StaleResult, timeout_seconds: float) -> None:
    if result.failed_agents:
        log.warning(
            "stale check: %d agent(s) still offline after %gs marked failed: %s",
            len(result.failed_agents),
            timeout_seconds,
            _names(result.failed_agents),
        )
        log.debug("all agents marked failed: %s", ", ".join(result.failed_agents))
    if result.failed_servers:
        log.warning(
            "stale check: %d server(s) marked failed (agent never connected): %s",
            len(result.failed_servers),
            _names(result.failed_servers),
        )
    if result.active_servers:
        log.info(
            "stale check: %d server(s) active (agent online): %s",
            len(result.active_servers),
            _names(result.active_servers),
        )
    if not result.changed:
        log.debug("stale check: nothing to change (%.3fs)", result.seconds)
