"""`citrus-deploy service migrate` (or `db migrate`): our schema's migrations, then the queue's
schema. The URL comes from the environment, never from argv (the process list)."""

from __future__ import annotations

import argparse
import os
import sys

from citrus_deploy.database import describe
from citrus_deploy.store.migrate import migrate_all

HELP = "apply our schema's migrations and the queue's schema"


def run(_: argparse.Namespace) -> int:
    conninfo = os.environ.get("DATABASE_URL")
    if not conninfo:
        print("DATABASE_URL is not set: export it (postgresql://user@host/db)", file=sys.stderr)
        return 2
    created = migrate_all(conninfo)
    queue = "created" if created else "already there"
    print(f"schema applied to {describe(conninfo)}; queue schema {queue}")
    return 0
