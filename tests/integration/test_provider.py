"""The row provider's methods against a real PostgreSQL, as the engine would call them."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import dill
import psycopg
import pytest
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config
from pulumi.dynamic.dynamic import serialize_provider

from citrus_deploy.errors import DatabaseError, DatabaseUnreachable, RowConflict, SchemaMissing
from citrus_deploy.program.rows import AgentRowProvider, ServerRowProvider
from citrus_deploy.standin.pg import PgServer

KEY = "ab" * 32
OTHER_KEY = "cd" * 32


def configured(provider: Any, conninfo: str) -> Any:
    provider.configure(
        ConfigureRequest(Config({"citrus-deploy:databaseUrl": conninfo}, "citrus-deploy"))
    )
    return provider


@pytest.fixture
def agents(database: str) -> AgentRowProvider:
    return configured(AgentRowProvider(), database)


@pytest.fixture
def servers(database: str) -> ServerRowProvider:
    return configured(ServerRowProvider(), database)


def agent_props(**overrides: Any) -> dict[str, Any]:
    return {"agentId": str(uuid.uuid4()), "key": KEY, "name": "agent-web-1", **overrides}


def server_props(agent_id: str, **overrides: Any) -> dict[str, Any]:
    props = {"name": "web-1", "dropletId": "4242", "region": "sfo3", "size": "s-1vcpu-512mb-10gb"}
    return {**props, "agentId": agent_id, **overrides}


def set_status(conninfo: str, table: str, status: str) -> None:
    with psycopg.connect(conninfo) as conn:
        conn.execute(f"UPDATE {table} SET status = %s", (status,))  # noqa: S608 fixed names


def count(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


def test_agent_create_inserts_offline_and_never_outputs_the_key(
    agents: AgentRowProvider, database: str
) -> None:
    props = agent_props()
    result = agents.create(props)

    assert result.id == props["agentId"]
    assert result.outs is not None
    assert result.outs["status"] == "offline"
    assert result.outs["name"] == "agent-web-1"
    assert KEY not in str(result.outs)
    assert count(database, "agents") == 1


def test_agent_create_is_idempotent(agents: AgentRowProvider, database: str) -> None:
    props = agent_props()
    first, second = agents.create(props), agents.create(props)

    assert first.id == second.id
    assert count(database, "agents") == 1


def test_agent_create_refuses_to_overwrite_a_different_row(agents: AgentRowProvider) -> None:
    props = agent_props()
    agents.create(props)

    with pytest.raises(RowConflict, match="already exists with a different key or name"):
        agents.create({**props, "key": OTHER_KEY})


def test_read_reports_the_row_as_it_is_and_a_deleted_row_as_gone(
    agents: AgentRowProvider, database: str
) -> None:
    props = agent_props()
    created = agents.create(props)
    set_status(database, "agents", "online")

    read = agents.read(created.id, created.outs or {})
    assert read.id == created.id
    assert read.outs is not None
    assert read.outs["status"] == "online"

    agents.delete(created.id, {})
    assert agents.read(created.id, {}).id == ""


@pytest.mark.parametrize("hub_status", ["online", "failed"])
def test_update_never_resets_the_status_the_hub_owns(
    agents: AgentRowProvider, database: str, hub_status: str
) -> None:
    props = agent_props()
    created = agents.create(props)
    set_status(database, "agents", hub_status)

    updated = agents.update(created.id, created.outs or {}, {**props, "name": "agent-web-2"})

    assert updated.outs is not None
    assert updated.outs["status"] == hub_status
    assert updated.outs["name"] == "agent-web-2"


def test_diff_ignores_status_and_sees_key_and_id_changes(agents: AgentRowProvider) -> None:
    props = agent_props()
    outs = agents.create(props).outs or {}
    online = {**outs, "status": "online"}

    assert agents.diff(props["agentId"], online, props).changes is False
    key_change = agents.diff(props["agentId"], outs, {**props, "key": OTHER_KEY})
    assert (key_change.changes, key_change.replaces) == (True, [])
    id_change = agents.diff(props["agentId"], outs, {**props, "agentId": str(uuid.uuid4())})
    assert (id_change.changes, id_change.replaces) == (True, ["agentId"])


def test_check_names_the_bad_property(agents: AgentRowProvider) -> None:
    """Unknowns (a preview) are tested through the real provider host, in test_engine_steps:
    how they arrive depends on the host, not on this file."""
    bad = agents.check({}, agent_props(key="XYZ"))

    assert [f.property for f in bad.failures] == ["key"]


def test_server_row_lifecycle(
    agents: AgentRowProvider, servers: ServerRowProvider, database: str
) -> None:
    agent = agents.create(agent_props())
    props = server_props(agent.id)

    created = servers.create(props)
    assert servers.create(props).id == created.id  # a retried up
    assert count(database, "servers") == 1
    assert created.outs is not None
    assert created.outs["status"] == "provisioning"

    set_status(database, "servers", "active")
    moved = servers.update(created.id, created.outs, {**props, "dropletId": "4343"})
    assert moved.outs == {**created.outs, "dropletId": "4343", "status": "active"}
    assert servers.diff(created.id, moved.outs, {**props, "dropletId": "4343"}).changes is False

    with pytest.raises(RowConflict, match="still used by a servers row"):
        agents.delete(agent.id, {})
    servers.delete(created.id, {})
    servers.delete(created.id, {})  # deleting what is gone is not an error
    agents.delete(agent.id, {})
    assert (count(database, "servers"), count(database, "agents")) == (0, 0)


def test_server_create_refuses_a_name_taken_by_another_droplet(
    agents: AgentRowProvider, servers: ServerRowProvider
) -> None:
    agent = agents.create(agent_props())
    servers.create(server_props(agent.id))

    with pytest.raises(RowConflict, match="digital_ocean_id; choose another serverName"):
        servers.create(server_props(agent.id, dropletId="9999"))


def test_unreachable_database_says_so_and_what_to_do() -> None:
    server = PgServer().start()
    conninfo = server.conninfo()
    server.destroy()
    provider = configured(AgentRowProvider(), conninfo)

    with pytest.raises(
        DatabaseUnreachable, match=r"cannot connect .*databaseUrl \(or DATABASE_URL\)"
    ):
        provider.create(agent_props())


def test_missing_schema_says_how_to_apply_it(pg_server: PgServer) -> None:
    provider = configured(AgentRowProvider(), pg_server.conninfo("postgres"))

    with pytest.raises(SchemaMissing, match="citrus-deploy db migrate"):
        provider.create(agent_props())


def test_bad_data_is_refused_by_the_database_with_the_constraint(
    agents: AgentRowProvider,
) -> None:
    with pytest.raises(DatabaseError, match="agents_key_hex"):
        agents.create(agent_props(key="not-hex"))


def test_without_a_database_url_the_error_says_where_to_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    provider = AgentRowProvider()
    provider.configure(ConfigureRequest(Config({}, "citrus-deploy")))

    with pytest.raises(DatabaseError, match="pulumi config set --secret databaseUrl"):
        provider.create(agent_props())


def test_database_url_falls_back_to_the_environment(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database)
    provider = AgentRowProvider()
    provider.configure(ConfigureRequest(Config({}, "citrus-deploy")))

    assert provider.create(agent_props()).outs is not None


def test_the_provider_is_pickled_by_reference_and_carries_no_data() -> None:
    """State keeps a reference to db.provider, not a copy: destroy runs today's code."""
    pickled = base64.b64decode(serialize_provider(AgentRowProvider()))

    assert b"db.provider" in pickled
    assert b"AgentRowProvider" in pickled
    assert len(pickled) < 200
    assert type(dill.loads(pickled)) is AgentRowProvider
