"""What GitOps knows of the deployed fleet, and how it queues work: the database side.

Ownership (who manages a server) is derived, never stored: the view server_ownership in
db/schema.sql. GitOps deployments go through the same single-statement insert of deployment and
queue job as the HTTP service (db/queries.sql, insert_gitops_deployment), so the workers run
them alike. Sync psycopg: the CLI is sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from citrus_deploy.program import validation
from citrus_deploy.store import queries
from citrus_deploy.store.deployments import DeploymentConflict, NotFound

MANAGERS = ("http", "gitops", "manual")
STATES = ("Ready", "Reconciling", "Failed", "Stalled")
OUTCOMES = ("succeeded", "failed", "stopped")
KINDS = ("up", "destroy")


@dataclass(frozen=True)
class Deployed:
    """One server name as the database knows it (db/schema.sql, server_ownership)."""

    name: str  # as written in the servers row, else in the last deployment
    managed_by: str | None  # 'http' | 'gitops' | 'manual' | None (free)
    repository: str | None  # for 'gitops'
    server_status: str | None  # servers.status, None without a row
    agent_status: str | None
    droplet_id: str | None
    applied_config: dict[str, Any] | None  # config of the last succeeded GitOps `up`
    applied_commit: str | None
    applied_program: str | None  # program_hash of that deployment
    attempted_commit: str | None  # commit of the last GitOps deployment (any state)
    last_kind: str | None  # of the last deployment (any source)
    last_state: str | None  # queued | running | succeeded | failed | needs_operator
    last_error: str | None
    active: bool  # a deployment is queued or running
    region: str | None = None  # of the servers row
    size: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Deployed:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


def load_deployed(conn: psycopg.Connection[Any]) -> dict[str, Deployed]:
    """Every name someone manages (or with a deployment in flight), keyed by name.lower().

    One query over the whole fleet; free names (destroyed, no servers row) are left out.
    """
    with conn.cursor() as cur:  # plain tuples, in the order of Deployed's fields: 10,000 rows
        cur.execute(queries.load()["select_deployed"])
        return {row[0].lower(): Deployed(*row) for row in cur}


def gitops_state(d: Deployed) -> str:
    """'Ready' | 'Reconciling' | 'Failed' | 'Stalled', as `status` and the API show it.

    Reconciling: a deployment is queued or running, or the last one succeeded and the server
    still waits for its agent. Stalled: a killed deployment left the stack for an operator.
    Failed: the last deployment failed, the agent never came (server 'failed'), or the servers
    row is gone. Ready: the last deployment, an `up`, succeeded and the agent is online (server
    'active'), the product's own health signal.
    """
    if d.active:
        return "Reconciling"
    if d.last_state == "needs_operator":
        return "Stalled"
    if d.last_state == "failed" or d.server_status == "failed":
        return "Failed"
    if d.server_status == "provisioning":
        return "Reconciling"
    if d.server_status == "active" and d.last_kind == "up" and d.last_state == "succeeded":
        return "Ready"
    return "Failed"


def start_apply(
    conn: psycopg.Connection[Any], repository: str, commit: str, plan_json: dict[str, Any]
) -> int:
    """Records an apply of `commit` and its plan; returns its id (gitops_applies.id)."""
    params = {"repository": repository, "commit": commit, "plan": Jsonb(plan_json)}
    with conn.transaction():
        row = conn.execute(queries.load()["insert_gitops_apply"], params).fetchone()
    assert row is not None
    apply_id: int = row[0]
    return apply_id


def finish_apply(conn: psycopg.Connection[Any], apply_id: int, outcome: str) -> None:
    """Records how the apply ended: 'succeeded' | 'failed' | 'stopped'."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}: must be one of {', '.join(OUTCOMES)}")
    with conn.transaction():
        row = conn.execute(
            queries.load()["finish_gitops_apply"], {"id": apply_id, "outcome": outcome}
        ).fetchone()
    if row is None:
        raise NotFound(f"no GitOps apply {apply_id}")


def enqueue(
    conn: psycopg.Connection[Any],
    *,
    apply_id: int | None,
    name: str,
    kind: str,
    config: dict[str, Any],
    repository: str,
    commit: str,
) -> int:
    """Queues a GitOps `up` or `destroy` of `name`; returns the deployment id.

    The same deployment + job insert as HTTP (lock and queueing lock = the name). An `up` of an
    existing server is an update, so it is accepted; a `destroy` runs with the config of the
    name's last `up`. Raises DeploymentConflict (reason 'deployment_in_progress') when a
    deployment of the name, in any case, is queued or running, as HTTP does; NotFound for a
    destroy of a name with neither a servers row nor any deployment. Commits at once unless
    called inside a transaction of the caller's (then a savepoint keeps the connection usable
    after a conflict).
    """
    from citrus_deploy.queue import tasks

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: must be 'up' or 'destroy'")
    validation.server_name(name, "name")
    task = tasks.deploy if kind == "up" else tasks.destroy
    params = {
        "server_name": name,
        "kind": kind,
        "config": Jsonb(config),
        "repository": repository,
        "commit": commit,
        "apply_id": apply_id,
        "queue": task.queue,
        "task_name": task.name,
        "priority": task.priority,
    }
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(queries.load()["insert_gitops_deployment"], params)
            row = cur.fetchone()
    except pg_errors.UniqueViolation as exc:
        # deployments_one_active, or the job's queueing lock: either way one is in flight.
        holder = _holder(conn, name)
        note = "" if holder == name else f" (names are hostnames: {name!r} is the same name)"
        raise DeploymentConflict(
            f"a deployment for {holder!r} is already queued or running{note}",
            reason="deployment_in_progress",
            server_name=holder,
        ) from exc
    if row is None:
        raise NotFound(f"no server named {name!r}")
    deployment_id: int = row["id"]
    return deployment_id


def _holder(conn: psycopg.Connection[Any], name: str) -> str:
    """The name, as written, of the active deployment holding `name` (in any case)."""
    with conn.transaction():
        row = conn.execute(queries.load()["name_holders"], {"server_name": name}).fetchone()
    holder: str | None = row[1] if row else None
    return holder or name


def apply_deployments(conn: psycopg.Connection[Any], apply_id: int) -> list[dict[str, Any]]:
    """The deployments of one apply, in the order queued: id, server_name, kind, state, error."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(queries.load()["select_apply_deployments"], {"apply_id": apply_id})
        return cur.fetchall()


def last_apply(conn: psycopg.Connection[Any], repository: str, commit: str) -> int | None:
    """The id of the last apply of `commit` from `repository`, None if there was none."""
    params = {"repository": repository, "commit": commit}
    row = conn.execute(queries.load()["select_last_apply"], params).fetchone()
    return int(row[0]) if row else None
