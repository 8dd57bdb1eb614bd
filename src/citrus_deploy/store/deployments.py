"""Deployments: enqueue an `up` or `destroy`, record what the worker does, read it back.

The web process calls `enqueue_up`/`enqueue_destroy` and the readers; the worker calls the
`start_attempt` ... `fail` writers. Each enqueue inserts the deployment and its queue job in one
statement (one transaction), so there is never a record without a job or a job without a record.

Server status as the API shows it: 'destroying' while a destroy is queued or running, else the
servers row's status when the droplet got that far, else 'provisioning' while an `up` is queued
or running, else 'failed' (the last `up` failed before the droplet existed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.errors import CitrusError
from citrus_deploy.program import validation
from citrus_deploy.store import queries

log = logging.getLogger("citrus.deployments")

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "needs_operator")
# Suffixes a generated name may take (server-<millis>, -2, ...): that many POSTs in one
# millisecond, far beyond what any number of web processes can write.
_GENERATED_NAME_TRIES = 1000


class DeploymentConflict(CitrusError):
    """The name is taken: a deployment is queued/running for it, or its server exists."""

    def __init__(self, message: str, *, reason: str, server_name: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.server_name = server_name


class NotFound(CitrusError):
    """No server (or deployment) by that name or id."""


@dataclass(frozen=True)
class Deployment:
    id: int
    server_name: str
    kind: str
    state: str
    config: dict[str, Any]  # non-secret stack config (settings.Settings.stack_config)
    error: str | None
    output_tail: str
    attempts: int
    job_id: int | None
    outputs: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Deployment:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class ManagedBy:
    """Who manages a server: 'http', 'gitops' (with its repository) or 'manual'."""

    kind: str
    repository: str | None


@dataclass(frozen=True)
class GitOpsStatus:
    """A GitOps server's state (gitops.state.gitops_state) and its last commits."""

    state: str
    last_applied_commit: str | None
    last_attempted_commit: str | None


@dataclass(frozen=True)
class Server:
    name: str
    status: str
    droplet_id: str | None
    ipv4_address: str | None
    region: str | None
    size: str | None
    agent_id: str | None
    agent_name: str | None
    agent_status: str | None
    created_at: datetime | None
    current: Deployment | None
    last: Deployment | None
    managed_by: ManagedBy | None = None
    gitops: GitOpsStatus | None = None


def server_status(
    row_status: str | None, current: Deployment | None, last_state: str | None = None
) -> str:
    if current is not None and current.kind == "destroy":
        return "destroying"
    if current is None and last_state == "needs_operator":  # whatever its row says: act first
        return "needs_operator"
    if row_status is not None:
        return row_status
    if current is not None:
        return "provisioning"
    return "failed"


# -- enqueue (web) ----------------------------------------------------------------------------


def default_names(now_ms: int) -> tuple[str, str]:
    """The old platform's rule when no name is given.

    When the server name is taken, the database adds the same suffix to both (`-2`, `-3`, ...):
    see deployments_insert_generated_up in db/schema.sql.
    """
    return f"server-{now_ms}", f"agent-{now_ms}"


async def enqueue_up(
    pool: AsyncConnectionPool[Any],
    name: str | None,
    *,
    region: str | None = None,
    size: str | None = None,
    tail: int = 0,
) -> Deployment:
    """Queues an `up` for `name` (validated), or for `server-<unix millis>` when None, in
    `region` and of `size` when given (validated; else the stack's defaults, Pulumi.yaml).

    Raises InvalidValue for a bad name, region or size, DeploymentConflict when the name is
    taken (in any case: names are hostnames). A generated name that is taken (requests in the
    same millisecond) gets the first free suffix, `server-<millis>-2` and on, chosen by the
    database in the insert.
    """
    # In the deployment's config record, so the worker's `up` sets them in the stack.
    chosen: dict[str, Any] = {}
    if region is not None:
        chosen["region"] = validation.region(region, "region")
    if size is not None:
        chosen["size"] = validation.size(size, "size")
    if name is not None:
        validation.server_name(name, "name")
        return await _enqueue(pool, "up", name, {"serverName": name, **chosen})
    server, agent = default_names(int(time.time() * 1000))
    generated = {
        "server_base": server,
        "agent_base": agent,
        "tries": _GENERATED_NAME_TRIES,
        "chosen": Jsonb(chosen),
    }
    return await _enqueue(pool, "up", server, {}, generated=generated)


async def enqueue_destroy(
    pool: AsyncConnectionPool[Any], name: str, *, only_if_failed: bool = False
) -> Deployment:
    """Queues a `destroy`; NotFound for an unknown name, DeploymentConflict if one is running.

    `only_if_failed` (remediation): the statement that queues it decides, with the server's and
    its agent's rows locked, that the server is still 'failed' and its agent not 'online' (or
    that a failed `up` never wrote the row); if not, nothing is queued and DeploymentConflict
    says so (reason "not_failed"). An agent coming online while it decides is not missed:
    db/queries.sql, remediate_enqueue_destroy.
    """
    if only_if_failed:
        from citrus_deploy.queue import tasks

        params = {
            "server_name": name,
            "queue": tasks.destroy.queue,
            "task_name": tasks.destroy.name,
            "priority": tasks.destroy.priority,
        }
        try:
            async with pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(queries.load()["remediate_enqueue_destroy"], params)
                row = await cur.fetchone()
        except pg_errors.UniqueViolation as exc:
            raise DeploymentConflict(
                f"a deployment for {name!r} is already queued or running",
                reason="deployment_in_progress",
                server_name=name,
            ) from exc
        if row is None:
            raise DeploymentConflict(
                f"server {name!r} is no longer failed, or its agent is online: not destroyed",
                reason="not_failed",
                server_name=name,
            )
        log.info("queued destroy of %s: deployment %s, job %s", name, row["id"], row["job_id"])
        return Deployment.from_row(row)
    server = await get_server(pool, name)
    # The same non-secret config as the stack's last `up` (e.g. its agentName).
    config = await last_up_config(pool, name) or {"serverName": name}
    return await _enqueue(pool, "destroy", server.name, config)


async def _enqueue(
    pool: AsyncConnectionPool[Any],
    kind: str,
    name: str,
    config: dict[str, Any],
    *,
    generated: dict[str, Any] | None = None,
) -> Deployment:
    """Inserts the deployment and its queue job with one statement (one round trip).

    The job is the one `task.configure(lock=name, queueing_lock=name).defer(deployment_id=...)`
    would write, through procrastinate's defer function, so a worker cannot tell the difference.
    With `generated` (base names and tries), the database picks the name and its config.
    """
    from citrus_deploy.queue import tasks

    task = tasks.deploy if kind == "up" else tasks.destroy
    params = {
        "kind": kind,
        "server_name": name,
        "config": Jsonb(config),
        "queue": task.queue,
        "task_name": task.name,
        "priority": task.priority,
        **(generated or {}),
    }
    query = "name_insert_generated_up" if generated else "insert_deployment"
    try:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(queries.load()[query], params)
            row = await cur.fetchone()
    except pg_errors.UniqueViolation as exc:
        # deployments_one_active, or the job's queueing lock: either way one is in flight.
        holder = await _holder(pool, name, "deployment")
        raise DeploymentConflict(
            f"a deployment for {holder!r} is already queued or running{_case_note(name, holder)}",
            reason="deployment_in_progress",
            server_name=holder,
        ) from exc
    if row is None and generated:
        raise DeploymentConflict(
            f"no free generated name from {name!r} to {name}-{generated['tries']}; give a name",
            reason="name_in_use",
            server_name=name,
        )
    if row is None:
        holder = await _holder(pool, name, "server")
        raise DeploymentConflict(
            f"a server named {holder!r} already exists{_case_note(name, holder)}; "
            "DELETE it first or choose another name",
            reason="name_in_use",
            server_name=holder,
        )
    log.info(
        "queued %s of %s: deployment %s, job %s", kind, row["server_name"], row["id"], row["job_id"]
    )
    return Deployment.from_row(row)


async def _holder(pool: AsyncConnectionPool[Any], name: str, what: str) -> str:
    """The name, as written, of the server row or active deployment that holds `name`.

    Names are unique in any case, so it may differ from `name` in case: the 409 names it and
    its Location points at it. Gone meanwhile (finished, deleted): `name` itself.
    """
    async with pool.connection() as conn:
        row = await _one(conn, "name_holders", {"server_name": name})
    holder: str | None = (row or {}).get(what)
    return holder or name


def _case_note(name: str, holder: str) -> str:
    return "" if holder == name else f" (names are hostnames: {name!r} is the same name)"


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


# -- read (web) -------------------------------------------------------------------------------


async def _one(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(queries.load()[name], params)
    row: dict[str, Any] | None = await cur.fetchone()
    return row


async def get_deployment(
    pool: AsyncConnectionPool[Any], deployment_id: int, *, tail: int = 4000
) -> Deployment:
    async with pool.connection() as conn:
        row = await _one(conn, "select_deployment", {"id": deployment_id, "tail": tail})
    if row is None:
        raise NotFound(f"no deployment {deployment_id}")
    return Deployment.from_row(row)


async def get_server(pool: AsyncConnectionPool[Any], name: str, *, tail: int = 4000) -> Server:
    """The server's row, agent, IP and its current and last finished deployments."""
    params = {"server_name": name, "tail": tail}
    async with pool.connection() as conn:
        row = await _one(conn, "select_server_with_agent", params)
        current_row = await _one(conn, "select_active_deployment", params)
        last_row = await _one(conn, "select_last_finished_deployment", params)
        outputs_row = await _one(conn, "select_last_up_outputs", params)
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
        status=server_status(row.get("status"), current, last.state if last else None),
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


async def ownership(
    conn: psycopg.AsyncConnection[Any], names: Sequence[str]
) -> dict[str, tuple[ManagedBy | None, GitOpsStatus | None]]:
    """Who manages each name, and for GitOps its state and commits; keyed by name.lower().

    The rules are the view server_ownership's (db/schema.sql), the state gitops.state's.
    """
    from citrus_deploy.gitops.state import Deployed, gitops_state

    cur = conn.cursor(row_factory=dict_row)
    keys = sorted({name.lower() for name in names})
    await cur.execute(queries.load()["select_ownership"], {"keys": keys})
    found: dict[str, tuple[ManagedBy | None, GitOpsStatus | None]] = {}
    for row in await cur.fetchall():
        deployed = Deployed.from_row(row)
        if deployed.managed_by is None:
            continue
        gitops = None
        if deployed.managed_by == "gitops":
            gitops = GitOpsStatus(
                state=gitops_state(deployed),
                last_applied_commit=deployed.applied_commit,
                last_attempted_commit=deployed.attempted_commit,
            )
        found[row["key"]] = (ManagedBy(deployed.managed_by, deployed.repository), gitops)
    return found


@dataclass(frozen=True)
class ServerSummary:
    name: str
    status: str
    droplet_id: str | None
    ipv4_address: str | None
    agent_id: str | None
    agent_name: str | None
    agent_status: str | None
    deployment_id: int | None
    deployment_kind: str | None
    deployment_state: str | None
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
        active = r["deployment_state"] in ACTIVE
        if active and r["deployment_kind"] == "destroy":
            status = "destroying"
        elif r["deployment_state"] == "needs_operator":
            status = "needs_operator"
        elif r["server_status"] is not None:
            status = r["server_status"]
        else:
            status = "provisioning" if active else "failed"
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


async def wait_until_finished(
    pool: AsyncConnectionPool[Any],
    deployment_id: int,
    timeout: float,
    *,
    interval: float = 0.25,
) -> Deployment:
    """Polls until the deployment finishes or `timeout` passes; returns the last state seen."""
    deadline = time.monotonic() + timeout
    while True:
        found = await get_deployment(pool, deployment_id, tail=0)
        if found.finished or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# -- record (worker) --------------------------------------------------------------------------


async def _execute(pool: AsyncConnectionPool[Any], name: str, params: dict[str, Any]) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(queries.load()[name], params)
        count: int = cur.rowcount
        return count


async def start_attempt(
    pool: AsyncConnectionPool[Any], deployment_id: int, job_id: int | None
) -> Deployment | None:
    async with pool.connection() as conn:
        row = await _one(conn, "start_attempt", {"id": deployment_id, "job_id": job_id})
    return Deployment.from_row(row) if row else None


async def beat(pool: AsyncConnectionPool[Any], deployment_id: int) -> None:
    await _execute(pool, "beat_deployment", {"id": deployment_id})


async def alive(pool: AsyncConnectionPool[Any], deployment_id: int, seconds: float) -> bool:
    """Whether the deployment's running attempt beat within `seconds` (its worker is alive)."""
    async with pool.connection() as conn:
        row = await _one(conn, "deployment_alive", {"id": deployment_id, "seconds": seconds})
    return bool(row and row["alive"])


async def append_output(pool: AsyncConnectionPool[Any], deployment_id: int, text: str) -> None:
    await _execute(pool, "append_output", {"id": deployment_id, "text": text})


async def succeed(
    pool: AsyncConnectionPool[Any],
    deployment_id: int,
    outputs: dict[str, Any],
    *,
    program_hash: str | None = None,
) -> None:
    """`program_hash`: citrus.program.program_hash() of the code an `up` ran (GitOps compares
    it with the checkout it plans)."""
    params = {"id": deployment_id, "outputs": Jsonb(outputs), "program_hash": program_hash}
    await _execute(pool, "succeed_deployment", params)


async def fail(pool: AsyncConnectionPool[Any], deployment_id: int, error: str) -> None:
    """The deployment failed for good: it and its server (if it has a row) say so."""
    async with pool.connection() as conn, conn.transaction():
        row = await _one(conn, "fail_deployment", {"id": deployment_id, "error": error})
        if row is not None:
            await conn.execute(queries.load()["fail_server"], {"server_name": row["server_name"]})


async def needs_operator(
    pool: AsyncConnectionPool[Any], deployment_id: int, error: str, repair: str
) -> None:
    """A killed update left the stack half done: the record says what to run; no retry."""
    text = f"{error}\nTo repair, an operator runs:\n{repair}"
    await _execute(pool, "needs_operator_deployment", {"id": deployment_id, "error": text})


async def requeue(
    pool: AsyncConnectionPool[Any], deployment_id: int, error: str, note: str
) -> None:
    await _execute(
        pool, "requeue_deployment", {"id": deployment_id, "error": error, "text": note + "\n"}
    )


async def interrupt(
    pool: AsyncConnectionPool[Any], deployment_id: int, attempts: int, error: str
) -> bool:
    """Marks a running attempt whose worker vanished; False when another checker did it."""
    async with pool.connection() as conn:
        row = await _one(
            conn,
            "interrupt_deployment",
            {"id": deployment_id, "attempts": attempts, "error": error, "text": f"!! {error}\n"},
        )
    return row is not None


async def failed_servers_without_deployment(
    pool: AsyncConnectionPool[Any],
    *,
    backoff: float,
    backoff_max: float = 6 * 3600,
    limit: int = 100,
) -> Sequence[str]:
    """Failed servers to destroy now (never one whose agent is online); one whose destroy keeps
    failing waits longer each time. A list to act on with enqueue_destroy(only_if_failed=True),
    which decides again."""
    params = {"limit": limit, "backoff": backoff, "backoff_max": backoff_max}
    async with pool.connection() as conn:
        cur = await conn.execute(queries.load()["select_failed_servers_without_deployment"], params)
        return [r[0] for r in await cur.fetchall()]
