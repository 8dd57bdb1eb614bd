"""The schema, moved forward by numbered migrations (store/migrations/NNNN_*.sql), each applied
once, in order, and recorded in `citrus_migrations`; then procrastinate's queue schema.

0001-0007 are the schema as it stood when numbered migrations began, written idempotently, so a
database made by an earlier release (which re-ran one schema file at every migrate) is brought
up to date by them and keeps its rows. Later migrations are plain forward steps. Concurrent
callers (several workers starting at once) wait for each other on an advisory lock.
"""

from __future__ import annotations

from importlib.resources import files

from procrastinate.schema import SchemaManager

from citrus_deploy import database

_LOCK_ID = 0x63697472  # "citr": serialises concurrent migrations of our schema
_QUEUE_LOCK_ID = 0x71756575  # "queu": and of the queue's
_TABLE = """
CREATE TABLE IF NOT EXISTS citrus_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration, in the order they apply."""
    folder = files("citrus_deploy.store").joinpath("migrations")
    found = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in found]


def migrate(conninfo: str) -> list[str]:
    """Applies the migrations this database has not had, in one transaction; returns their
    names (empty when it was up to date)."""
    with database.connect(conninfo) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute(_TABLE)
        done = {row[0] for row in conn.execute("SELECT name FROM citrus_migrations")}
        applied = []
        for name, sql in migrations():
            if name in done:
                continue
            conn.execute(sql.encode())  # no parameters: the whole file, as psql would run it
            conn.execute("INSERT INTO citrus_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied


def migrate_all(conninfo: str) -> bool:
    """Our migrations, then procrastinate's schema when its tables are missing; True if the
    queue schema was created now. procrastinate's schema file is not idempotent (plain CREATE
    TABLE); an existing queue schema is upgraded with procrastinate's own migrations
    (`procrastinate schema --migrate` lists them), never by this."""
    migrate(conninfo)
    with database.connect(conninfo) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_QUEUE_LOCK_ID,))
        row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if row and row[0]:
            return False
        conn.execute(SchemaManager.get_schema().encode())
    return True
