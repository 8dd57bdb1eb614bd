"""The console's GitOps page: for each fleet (a repository's fleet folder), its last apply with
the apply's waves, and the servers the last drift check found drifted (or could not check).

The waves are read back from the deployments' times, by the rollout's own rule (gitops.rollout):
a wave is queued only once every deployment of the wave before it has finished, so a deployment
created after all of the current wave's deployments finished starts the next wave.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg_pool
from fastapi import Request
from fastapi.responses import Response
from psycopg.rows import dict_row

from citrus_deploy.web.console.guard import Guard
from citrus_deploy.web.console.queries import sql
from citrus_deploy.web.console.render import page
from citrus_deploy.web.dependencies import Pool


@dataclass(frozen=True)
class Step:
    """One deployment of an apply."""

    id: int
    server_name: str
    kind: str
    state: str
    error: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class Wave:
    number: int
    steps: tuple[Step, ...]

    @property
    def state(self) -> str:
        """'running' while any is unfinished, else 'failed' if any failed, else 'succeeded'."""
        states = {s.state for s in self.steps}
        if states & {"queued", "running"}:
            return "running"
        return "succeeded" if states <= {"succeeded"} else "failed"


@dataclass(frozen=True)
class Drifted:
    name: str
    check_id: int
    state: str  # the check's: 'succeeded' (it found drift) or 'failed' (it could not check)
    error: str | None
    finished_at: datetime | None


@dataclass
class Folder:
    """One fleet: its repository, its last apply (None before the first) and its drift."""

    repository: str
    apply: Mapping[str, Any] | None = None
    waves: list[Wave] = field(default_factory=list)
    drifted: list[Drifted] = field(default_factory=list)
    checked: int = 0  # servers with a finished drift check


def waves_of(steps: Sequence[Step]) -> list[Wave]:
    """The apply's deployments (in the order queued) grouped into the waves they ran in."""
    waves: list[list[Step]] = []
    for step in steps:
        current = waves[-1] if waves else None
        done = current is not None and all(
            s.finished_at is not None and s.finished_at <= step.created_at for s in current
        )
        if current is None or done:
            waves.append([step])
        else:
            current.append(step)
    return [Wave(number, tuple(group)) for number, group in enumerate(waves, start=1)]


def folders_of(
    applies: Iterable[Mapping[str, Any]],
    deployments: Iterable[Mapping[str, Any]],
    checks: Iterable[Mapping[str, Any]],
) -> list[Folder]:
    found: dict[str, Folder] = {}
    for apply in applies:
        found[apply["repository"]] = Folder(apply["repository"], apply=apply)
    by_apply: dict[int, list[Step]] = {}
    for row in deployments:
        by_apply.setdefault(row["apply_id"], []).append(
            Step(**{k: row[k] for k in Step.__dataclass_fields__})
        )
    for folder in found.values():
        if folder.apply is not None:
            folder.waves = waves_of(by_apply.get(folder.apply["id"], []))
    for row in checks:
        repository = row["repository"] or "?"
        folder = found.setdefault(repository, Folder(repository))
        folder.checked += 1
        if row["drifted"] or row["state"] == "failed":
            folder.drifted.append(
                Drifted(
                    row["name"], row["check_id"], row["state"], row["error"], row["finished_at"]
                )
            )
    return sorted(found.values(), key=lambda f: f.repository)


async def load_folders(pool: psycopg_pool.AsyncConnectionPool[Any]) -> list[Folder]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(sql()["console_gitops_last_applies"])
        applies = await cur.fetchall()
        await cur.execute(
            sql()["console_gitops_apply_deployments"], {"ids": [a["id"] for a in applies]}
        )
        deployments = await cur.fetchall()
        await cur.execute(sql()["console_gitops_drift"])
        checks = await cur.fetchall()
    return folders_of(applies, deployments, checks)


class Folders:
    """GET /console/gitops."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def gitops(self, request: Request, pool: Pool) -> Response:
        session = await self.guard.session(request)
        return page("gitops.html", session=session, folders=await load_folders(pool))
