"""The servers as the API and the console show them: each row with its agent, IP, current and
last deployments and who manages it; the status derived once, here.

Server status: 'destroying' while a destroy is queued or running; 'needs_operator' when the last
deployment left the stack for an operator (whatever the row says: act first); else the servers
row's status once the droplet got that far; else 'provisioning' while an `up` is queued or
running; else 'failed' (the last `up` failed before the droplet existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.store import deployments, queries
from citrus_deploy.store.deployments import Deployment, NotFound
from citrus_deploy.store.ownership import GitOpsStatus, ManagedBy, ownership
from citrus_deploy.store.records import one
from citrus_deploy.store.states import ACTIVE, AgentStatus, DeploymentState, Kind, ServerStatus


def server_status(
    row_status: str | None, *, active_kind: str | None, last_state: str | None
) -> ServerStatus:
    """`active_kind`: the kind of the deployment queued or running, if one is; `last_state`:
    that of the last finished one."""
    if active_kind == "destroy":
        return "destroying"
    if active_kind is None and last_state == "needs_operator":
        return "needs_operator"
    if row_status is not None:  # provisioning | active | failed (servers_status_known)
        return cast(ServerStatus, row_status)
    if active_kind is not None:
        return "provisioning"
    return "failed"


@dataclass(frozen=True)
class Server:
    name: str
    status: ServerStatus
    droplet_id: str | None
    ipv4_address: str | None
    region: str | None
    size: str | None
    agent_id: str | None
    agent_name: str | None
    agent_status: AgentStatus | None
    created_at: datetime | None
    current: Deployment | None
    last: Deployment | None
    managed_by: ManagedBy | None = None
    gitops: GitOpsStatus | None = None


async def get_server(pool: AsyncConnectionPool[Any], name: str, *, tail: int = 4000) -> Server:
    """The server's row, agent, IP and its current and last finished deployments."""
    params = {"server_name": name, "tail": tail}
    async with pool.connection() as conn:
        row = await one(conn, "select_server_with_agent", params)
        current_row = await one(conn, "select_active_deployment", params)
        last_row = await one(conn, "select_last_finished_deployment", params)
        outputs_row = await one(conn, "select_last_up_outputs", params)
        owners = await ownership(conn, [name])
    current = Deployment.from_row(current_row) if current_row else None
    last = Deployment.from_row(last_row) if last_row else None
    gone = last is not None and last.kind == "destroy" and last.state == "succeeded"
    if row is None and (current is None and (last is None or gone)):
        raise NotFound(f"no server named {name!r}")
    outputs = (outputs_row or {}).get("outputs") or {}
    row = row or {}
    managed_by, gitops = owners.get(name.lower(), (None, None))
    return Server(
        name=name,
        status=server_status(
            row.get("status"),
            active_kind=current.kind if current else None,
            last_state=last.state if last else None,
        ),
        droplet_id=row.get("digital_ocean_id"),
        ipv4_address=outputs.get("ipv4Address") if row.get("name") else None,
        region=row.get("region"),
        size=row.get("size"),
        agent_id=row.get("agent_id"),
        agent_name=row.get("agent_name"),
        agent_status=row.get("agent_status"),
        created_at=row.get("created_at"),
        current=current,
        last=last,
        managed_by=managed_by,
        gitops=gitops,
    )


async def last_up_config(pool: AsyncConnectionPool[Any], name: str) -> dict[str, Any] | None:
    """The config record of the name's last `up` (None if it never had one)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT config FROM deployments WHERE server_name = %s AND kind = 'up' "
            "ORDER BY id DESC LIMIT 1",
            (name,),
        )
        row = await cur.fetchone()
    return dict(row[0]) if row else None


@dataclass(frozen=True)
class ServerSummary:
    name: str
    status: ServerStatus
    droplet_id: str | None
    ipv4_address: str | None
    agent_id: str | None
    agent_name: str | None
    agent_status: AgentStatus | None
    deployment_id: int | None
    deployment_kind: Kind | None
    deployment_state: DeploymentState | None
    deployment_error: str | None
    managed_by: ManagedBy | None = None
    gitops: GitOpsStatus | None = None


async def list_servers(
    pool: AsyncConnectionPool[Any], *, limit: int = 100, offset: int = 0
) -> list[ServerSummary]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(queries.load()["list_servers"], {"limit": limit, "offset": offset})
        rows = await cur.fetchall()
        owners = await ownership(conn, [r["name"] for r in rows])
    found = []
    for r in rows:
        managed_by, gitops = owners.get(r["name"].lower(), (None, None))
        active = r["deployment_state"] in ACTIVE  # the name's latest deployment
        status = server_status(
            r["server_status"],
            active_kind=r["deployment_kind"] if active else None,
            last_state=None if active else r["deployment_state"],
        )
        found.append(
            ServerSummary(
                name=r["name"],
                status=status,
                droplet_id=r["digital_ocean_id"],
                ipv4_address=r["ipv4_address"] if r["server_status"] else None,
                agent_id=r["agent_id"],
                agent_name=r["agent_name"],
                agent_status=r["agent_status"],
                deployment_id=r["deployment_id"],
                deployment_kind=r["deployment_kind"],
                deployment_state=r["deployment_state"],
                deployment_error=r["deployment_error"],
                managed_by=managed_by,
                gitops=gitops,
            )
        )
    return found


async def enqueue_destroy(pool: AsyncConnectionPool[Any], name: str) -> Deployment:
    """Queues a `destroy` with the config of the name's last `up` (e.g. its agentName);
    NotFound for an unknown name, DeploymentConflict if a deployment of it is running."""
    server = await get_server(pool, name)
    return await deployments.enqueue(pool, "destroy", server.name, {"serverName": server.name})
