"""`citrus-deploy service migrate`: our schema (db/schema.sql) plus procrastinate's, idempotently.

Procrastinate's schema file is not idempotent (plain CREATE TABLE), so it is applied only when
its tables are missing; an existing queue schema is upgraded with procrastinate's own migrations
(`procrastinate schema --migrate` lists them), never by this command.
"""

from __future__ import annotations

from procrastinate.schema import SchemaManager

from citrus_deploy import database
from citrus_deploy.store.migrate import migrate as migrate_citrus

_LOCK_ID = 0x71756575  # "queu": serialises concurrent migrations of the queue schema


def migrate(conninfo: str) -> bool:
    """Applies both schemas; returns True if the queue schema was created now."""
    migrate_citrus(conninfo)
    with database.connect(conninfo) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if row and row[0]:
            return False
        conn.execute(SchemaManager.get_schema())
    return True
