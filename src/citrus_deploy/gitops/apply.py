"""`citrus-deploy gitops apply`: makes the cloud match the fleet folder at HEAD, in waves.

The command: it refuses a stale plan, a plan with errors or too big a blast radius, picks the
servers to deploy, runs them in waves (gitops.rollout) and ends with the table. Each server goes
through the service's own queue (store.gitops.enqueue: the one enqueue, the same deployment row,
queue job and per-server lock as an HTTP request), run by the same workers. The pieces that decide
(blast radius, the stale plan, the targets, the table) are pure functions, tested alone in
test_waves.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg

from citrus_deploy.engine.fingerprint import program_hash
from citrus_deploy.errors import CitrusError
from citrus_deploy.gitops import gitrepo, notify
from citrus_deploy.gitops.command import database_url, require_folder, write_json
from citrus_deploy.gitops.fleet import read_fleet
from citrus_deploy.gitops.plan import make_plan
from citrus_deploy.gitops.rollout import (
    FAILED,
    POLL_SECONDS,
    SKIPPED,
    SUCCEEDED,
    Result,
    Rollout,
    Settler,
    Target,
    error_line,
    plan_waves,
)
from citrus_deploy.gitops.workers import ServiceWorkersWatch, Workers, require_workers
from citrus_deploy.store import gitops as gitops_store
from citrus_deploy.store import ownership
from citrus_deploy.store.states import ApplyOutcome

UP_ACTIONS = ("create", "update", "replace")
RISKY_ACTIONS = ("destroy", "replace")
DEFAULT_AGENT_TIMEOUT = 600.0


class ApplyRefused(CitrusError):
    """The apply will not start: stale plan, errors in the plan, blast radius, ..."""


# -- what to do ---------------------------------------------------------------------------------


def destroy_limit(fleet_size: int) -> float:
    """How many destroys + replaces an apply may do without --allow-destroy."""
    return max(3.0, 0.05 * fleet_size)


def blast_radius_error(
    targets: Iterable[Target], fleet_size: int, allow_destroy: int | None
) -> str | None:
    """Why the apply is refused for destroying too much, or None when it may go on."""
    risky = [t for t in targets if t.action in RISKY_ACTIONS]
    limit = destroy_limit(fleet_size)
    if len(risky) <= limit or (allow_destroy is not None and allow_destroy >= len(risky)):
        return None
    names = ", ".join(f"{t.name} ({t.action})" for t in risky)
    allowed = (
        f"--allow-destroy {allow_destroy} allows only {allow_destroy}"
        if allow_destroy is not None
        else "no --allow-destroy given"
    )
    return (
        f"this apply destroys or replaces {len(risky)} servers, more than "
        f"max(3, 5% of the fleet of {fleet_size}) = {limit:g}, and {allowed}: {names}. "
        f"If that is meant, apply again with --allow-destroy {len(risky)}"
    )


# -- how it went ----------------------------------------------------------------------------------


def render_table(results: Sequence[Result]) -> str:
    """The table the apply ends with: one line per server, its error's first line."""
    header = ("SERVER", "ACTION", "WAVE", "DEPLOYMENT", "OUTCOME", "ERROR")
    rows = [header] + [
        (
            r.name,
            r.action,
            "-" if r.wave is None else str(r.wave),
            "-" if r.deployment_id is None else str(r.deployment_id),
            r.outcome,
            error_line(r.error),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def overall_outcome(results: Iterable[Result], stopped: bool) -> ApplyOutcome:
    """'succeeded' only when every server did (a removed file skipped without --prune is listed,
    not a failure); 'stopped' when a wave stopped the rollout."""
    if stopped:
        return "stopped"
    return SUCCEEDED if all(r.outcome in (SUCCEEDED, SKIPPED) for r in results) else FAILED


# -- the plan -------------------------------------------------------------------------------------


def targets_of(
    plan: Mapping[str, Any], *, prune: bool
) -> tuple[list[Target], list[Target], list[Result]]:
    """(ups, destroys, skipped) of a plan (its JSON form), in the plan's order (by name).

    A destroy (a removed file) is a target only with `prune`; without, it is a skipped row.
    """
    ups: list[Target] = []
    destroys: list[Target] = []
    skipped: list[Result] = []
    for server in plan["servers"]:
        action = server["action"]
        if action in UP_ACTIONS:
            ups.append(Target(server["name"], action, server.get("config") or {}))
        elif action == "destroy":
            if prune:
                destroys.append(Target(server["name"], action, server.get("config") or {}))
            else:
                skipped.append(
                    Result(
                        server["name"],
                        action,
                        outcome=SKIPPED,
                        error="its file was removed: destroyed only with --prune",
                    )
                )
    return ups, destroys, skipped


def plan_errors(plan: Mapping[str, Any]) -> list[str]:
    """Every error of the plan: the folder's own (no server), then each server's."""
    found = [str(e) for e in plan.get("errors") or []]
    for server in plan["servers"]:
        if server["action"] == "error" or server.get("errors"):
            for error in server.get("errors") or ["error"]:
                found.append(f"{server['name']}: {error}")
    return found


def _actions(plan: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Each server's action as the plan's own rules give it (an engine preview's replace is
    the update those rules saw), with its config."""
    return {
        s["name"]: (
            "update" if s.get("engineReplace") else s["action"],
            json.dumps(s.get("config"), sort_keys=True),
        )
        for s in plan["servers"]
    }


def engine_replaces(given: Mapping[str, Any], ups: list[Target]) -> list[Target]:
    """The targets, each a replace where the given plan's engine preview said so."""
    replaced = {s["name"] for s in given["servers"] if s.get("engineReplace")}
    return [
        Target(t.name, "replace", t.config) if t.name in replaced and t.action == "update" else t
        for t in ups
    ]


def stale_plan_error(given: Mapping[str, Any], fresh: Mapping[str, Any]) -> str | None:
    """Why a saved plan may not be applied: made for another commit, or the fleet moved since
    (its actions differ from a plan made now)."""
    if given.get("commit") != fresh["commit"]:
        return f"plan made for {given.get('commit')}, HEAD is {fresh['commit']}: plan again"
    if given.get("repository") != fresh["repository"]:
        return (
            f"plan made for repository {given.get('repository')}, this is "
            f"{fresh['repository']}: plan again"
        )
    old, new = _actions(given), _actions(fresh)
    moved = sorted(
        name for name in old.keys() | new.keys() if old.get(name, "") != new.get(name, "")
    )
    if moved:
        what = []
        for name in moved[:20]:
            before = old[name][0] if name in old else "absent"
            now = new[name][0] if name in new else "absent"
            what.append(f"{name} ({before} in the plan, {now} now)")
        more = f" and {len(moved) - 20} more" if len(moved) > 20 else ""
        return (
            f"the fleet moved since the plan was made: {len(moved)} server(s) differ: "
            f"{', '.join(what)}{more}: plan again"
        )
    return None


def fresh_plan(
    conn: psycopg.Connection[Any], directory: Path, repository: str | None
) -> dict[str, Any]:
    """The plan for HEAD, as `plan` makes it (its JSON form); refuses uncommitted files of the
    fleet folder or the program."""

    top = gitrepo.toplevel(require_folder(directory))
    dirty = gitrepo.uncommitted_error(directory, top)
    if dirty:
        raise ApplyRefused(f"{dirty}: commit them, then apply")
    fleet = read_fleet(directory, gitrepo.relative(directory, top))
    plan = make_plan(
        fleet,
        ownership.load_deployed(conn),
        repository=gitrepo.repository_identity(repository, top),
        commit=gitrepo.head_commit(directory),
        program_hash=program_hash(gitrepo.program_root(top)),
    )
    return plan.to_json()


# -- the command ----------------------------------------------------------------------------------


def agent_connect_timeout() -> float:
    """The service's AGENT_CONNECT_TIMEOUT setting (600 s when unset)."""
    text = os.environ.get("AGENT_CONNECT_TIMEOUT")
    if not text:
        return DEFAULT_AGENT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise CitrusError(
            f"AGENT_CONNECT_TIMEOUT: must be a positive number of seconds, not {text!r}"
        )
    return seconds


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    value = getattr(args, name, default)
    return default if value is None else value


def main(args: argparse.Namespace) -> int:
    """Exit 0 when every server succeeded, 1 when any failed or the apply stopped or was
    refused, 2 on errors (no database, no Git repository, ...)."""
    try:
        return _apply(args)
    except ApplyRefused as exc:
        print(f"apply: refused: {exc}", file=sys.stderr)
        return 1
    except CitrusError as exc:
        print(f"apply: {exc}", file=sys.stderr)
        return 2


def _apply(args: argparse.Namespace) -> int:

    canary = int(_opt(args, "canary", 1))
    if canary < 1:
        raise CitrusError(f"--canary must be at least 1, got {canary}")
    agent_timeout = float(_opt(args, "agent_timeout", agent_connect_timeout()))
    if not math.isfinite(agent_timeout) or agent_timeout < 0:
        raise CitrusError(f"--agent-timeout must be a number of seconds >= 0, not {agent_timeout}")
    poll = float(_opt(args, "poll", os.environ.get("CITRUS_GITOPS_POLL_SECONDS", POLL_SECONDS)))
    conninfo = database_url()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        plan = fresh_plan(conn, Path(args.dir), _opt(args, "repository"))
        given: dict[str, Any] | None = None
        if _opt(args, "plan"):
            given = json.loads(Path(args.plan).read_text())
            stale = stale_plan_error(given, plan)
            if stale:
                raise ApplyRefused(stale)
        errors = plan_errors(plan)
        if errors:
            raise ApplyRefused(
                f"the plan has {len(errors)} error(s); fix them first:\n  " + "\n  ".join(errors)
            )
        ups, destroys, skipped = targets_of(plan, prune=bool(_opt(args, "prune", False)))
        if given is not None:  # what the engine's previews said, made at this very commit
            ups = engine_replaces(given, ups)
        if _opt(args, "retry_failed", False):
            ups, destroys = retry_targets(conn, plan, ups, destroys)
        refused = blast_radius_error([*ups, *destroys], len(plan["servers"]), args_allow(args))
        if refused:
            raise ApplyRefused(refused)
        out = sys.stdout
        print(
            f"apply {plan['repository']} at {plan['commit'][:12]}: {len(ups)} up, "
            f"{len(destroys)} destroy, {len(skipped)} skipped",
            file=out,
        )
        for target in destroys:
            print(f"  will destroy {target.name}", file=out)
        for result in skipped:
            print(f"  will NOT destroy {result.name}: {result.error}", file=out)
        waves = plan_waves(ups, destroys, canary)
        if (ups or destroys) and not _opt(args, "workers", 0):
            require_workers(conn)
        apply_id = gitops_store.start_apply(conn, plan["repository"], plan["commit"], plan)
        stopped: str | None = None
        results: dict[str, Result] = {}
        workers = _workers(args)
        settler = Settler(conninfo, agent_connect_timeout())
        try:
            rollout = Rollout(
                conn,
                apply_id=apply_id,
                repository=plan["repository"],
                commit=plan["commit"],
                agent_timeout=agent_timeout,
                poll=poll,
                settle=settler,
                watch=workers.check if workers else ServiceWorkersWatch(conn),
            )
            results, stopped = rollout.run(waves)
        except BaseException:
            gitops_store.finish_apply(conn, apply_id, FAILED)
            if workers:
                workers.stop()
                workers.show_log()
                workers = None
            raise
        finally:
            settler.close()
            if workers:
                codes = workers.stop()
                if any(code not in (0, -15) for code in codes):
                    workers.show_log()
        table = [*results.values(), *skipped]
        outcome = overall_outcome(table, stopped is not None)
        gitops_store.finish_apply(conn, apply_id, outcome)
    print(render_table(table), file=out)
    print(f"apply {apply_id}: {outcome}" + (f" ({stopped})" if stopped else ""), file=out)
    notify.notify(
        notify.apply_message(
            apply_id=apply_id,
            repository=plan["repository"],
            commit=plan["commit"],
            outcome=outcome,
            stopped=stopped,
            results=table,
        )
    )
    if _opt(args, "json"):
        write_json(
            Path(args.json),
            {
                "applyId": apply_id,
                "repository": plan["repository"],
                "commit": plan["commit"],
                "outcome": outcome,
                "stopped": stopped,
                "servers": [asdict(r) for r in table],
            },
        )
    return 0 if outcome == SUCCEEDED else 1


def args_allow(args: argparse.Namespace) -> int | None:
    value = getattr(args, "allow_destroy", None)
    return int(value) if value else None  # the CLI's default 0: not given


def _workers(args: argparse.Namespace) -> Workers | None:
    count = int(_opt(args, "workers", 0))
    if count <= 0:
        return None
    return Workers(count).start()


def retry_targets(
    conn: psycopg.Connection[Any],
    plan: Mapping[str, Any],
    ups: list[Target],
    destroys: list[Target],
) -> tuple[list[Target], list[Target]]:
    """Only the servers that failed in the last apply of this commit, with today's config.

    A server whose `up` succeeded but whose agent never came online plans as unchanged (its
    config was applied): it runs `up` again all the same, as action 'retry'.
    """

    last = gitops_store.last_apply(conn, plan["repository"], plan["commit"])
    if last is None:
        raise ApplyRefused(f"no earlier apply of {plan['commit']}: nothing to retry")
    failed = failed_in(conn, last)
    by_name = {s["name"]: s for s in plan["servers"]}
    new_ups = [t for t in ups if t.name in failed]
    new_destroys = [t for t in destroys if t.name in failed]
    chosen = {t.name for t in [*new_ups, *new_destroys]}
    for name in sorted(failed - chosen):
        server = by_name.get(name)
        if server is not None and server["action"] == "unchanged":
            new_ups.append(Target(name, "retry", server.get("config") or {}))
    print(
        f"retrying the {len(new_ups) + len(new_destroys)} server(s) that failed in apply {last}",
        file=sys.stdout,
    )
    return sorted(new_ups, key=lambda t: t.name), new_destroys


def failed_in(conn: psycopg.Connection[Any], apply_id: int) -> set[str]:
    """Servers that failed in that apply: deployment failed or needs an operator, or an `up`
    that succeeded whose server is not active (its agent never came online)."""

    deployed = ownership.load_deployed(conn)
    latest: dict[str, dict[str, Any]] = {}
    for row in gitops_store.apply_deployments(conn, apply_id):
        latest[row["server_name"]] = row  # in id order: the last one counts
    failed = set()
    for name, row in latest.items():
        if row["state"] in ("failed", "needs_operator"):
            failed.add(name)
        elif row["state"] == "succeeded" and row["kind"] == "up":
            found = deployed.get(name.lower())
            if found is None or found.server_status != "active":
                failed.add(name)
    return failed
