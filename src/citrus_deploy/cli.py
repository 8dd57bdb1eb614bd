"""`citrus-deploy <door> ...` (or `python -m citrus_deploy`): one console script for every door.

citrus-deploy service web|worker|all|demo|stale-check|migrate   the HTTP service
citrus-deploy gitops validate|plan|apply|drift|status DIR       the fleet in Git
citrus-deploy db migrate                                        the schema, for `pulumi up`
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from citrus_deploy.commands import service
from citrus_deploy.gitops import cli as gitops
from citrus_deploy.store import migrate

DOORS: dict[str, Callable[[list[str]], int]] = {
    "service": service.main,
    "gitops": gitops.main,
    "db": migrate.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or words[0] not in DOORS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return DOORS[words[0]](words[1:])
