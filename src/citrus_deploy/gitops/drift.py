"""`citrus-deploy gitops drift`: did anyone change a GitOps server behind our back?

A 'refresh' check (queue.checks: `pulumi refresh --preview-only`, run by the queue's workers
under the server's lock, changing nothing, not even the checkpoint) of every server this
repository manages, with the config it was last applied with. Only what the engine reads back
differently from its checkpoint counts, so a clean fleet reports nothing.
Exit 0: no drift; 1: some server drifted; 2: a check could not run (or another error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from citrus_deploy.errors import CitrusError, first_line
from citrus_deploy.gitops import notify
from citrus_deploy.gitops.command import database_url, repository_of, write_json
from citrus_deploy.gitops.workers import ServiceWorkersWatch, Workers, require_workers
from citrus_deploy.queue import checks
from citrus_deploy.store import ownership

POLL_SECONDS = 0.5
DEFAULT_TIMEOUT = 3600.0


@dataclass
class Drift:
    name: str
    check_id: int | None = None
    changes: list[str] = field(default_factory=list)  # what drifted, one line each
    error: str | None = None  # the check could not run


def _resource(urn: str, typ: str) -> str:
    """What a resource is, in the words of this project: droplet, servers row, agents row."""
    name = urn.rsplit("::", 1)[-1]
    if typ.endswith("Droplet"):
        return "droplet"
    if "ServerRow" in typ or name.endswith("-server-row"):
        return "servers row"
    if "AgentRow" in typ or name.endswith("-agent-row"):
        return "agents row"
    return f"{typ} {name}"


def _value(value: Any) -> str:
    return "(none)" if value is None else str(value)


def describe(result: Mapping[str, Any]) -> list[str]:
    """One line per drifted resource of a refresh check's result (queue.checks); [] if none.

    `droplet deleted outside Pulumi`, `servers row size s-1vcpu-512mb-10gb -> s-1vcpu-1gb`.
    """
    found = []
    for step in result.get("steps") or []:
        op = step.get("op")
        what = _resource(step.get("urn", ""), step.get("type", ""))
        if op == "delete":
            found.append(f"{what} deleted outside Pulumi")
        elif op == "update":
            diffs = step.get("diffs") or []
            parts = []
            for diff in diffs:
                if isinstance(diff, Mapping):
                    parts.append(
                        f"{diff.get('key')} {_value(diff.get('old'))} -> {_value(diff.get('new'))}"
                    )
                else:
                    parts.append(str(diff))
            found.append(f"{what} {', '.join(parts)}" if parts else f"{what} changed")
    return found


def managed(deployed: Mapping[str, Any], repository: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, applied config) of every server this repository manages and has applied."""
    return sorted(
        (d.name, dict(d.applied_config))
        for d in deployed.values()
        if d.managed_by == "gitops" and d.repository == repository and d.applied_config
    )


def run_checks(
    conn: psycopg.Connection[Any],
    servers: Sequence[tuple[str, dict[str, Any]]],
    *,
    poll: float = POLL_SECONDS,
    timeout: float = DEFAULT_TIMEOUT,
    watch: Callable[[], None] = lambda: None,
) -> list[Drift]:
    """Queues a refresh check of each server and waits for all of them."""
    found = {name: Drift(name) for name, _ in servers}
    names: dict[int, str] = {}
    for name, config in servers:
        check_id = checks.enqueue_check(conn, name, "refresh", config)
        found[name].check_id = check_id
        names[check_id] = name
    done, unfinished = checks.wait_for_checks(
        conn, list(names), timeout=timeout, poll=poll, watch=watch
    )
    for check_id, check in done.items():
        if check["state"] == "succeeded":
            found[names[check_id]].changes = describe(check.get("result") or {})
        else:
            found[names[check_id]].error = check.get("error") or "the check failed"
    for check_id in unfinished:
        found[names[check_id]].error = f"check {check_id} did not finish within {timeout:g}s"
    return [found[name] for name, _ in servers]


def report(drifts: Sequence[Drift]) -> tuple[str, int]:
    """The text and the exit code: 2 if any check failed, else 1 if any drifted, else 0."""
    lines = []
    for d in drifts:
        if d.error:
            lines.append(f"{d.name}: check failed: {first_line(d.error)}")
        for change in d.changes:
            lines.append(f"{d.name}: {change}")
    drifted = sum(1 for d in drifts if d.changes)
    errors = sum(1 for d in drifts if d.error)
    lines.append(
        f"{len(drifts)} server(s) checked: {drifted} drifted"
        + (f", {errors} check(s) failed" if errors else "")
    )
    return "\n".join(lines), 2 if errors else 1 if drifted else 0


def main(args: argparse.Namespace) -> int:
    try:
        return _drift(args)
    except CitrusError as exc:
        print(f"drift: {exc}", file=sys.stderr)
        return 2


def _drift(args: argparse.Namespace) -> int:

    repository = repository_of(Path(args.dir), getattr(args, "repository", None))
    count = int(getattr(args, "workers", None) or 0)
    poll = float(getattr(args, "poll", None) or POLL_SECONDS)
    with psycopg.connect(database_url(), autocommit=True) as conn:
        servers = managed(ownership.load_deployed(conn), repository)
        if not servers:
            print(f"no server is managed by {repository}: nothing to check")
            return 0
        if count <= 0:
            require_workers(conn)
        workers = Workers(count).start() if count > 0 else None
        try:
            watch = workers.check if workers else ServiceWorkersWatch(conn)
            drifts = run_checks(conn, servers, poll=poll, watch=watch)
        finally:
            if workers is not None:
                codes = workers.stop()
                if any(code not in (0, -15) for code in codes):
                    workers.show_log()
    text, code = report(drifts)
    notify.notify(notify.drift_message(repository, drifts))
    target = getattr(args, "json", None)
    if target:
        write_json(
            Path(target),
            {
                "repository": repository,
                "servers": [
                    {"name": d.name, "checkId": d.check_id, "changes": d.changes, "error": d.error}
                    for d in drifts
                ],
                "drifted": sum(1 for d in drifts if d.changes),
                "errors": sum(1 for d in drifts if d.error),
            },
        )
    print(text, file=sys.stderr if target == "-" else sys.stdout)
    if code == 2 and workers is not None:
        workers.show_log()
    return code
