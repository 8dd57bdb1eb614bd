"""`citrus-deploy gitops status`: where each server of the fleet folder stands.

Per server: its state (store.ownership.gitops_state: Ready / Reconciling / Failed / Stalled), the
last commit applied to it and the last one attempted. The servers are the folder's files plus
every server this repository still manages (a removed file not yet pruned). A file whose server
this repository does not manage (yet) shows `NotApplied`, or who manages it.
Exit 0, or 1 when any server is Failed or Stalled; 2 on errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg

from citrus_deploy.errors import CitrusError, first_line
from citrus_deploy.gitops.command import database_url, fleet_names, repository_of, write_json
from citrus_deploy.store import ownership
from citrus_deploy.store.ownership import Deployed, gitops_state

NOT_APPLIED = "NotApplied"


def rows(
    names: Iterable[str], deployed: Mapping[str, Deployed], repository: str
) -> list[dict[str, Any]]:
    """One entry per server: the folder's names plus every server the repository manages."""

    names = list(names)
    in_folder = {name.lower() for name in names}
    wanted = {name.lower(): name for name in names}
    for one in deployed.values():
        if one.managed_by == "gitops" and one.repository == repository:
            wanted.setdefault(one.name.lower(), one.name)
    found = []
    for key, name in sorted(wanted.items()):
        d = deployed.get(key)
        entry: dict[str, Any] = {
            "name": name,
            "state": NOT_APPLIED,
            "lastAppliedCommit": None,
            "lastAttemptedCommit": None,
            "serverStatus": None,
            "agentStatus": None,
            "managedBy": None,
            "inFolder": key in in_folder,
            "error": None,
        }
        if d is not None:
            entry.update(
                name=d.name,
                serverStatus=d.server_status,
                agentStatus=d.agent_status,
                managedBy=d.managed_by,
            )
            if d.managed_by == "gitops" and d.repository == repository:
                entry.update(
                    state=gitops_state(d),
                    lastAppliedCommit=d.applied_commit,
                    lastAttemptedCommit=d.attempted_commit,
                    error=d.last_error if d.last_state != "succeeded" else None,
                )
            elif d.managed_by is not None:
                who = d.managed_by if d.managed_by != "gitops" else f"gitops ({d.repository})"
                entry["error"] = f"managed by {who}"
        found.append(entry)
    return found


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "-"


def render(entries: list[dict[str, Any]]) -> str:
    header = ("SERVER", "STATE", "APPLIED", "ATTEMPTED", "NOTE")
    table = [header]
    for e in entries:
        note = []
        if not e["inFolder"]:
            note.append("file removed: destroyed by apply --prune")
        if e["error"]:
            note.append(first_line(e["error"])[:100])
        table.append(
            (
                e["name"],
                e["state"],
                _short(e["lastAppliedCommit"]),
                _short(e["lastAttemptedCommit"]),
                "; ".join(note),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]]).rstrip()
        for row in table
    ]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["state"]] = counts.get(e["state"], 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no servers")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        return _status(args)
    except CitrusError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 2


def _status(args: argparse.Namespace) -> int:

    directory = Path(args.dir)
    repository = repository_of(directory, getattr(args, "repository", None))
    names = fleet_names(directory)
    with psycopg.connect(database_url(), autocommit=True) as conn:
        entries = rows(names, ownership.load_deployed(conn), repository)
    target = getattr(args, "json", None)
    if target:
        write_json(Path(target), {"repository": repository, "servers": entries})
    if target != "-":
        print(render(entries))
    bad = any(e["state"] in ("Failed", "Stalled") for e in entries)
    return 1 if bad else 0
