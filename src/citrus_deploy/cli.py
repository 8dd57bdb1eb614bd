"""`citrus-deploy <door> ...` (or `python -m citrus_deploy`): one console script for every door.

    citrus-deploy service web|worker|all|demo|stale-check|migrate   the HTTP service
    citrus-deploy gitops validate|plan|apply|drift|status DIR       the fleet in Git
    citrus-deploy db migrate                                        the schema, for `pulumi up`

Settings come from the environment (citrus_deploy.settings); secrets never from argv.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from citrus_deploy.commands import both, demo, migrate, stale_check, web, worker
from citrus_deploy.errors import CitrusError
from citrus_deploy.gitops import cli as gitops

# Each command is a module with HELP, run(args) and, when it takes options, add_arguments(parser).
SERVICE: dict[str, ModuleType] = {
    "web": web,
    "worker": worker,
    "all": both,
    "demo": demo,
    "stale-check": stale_check,
    "migrate": migrate,
}
DB: dict[str, ModuleType] = {"migrate": migrate}


def _commands(door: str, table: dict[str, ModuleType]) -> Callable[[list[str]], int]:
    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog=f"citrus-deploy {door}", description=__doc__)
        sub = parser.add_subparsers(dest="command", required=True)
        for name, module in table.items():
            command = sub.add_parser(name, help=module.HELP)
            if hasattr(module, "add_arguments"):
                module.add_arguments(command)
            command.set_defaults(run=module.run)
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=os.environ.get("LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        try:
            code: int = args.run(args)
        except CitrusError as exc:
            print(f"{args.command}: {exc}", file=sys.stderr)
            return 1
        return code

    return main


DOORS: dict[str, Callable[[list[str]], int]] = {
    "service": _commands("service", SERVICE),
    "gitops": gitops.main,
    "db": _commands("db", DB),
}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in DOORS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return DOORS[words[0]](words[1:])
