"""`citrus-deploy db migrate`: applies db/schema.sql idempotently to $DATABASE_URL.

The URL comes from the environment, never from the command line, so the password does not
show in process listings.
"""

from __future__ import annotations

import argparse
import os
import sys

from citrus_deploy import database
from citrus_deploy.errors import CitrusError
from citrus_deploy.store import queries

# Serialises concurrent migrations (several workers starting at once).
_LOCK_ID = 0x63697472  # "citr"


def migrate(conninfo: str) -> None:
    with database.connect(conninfo) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(queries.schema())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="citrus-deploy db", description=__doc__)
    parser.add_argument("command", choices=["migrate"])
    parser.parse_args(argv)
    conninfo = os.environ.get("DATABASE_URL")
    if not conninfo:
        print("DATABASE_URL is not set: export it (postgresql://user@host/db)", file=sys.stderr)
        return 2
    try:
        migrate(conninfo)
    except CitrusError as exc:
        print(f"migrate failed: {exc}", file=sys.stderr)
        return 1
    print(f"schema applied to {database.describe(conninfo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
