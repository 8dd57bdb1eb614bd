"""`citrus-deploy gitops`: validate, plan, apply, drift and status of a fleet folder.

Exit codes: 0 ok, 1 the fleet or the plan has errors (or what the command checks failed),
2 a usage or environment error (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from citrus_deploy.database import describe
from citrus_deploy.engine.fingerprint import program_hash
from citrus_deploy.errors import CitrusError, first_line
from citrus_deploy.gitops import apply as apply_command
from citrus_deploy.gitops import drift as drift_command
from citrus_deploy.gitops import gitrepo, report
from citrus_deploy.gitops import status as status_command
from citrus_deploy.gitops.fleet import PARALLEL_FROM, read_fleet
from citrus_deploy.gitops.plan import CHANGED, make_plan
from citrus_deploy.gitops.workers import ServiceWorkersWatch, Workers, require_workers
from citrus_deploy.queue import checks
from citrus_deploy.store.ownership import load_deployed

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(CitrusError):
    """The command cannot run as asked (bad option, no database, dirty folder); exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # A plan of 10,000 servers allocates a few million objects and no cycles worth collecting:
    # the default thresholds ran the cyclic collector over them hundreds of times.
    gc.set_threshold(100_000, 50, 100)
    try:
        result: int = args.run(args)
    except (UsageError, CitrusError) as exc:
        print(f"gitops {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return result


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="citrus-deploy gitops", description="The fleet as stack files in Git."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("dir", type=Path, metavar="DIR", help="the fleet folder")
        return sub

    def jobs(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--jobs",
            type=int,
            default=0,
            metavar="N",
            help="processes that read the files (default: one per CPU from "
            f"{PARALLEL_FROM} files on, else 1)",
        )

    def repository(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--repository",
            metavar="R",
            help="name recorded with each deployment (default: $CITRUS_GITOPS_REPOSITORY, "
            "$GITHUB_REPOSITORY, else the checkout's absolute path)",
        )

    validate = command("validate", "check every file with the program's own rules; no database")
    jobs(validate)
    validate.set_defaults(run=run_validate)

    plan = command("plan", "what apply would do to each server, for the checked-out commit")
    jobs(plan)
    plan.add_argument("--json", metavar="FILE", help="write the plan as JSON ('-': stdout)")
    plan.add_argument(
        "--markdown", metavar="FILE", help="write the plan as markdown ('-': stdout, the default)"
    )
    plan.add_argument(
        "--preview",
        action="store_true",
        help="add the engine's own preview of each changed server (run by the service's workers)",
    )
    plan.add_argument(
        "--preview-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="give up waiting for the previews after this long (default 1800)",
    )
    plan.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="with --preview: run N workers in-process for the duration (no running service)",
    )
    repository(plan)
    plan.set_defaults(run=run_plan)

    apply = command("apply", "make the cloud match the plan, in waves")
    apply.add_argument("--plan", metavar="FILE", help="the plan JSON to apply (default: plan now)")
    apply.add_argument("--prune", action="store_true", help="destroy servers whose file is gone")
    apply.add_argument(
        "--allow-destroy",
        type=int,
        default=0,
        metavar="N",
        help="allow up to N destroys and replaces above max(3, 5%% of the fleet)",
    )
    apply.add_argument(
        "--canary", type=int, default=1, metavar="N", help="servers in the first wave (default 1)"
    )
    apply.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun only the failed servers of the last apply of this commit",
    )
    apply.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run N workers in-process for the duration (no running service needed)",
    )
    apply.add_argument(
        "--agent-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a server's agent may take to come online once its deployment succeeded "
        "(default: AGENT_CONNECT_TIMEOUT, else 600)",
    )
    apply.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")
    repository(apply)
    apply.set_defaults(run=apply_command.main)

    drift = command("drift", "refresh-preview every GitOps server; changes nothing")
    drift.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
    drift.add_argument(
        "--workers", type=int, default=0, metavar="N", help="run N workers in-process"
    )
    repository(drift)
    drift.set_defaults(run=drift_command.main)

    status = command("status", "per server: Ready / Reconciling / Failed / Stalled and commits")
    status.add_argument("--json", metavar="FILE", help="write the status as JSON ('-': stdout)")
    repository(status)
    status.set_defaults(run=status_command.main)
    return top


def run_validate(args: argparse.Namespace) -> int:
    folder = _fleet_dir(args.dir)
    fleet = read_fleet(folder, display=str(args.dir).rstrip("/") or ".", jobs=args.jobs)
    errors = list(fleet.all_errors())
    for error in errors:
        print(error)
    if errors:
        print(f"{len(errors)} error(s) in {fleet.display}", file=sys.stderr)
        return EXIT_FAILED
    print(f"OK: {len(fleet.files)} stack file(s) in {fleet.display}")
    return EXIT_OK


def run_plan(args: argparse.Namespace) -> int:
    if args.json == "-" and args.markdown == "-":
        raise UsageError("--json - and --markdown - cannot both write to stdout")
    folder = _fleet_dir(args.dir)
    top = gitrepo.toplevel(folder)
    dirty = gitrepo.uncommitted_error(folder, top)
    if dirty:
        raise UsageError(dirty)
    commit = gitrepo.head_commit(folder)
    repository = gitrepo.repository_identity(args.repository, top)
    program = program_hash(gitrepo.program_root(top))
    conninfo = _database_url()

    with _connect(conninfo) as conn:
        try:
            deployed = load_deployed(conn)
        except psycopg.Error as exc:
            raise UsageError(f"cannot read the deployed fleet: {first_line(exc)}") from None
    # After the connection is closed: a big fleet is read by forked processes.
    fleet = read_fleet(folder, display=gitrepo.relative(folder, top), jobs=args.jobs)
    plan = make_plan(fleet, deployed, repository=repository, commit=commit, program_hash=program)
    failed_previews = 0
    if args.preview:
        workers = Workers(args.workers) if args.workers > 0 else contextlib.nullcontext()
        with workers, _connect(conninfo) as conn:
            if args.workers <= 0:
                require_workers(conn)
            changed = [s for s in plan.servers if s.action in CHANGED]
            watch = workers.check if isinstance(workers, Workers) else ServiceWorkersWatch(conn)
            failed_previews = _preview(conn, changed, args.preview_timeout, watch)

    _write(args.json, report.to_json(plan))
    if args.markdown is not None or args.json != "-":
        _write(args.markdown or "-", report.to_markdown(plan))
    counts = ", ".join(f"{n} {action}" for action, n in plan.summary().items() if n)
    print(f"plan for {commit[:12]}: {counts or 'empty fleet'}", file=sys.stderr)
    if plan.has_errors:
        return EXIT_FAILED
    if failed_previews:
        print(f"{failed_previews} preview(s) failed or timed out", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _preview(conn: Any, servers: list[Any], timeout: float, watch: Callable[[], None]) -> int:
    """Queues one engine preview per changed server, waits for all; returns how many failed."""
    queued = {checks.enqueue_check(conn, s.name, "preview", s.config): s for s in servers}
    conn.commit()
    conn.autocommit = True  # each poll reads what the workers committed since
    done, unfinished = checks.wait_for_checks(
        conn, list(queued), timeout=timeout, poll=1.0, watch=watch
    )
    for check_id, check in done.items():
        body = check.get("result") or {}
        queued[check_id].take_preview(
            {
                "state": check["state"],
                "summary": body.get("summary"),
                "steps": body.get("steps"),
                "error": check.get("error"),
            }
        )
    for check_id in unfinished:
        queued[check_id].preview = {
            "state": "timeout",
            "summary": None,
            "steps": None,
            "error": f"no result after {timeout:g}s: are the service's workers running?",
        }
    return sum(1 for c in done.values() if c["state"] == "failed") + len(unfinished)


def _fleet_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    return path


def _database_url() -> str:
    conninfo = os.environ.get("DATABASE_URL", "")
    if not conninfo:
        raise UsageError(
            "DATABASE_URL is not set: plan compares the folder with the service's database "
            "(`validate` needs none)"
        )
    return conninfo


def _connect(conninfo: str) -> Any:
    try:
        return psycopg.connect(conninfo, connect_timeout=10)
    except psycopg.Error as exc:
        where = describe(conninfo)
        raise UsageError(f"cannot connect to PostgreSQL at {where}: {first_line(exc)}") from None


def _write(target: str | None, text: str) -> None:
    if target is None:
        return
    if target == "-":
        sys.stdout.write(text)
        return
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
