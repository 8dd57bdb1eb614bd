"""Deployments: the one enqueue of an `up` or `destroy`, for the HTTP service and GitOps alike.

Each enqueue inserts the deployment and its queue job in one statement (one transaction), so
there is never a record without a job or a job without a record; names are taken in any case
(they are hostnames), and a refusal names the holder as it is written. What the worker then
records is store/records.py's; how the servers read back, store/servers.py's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.errors import CitrusError
from citrus_deploy.program import validation
from citrus_deploy.store import jobs, queries
from citrus_deploy.store.states import FINISHED, KINDS, DeploymentState, Kind

log = logging.getLogger("citrus.deployments")

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
    kind: Kind
    state: DeploymentState
    config: dict[str, Any]  # non-secret stack config (engine.stack_config)
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
class Origin:
    """Where a deployment came from: the HTTP service, or a GitOps apply (the repository and
    commit of its file, and the apply)."""

    source: Literal["http", "gitops"] = "http"
    repository: str | None = None
    commit: str | None = None
    apply_id: int | None = None


HTTP = Origin()


def in_progress(name: str, holder: str) -> DeploymentConflict:
    """deployments_one_active, or the job's queueing lock: a deployment of the name is queued
    or running."""
    return DeploymentConflict(
        f"a deployment for {holder!r} is already queued or running{_case_note(name, holder)}",
        reason="deployment_in_progress",
        server_name=holder,
    )


def name_in_use(name: str, holder: str) -> DeploymentConflict:
    return DeploymentConflict(
        f"a server named {holder!r} already exists{_case_note(name, holder)}; "
        "DELETE it first or choose another name",
        reason="name_in_use",
        server_name=holder,
    )


def _case_note(name: str, holder: str) -> str:
    return "" if holder == name else f" (names are hostnames: {name!r} is the same name)"


def _params(
    kind: Kind, name: str, config: dict[str, Any], *, update: bool, origin: Origin
) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: must be 'up' or 'destroy'")
    job = jobs.DEPLOY if kind == "up" else jobs.DESTROY
    return {
        "kind": kind,
        "server_name": name,
        "config": Jsonb(config),
        "update": update,
        "source": origin.source,
        "repository": origin.repository,
        "commit": origin.commit,
        "apply_id": origin.apply_id,
        **job.params(),
    }


def _holder(row: dict[str, Any] | None, name: str, what: str) -> str:
    """The name, as written, of the server row or active deployment that holds `name`
    (name_holders). Gone meanwhile (finished, deleted): `name` itself."""
    holder: str | None = (row or {}).get(what)
    return holder or name


def _refused(kind: Kind, name: str, holders: dict[str, Any] | None) -> CitrusError:
    """Why the insert made no row: the name's server exists (an `up`), or there is nothing to
    destroy."""
    if kind == "up":
        return name_in_use(name, _holder(holders, name, "server"))
    return NotFound(f"no server named {name!r}")


async def enqueue(
    pool: AsyncConnectionPool[Any],
    kind: Kind,
    name: str,
    config: dict[str, Any],
    *,
    update: bool = False,
    origin: Origin = HTTP,
) -> Deployment:
    """Queues an `up` or `destroy` of `name` (insert_deployment); raises DeploymentConflict
    (in progress; the name in use, for an `up` without `update`) or NotFound (a destroy of
    nothing)."""
    params = _params(kind, name, config, update=update, origin=origin)
    sql = queries.load()["insert_deployment"]
    try:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql, params)
            row = await cur.fetchone()
    except pg_errors.UniqueViolation as exc:
        holders = await _holders(pool, name)
        raise in_progress(name, _holder(holders, name, "deployment")) from exc
    if row is None:
        raise _refused(kind, name, await _holders(pool, name))
    log.info("queued %s of %s: deployment %s, job %s", kind, name, row["id"], row["job_id"])
    return Deployment.from_row(row)


def enqueue_sync(
    conn: psycopg.Connection[Any],
    kind: Kind,
    name: str,
    config: dict[str, Any],
    *,
    update: bool = False,
    origin: Origin = HTTP,
) -> Deployment:
    """enqueue, for a sync caller (the GitOps CLI): commits at once unless called inside a
    transaction of the caller's (then a savepoint keeps the connection usable after a
    refusal)."""
    params = _params(kind, name, config, update=update, origin=origin)
    sql = queries.load()["insert_deployment"]
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
    except pg_errors.UniqueViolation as exc:
        raise in_progress(name, _holder(_holders_sync(conn, name), name, "deployment")) from exc
    if row is None:
        raise _refused(kind, name, _holders_sync(conn, name))
    log.info("queued %s of %s: deployment %s, job %s", kind, name, row["id"], row["job_id"])
    return Deployment.from_row(row)


async def _holders(pool: AsyncConnectionPool[Any], name: str) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(queries.load()["name_holders"], {"server_name": name})
        found: dict[str, Any] | None = await cur.fetchone()
        return found


def _holders_sync(conn: psycopg.Connection[Any], name: str) -> dict[str, Any] | None:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.load()["name_holders"], {"server_name": name})
        return cur.fetchone()


# -- the HTTP service's requests --------------------------------------------------------------


def default_names(now_ms: int) -> tuple[str, str]:
    """The old platform's rule when no name is given.

    When the server name is taken, the database adds the same suffix to both (`-2`, `-3`, ...):
    see deployments_insert_generated_up in migrations/0002_deployments.sql.
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
        return await enqueue(pool, "up", name, {"serverName": name, **chosen})
    server, agent = default_names(int(time.time() * 1000))
    params = {
        "server_base": server,
        "agent_base": agent,
        "tries": _GENERATED_NAME_TRIES,
        "chosen": Jsonb(chosen),
        **jobs.DEPLOY.params(),
    }
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(queries.load()["name_insert_generated_up"], params)
        row = await cur.fetchone()
    if row is None:
        raise DeploymentConflict(
            f"no free generated name from {server!r} to {server}-{_GENERATED_NAME_TRIES}; "
            "give a name",
            reason="name_in_use",
            server_name=server,
        )
    log.info("queued up of %s: deployment %s, job %s", row["server_name"], row["id"], row["job_id"])
    return Deployment.from_row(row)


async def enqueue_remediation(pool: AsyncConnectionPool[Any], name: str) -> Deployment:
    """Remediation's destroy of a failed server: the statement that queues it decides, with the
    server's and its agent's rows locked, that the server is still 'failed' and its agent not
    'online' (or that a failed `up` never wrote the row); if not, nothing is queued and
    DeploymentConflict says so (reason "not_failed"). An agent coming online while it decides
    is not missed: store/sql/deployments.sql, remediate_enqueue_destroy."""
    params = {"server_name": name, **jobs.DESTROY.params()}
    try:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(queries.load()["remediate_enqueue_destroy"], params)
            row = await cur.fetchone()
    except pg_errors.UniqueViolation as exc:
        raise in_progress(name, name) from exc
    if row is None:
        raise DeploymentConflict(
            f"server {name!r} is no longer failed, or its agent is online: not destroyed",
            reason="not_failed",
            server_name=name,
        )
    log.info("queued destroy of %s: deployment %s, job %s", name, row["id"], row["job_id"])
    return Deployment.from_row(row)
