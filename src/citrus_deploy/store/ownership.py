"""Who manages each server, and where a GitOps server stands.

Ownership is derived, never stored: the view server_ownership (migrations/0003_gitops.sql) says
for every name (in any case) who manages it ('http', 'gitops' with its repository, 'manual' for a
row made by hand) and what was applied. GitOps reads the whole fleet at once (load_deployed,
sync: the CLI is sync); the web reads the names it shows (ownership, async).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from citrus_deploy.store import queries
from citrus_deploy.store.states import DeploymentState, GitOpsState, Kind, Manager


@dataclass(frozen=True)
class Deployed:
    """One server name as the database knows it (the view server_ownership)."""

    name: str  # as written in the servers row, else in the last deployment
    managed_by: Manager | None  # None: free
    repository: str | None  # for 'gitops'
    server_status: str | None  # servers.status, None without a row
    agent_status: str | None
    droplet_id: str | None
    applied_config: dict[str, Any] | None  # config of the last succeeded GitOps `up`
    applied_commit: str | None
    applied_program: str | None  # program_hash of that deployment
    attempted_commit: str | None  # commit of the last GitOps deployment (any state)
    last_kind: Kind | None  # of the last deployment (any source)
    last_state: DeploymentState | None
    last_error: str | None
    active: bool  # a deployment is queued or running
    region: str | None = None  # of the servers row
    size: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Deployed:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ManagedBy:
    """Who manages a server: 'http', 'gitops' (with its repository) or 'manual'."""

    kind: Manager
    repository: str | None


@dataclass(frozen=True)
class GitOpsStatus:
    """A GitOps server's state (gitops_state) and its last commits."""

    state: GitOpsState
    last_applied_commit: str | None
    last_attempted_commit: str | None


def gitops_state(d: Deployed) -> GitOpsState:
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


def load_deployed(conn: psycopg.Connection[Any]) -> dict[str, Deployed]:
    """Every name someone manages (or with a deployment in flight), keyed by name.lower().

    One query over the whole fleet; free names (destroyed, no servers row) are left out.
    """
    with conn.cursor() as cur:  # plain tuples, in the order of Deployed's fields: 10,000 rows
        cur.execute(queries.load()["select_deployed"])
        return {row[0].lower(): Deployed(*row) for row in cur}


async def ownership(
    conn: psycopg.AsyncConnection[Any], names: Sequence[str]
) -> dict[str, tuple[ManagedBy | None, GitOpsStatus | None]]:
    """Who manages each name, and for GitOps its state and commits; keyed by name.lower()."""
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
