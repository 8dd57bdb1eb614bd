"""Server names are hostnames, one name in any case: the database holds that for `pulumi up`.

Pulumi stack names are case-sensitive, so stacks `WEB-UP` and `web-up` can both exist; the
second one's servers row must be refused, and a database that already holds such rows must not
be migrated silently.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citrus_deploy.errors import RowConflict
from citrus_deploy.program.rows import AgentRowProvider, ServerRowProvider
from citrus_deploy.standin.engine import Engine, EngineError, stack_config
from citrus_deploy.store.migrate import migrate
from tests.conftest import AN_EARLIER_RELEASE, insert_server
from tests.integration.test_provider import agent_props, configured, server_props
from tests.paths import REPO

SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"


def names(conninfo: str) -> list[str]:
    with psycopg.connect(conninfo) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM servers ORDER BY id").fetchall()]


def index_definition(conninfo: str, index: str) -> str | None:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index,))
        found = row.fetchone()
    return str(found[0]) if found else None


def test_server_create_refuses_a_case_variant_and_names_the_existing_server(
    database: str,
) -> None:
    agents = configured(AgentRowProvider(), database)
    servers = configured(ServerRowProvider(), database)
    first = agents.create(agent_props()).id
    second = agents.create(agent_props()).id
    created = servers.create(server_props(first, name="WEB-UP"))

    for variant in ("web-up", "Web-Up"):
        with pytest.raises(RowConflict, match=r"a server named 'WEB-UP' already exists") as exc:
            servers.create(server_props(second, name=variant, dropletId="9999"))
        assert f"{variant!r}" in str(exc.value)
    assert servers.create(server_props(first, name="WEB-UP")).id == created.id  # a retried up
    assert names(database) == ["WEB-UP"]


def test_the_database_refuses_a_case_variant_row_whoever_writes_it(database: str) -> None:
    agent = str(uuid.uuid4())
    insert = (
        "INSERT INTO servers (name, digital_ocean_id, region, size, agent_id) "
        "VALUES (%s, %s, 'sfo3', 's-1vcpu-512mb-10gb', %s)"
    )
    with psycopg.connect(database) as conn:
        conn.execute("INSERT INTO agents (id, key, name) VALUES (%s, %s, 'a')", (agent, "a" * 64))
        conn.execute(insert, ("WEB-UP", "1", agent))
    with psycopg.connect(database) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(insert, ("web-up", "2", agent))


def test_a_second_stack_in_another_case_gets_no_servers_row(database: str, tmp_path: Path) -> None:
    """Two `pulumi up`s through the engine stand-in and the real provider host."""
    engine = Engine(tmp_path / "state", passphrase="names-test-passphrase")

    def config(stack: str) -> Any:
        secrets = {
            "githubToken": "ghp_names",
            "databaseUrl": database,
            "digitalocean:token": "dop_v1_names",
        }
        return stack_config(REPO / "Pulumi.dev.yaml", serverName=stack, **secrets)

    engine.up("WEB-UP", config("WEB-UP"))
    with pytest.raises(EngineError, match=r"a server named 'WEB-UP' already exists"):
        engine.up("web-up", config("web-up"))

    assert names(database) == ["WEB-UP"]
    assert not [r for r in engine.export("web-up")["resources"] if r["type"] == SERVER_ROW]


# -- migrating a database made before the rule ------------------------------------------------


def _old_rules(conninfo: str) -> None:
    """The schema as it was: names unique only in their exact case, and (older than numbered
    migrations) no record of migrations, so every baseline one runs."""
    with psycopg.connect(conninfo) as conn:
        conn.execute(AN_EARLIER_RELEASE)
        conn.execute("DROP INDEX servers_name_lower_key")
        conn.execute("DROP INDEX deployments_one_active")
        conn.execute(
            "CREATE UNIQUE INDEX deployments_one_active ON deployments (server_name) "
            "WHERE state IN ('queued', 'running')"
        )


def test_migrate_lists_servers_that_differ_only_in_case_and_changes_nothing(
    database: str,
) -> None:
    _old_rules(database)
    for name in ("WEB-UP", "web-up", "Web-Up", "db-1", "DB-1", "solo"):
        insert_server(database, name)

    with pytest.raises(psycopg.Error) as exc:
        migrate(database)

    message = str(exc.value)
    assert "'DB-1', 'db-1'" in message
    assert "'WEB-UP', 'Web-Up', 'web-up'" in message
    assert "solo" not in message
    assert "then migrate again" in message
    assert index_definition(database, "servers_name_lower_key") is None  # rolled back whole
    assert sorted(names(database)) == sorted(["WEB-UP", "web-up", "Web-Up", "db-1", "DB-1", "solo"])

    with psycopg.connect(database) as conn:
        conn.execute("DELETE FROM servers WHERE name IN ('web-up', 'Web-Up', 'DB-1')")
    migrate(database)
    migrate(database)  # and again: every statement is idempotent

    assert "lower(name)" in (index_definition(database, "servers_name_lower_key") or "")


def test_migrate_lists_active_deployments_that_differ_only_in_case(database: str) -> None:
    _old_rules(database)
    with psycopg.connect(database) as conn:
        for name, state in [("WEB-UP", "queued"), ("web-up", "running"), ("web-up", "failed")]:
            conn.execute(
                "INSERT INTO deployments (server_name, kind, state) VALUES (%s, 'up', %s)",
                (name, state),
            )

    with pytest.raises(psycopg.Error, match=r"deployments .*'WEB-UP', 'web-up'.*migrate again"):
        migrate(database)
    assert "lower" not in (index_definition(database, "deployments_one_active") or "")

    with psycopg.connect(database) as conn:
        conn.execute("UPDATE deployments SET state = 'failed' WHERE server_name = 'web-up'")
    migrate(database)

    assert "lower(server_name)" in (index_definition(database, "deployments_one_active") or "")
