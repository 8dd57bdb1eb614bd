"""The schema moves forward by numbered migrations; a database made before them (by the one
schema file every migrate re-ran, kept in tests/fixtures/schema-before-migrations.sql as it
was on 2026-12-04) is brought up to date in place and keeps its rows."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.migrate import migrate, migrations
from tests.conftest import create_database
from tests.paths import REPO

BEFORE = (REPO / "tests/fixtures/schema-before-migrations.sql").read_text()


def catalog(conninfo: str) -> dict[str, Any]:
    """Tables with their columns, indexes, views, functions and triggers, as the catalogs say."""
    with psycopg.connect(conninfo) as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(conn.execute(sql).fetchall())

        return {
            "columns": rows(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            ),
            "indexes": rows(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            ),
            "constraints": rows(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = 'public'::regnamespace"
            ),
            "functions": rows(
                "SELECT proname, pg_get_function_identity_arguments(oid) FROM pg_proc "
                "WHERE pronamespace = 'public'::regnamespace"
            ),
            "triggers": rows("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"),
            "views": rows("SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'"),
        }


@pytest.fixture
def before(pg_server: PgServer) -> str:
    """A database made by the schema file of the release before numbered migrations."""
    conninfo = create_database(pg_server, f"citrus_before_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(conninfo) as conn:
        conn.execute(BEFORE.encode())
    return conninfo


def test_a_database_made_by_the_old_schema_is_upgraded_and_keeps_its_rows(before: str) -> None:
    agent = str(uuid.uuid4())
    with psycopg.connect(before) as conn:
        conn.execute(
            "INSERT INTO agents (id, key, name, status) VALUES (%s, %s, 'agent-web-1', 'online')",
            (agent, "a" * 64),
        )
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id) "
            "VALUES ('web-1', '4123', 'sfo3', 's-1vcpu-512mb-10gb', 'active', %s)",
            (agent,),
        )
        conn.execute(
            "INSERT INTO deployments (server_name, kind, config, state) "
            "VALUES ('web-1', 'up', '{\"serverName\": \"web-1\"}', 'succeeded')"
        )

    applied = migrate(before)

    assert applied == [name for name, _ in migrations()]
    with psycopg.connect(before) as conn:
        assert conn.execute("SELECT name, status FROM agents").fetchall() == [
            ("agent-web-1", "online")
        ]
        assert conn.execute("SELECT name, status, agent_id::text FROM servers").fetchall() == [
            ("web-1", "active", agent)
        ]
        assert conn.execute("SELECT server_name, state FROM deployments").fetchall() == [
            ("web-1", "succeeded")
        ]
        found = conn.execute(
            "SELECT to_regprocedure('citrus_defer_job(text, text, integer, text, text, jsonb)')"
        )
        assert found.fetchone() != (None,)
    assert migrate(before) == []  # each migration once


def _without_migrations_own(found: dict[str, Any]) -> dict[str, Any]:
    own = ("citrus_migrations", "citrus_defer_job")
    return {
        kind: [row for row in rows if not any(name in str(row) for name in own)]
        for kind, rows in found.items()
    }


def test_migrations_make_what_the_old_schema_made(before: str, pg_server: PgServer) -> None:
    """A fresh database gets the tables, columns, indexes, constraints, functions, views and
    triggers one made by the old schema has, plus the migrations' own record and
    citrus_defer_job; and an upgraded one ends the same."""
    old = catalog(before)
    fresh = create_database(pg_server, f"citrus_fresh_{uuid.uuid4().hex[:8]}")

    migrate(fresh)
    migrate(before)

    made = catalog(fresh)
    assert made == catalog(before)
    assert _without_migrations_own(made) == old
    assert (
        "citrus_defer_job",
        "job_queue text, job_task text, job_priority integer, "
        "job_lock text, job_queueing_lock text, job_args jsonb",
    ) in made["functions"]
