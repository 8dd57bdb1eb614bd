"""What GitOps records of its applies: each apply of a commit, its plan, how it ended, and the
deployments it queued (migrations/0003_gitops.sql). Sync psycopg: the CLI is sync."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from citrus_deploy.program import validation
from citrus_deploy.store import queries
from citrus_deploy.store.deployments import NotFound, Origin, enqueue_sync
from citrus_deploy.store.states import APPLY_OUTCOMES, ApplyOutcome, Kind


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


def finish_apply(conn: psycopg.Connection[Any], apply_id: int, outcome: ApplyOutcome) -> None:
    """Records how the apply ended: 'succeeded' | 'failed' | 'stopped'."""
    if outcome not in APPLY_OUTCOMES:
        raise ValueError(f"outcome {outcome!r}: must be one of {', '.join(APPLY_OUTCOMES)}")
    with conn.transaction():
        row = conn.execute(
            queries.load()["finish_gitops_apply"], {"id": apply_id, "outcome": outcome}
        ).fetchone()
    if row is None:
        raise NotFound(f"no GitOps apply {apply_id}")


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


def enqueue(
    conn: psycopg.Connection[Any],
    *,
    apply_id: int | None,
    name: str,
    kind: Kind,
    config: dict[str, Any],
    repository: str,
    commit: str,
) -> int:
    """Queues a GitOps `up` or `destroy` of `name` through the one enqueue; returns the
    deployment id. An `up` of an existing server is an update of it; a `destroy` runs with the
    config of the name's last `up`. Raises DeploymentConflict (reason 'deployment_in_progress')
    when a deployment of the name, in any case, is queued or running, as HTTP does; NotFound for
    a destroy of a name with neither a servers row nor any deployment."""
    validation.server_name(name, "name")
    origin = Origin("gitops", repository, commit, apply_id)
    return enqueue_sync(conn, kind, name, config, update=True, origin=origin).id
