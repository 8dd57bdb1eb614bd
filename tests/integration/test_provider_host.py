"""The row providers in the SDK's own provider host process, spoken to over gRPC as the engine
does; and the provider path frozen into every existing stack's checkpoint."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from citrus_deploy.program import PROJECT_DIR
from citrus_deploy.program.rows import AgentRowProvider, ServerRowProvider
from citrus_deploy.standin.engine import PROJECT
from citrus_deploy.standin.provider_host import ProviderError, ProviderHost
from citrus_deploy.standin.wire import UNKNOWN, secret
from tests.paths import REPO

PICKLES = json.loads((REPO / "tests/fixtures/provider_pickles.json").read_text())
AGENT_URN = f"urn:pulumi:dev::{PROJECT}::pulumi-python:dynamic/citrus:AgentRow::row"
KEY = "ef" * 32


def agent_props(**overrides: Any) -> dict[str, Any]:
    props = {"agentId": str(uuid.uuid4()), "key": KEY, "name": "agent-web-1"}
    return {**props, "__provider": PICKLES["db.provider.AgentRowProvider"], **overrides}


@pytest.fixture
def host(database: str) -> Any:
    with ProviderHost(PROJECT_DIR, PROJECT) as started:
        started.configure({f"{PROJECT}:databaseUrl": secret(database)})
        yield started


def test_a_provider_pickled_today_still_creates_reads_and_deletes(
    host: ProviderHost, database: str
) -> None:
    """Destroy and refresh of every existing stack unpickle the `__provider` stored at create
    time, in a fresh host: db.provider.AgentRowProvider must stay where it is."""
    props = agent_props()

    id_, outs = host.create(AGENT_URN, props)
    read_id, read_outs, _ = host.read(AGENT_URN, id_, outs, props)
    host.delete(AGENT_URN, id_, outs, props)

    assert id_ == props["agentId"]
    assert read_id == id_
    assert read_outs["__provider"] == PICKLES["db.provider.AgentRowProvider"]
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)


def test_todays_providers_pickle_to_the_stored_path() -> None:
    """A new stack must store the same path the old ones hold (dill pickles these classes by
    reference: module and name, no code)."""
    assert serialize_provider(AgentRowProvider()) == PICKLES["db.provider.AgentRowProvider"]
    assert serialize_provider(ServerRowProvider()) == PICKLES["db.provider.ServerRowProvider"]


def test_outside_the_project_directory_the_host_cannot_find_the_provider(
    database: str, tmp_path: Path
) -> None:
    """Why the engine (and the stand-in) start the host in the project directory."""
    with ProviderHost(tmp_path, PROJECT) as host:
        host.configure({f"{PROJECT}:databaseUrl": secret(database)})
        with pytest.raises(ProviderError, match="No module named 'db'"):
            host.create(AGENT_URN, agent_props())


def test_check_lets_unknowns_through_as_the_host_delivers_them(host: ProviderHost) -> None:
    """A preview's unknowns cross the wire as the sentinel; the host turns them into
    `Unknown` objects before our check sees them."""
    inputs, failures = host.check(AGENT_URN, {}, agent_props(agentId=UNKNOWN, key=UNKNOWN))
    _, bad = host.check(AGENT_URN, {}, agent_props(key="XYZ"))

    assert failures == []
    assert (inputs["agentId"], inputs["key"]) == (UNKNOWN, UNKNOWN)
    assert [prop for prop, _ in bad] == ["key"]


def test_diff_with_an_unknown_key_is_a_change_not_a_crash(host: ProviderHost) -> None:
    props = agent_props()
    outs = {**props, "keySha256": "0" * 64}
    outs.pop("key")

    diff = host.diff(AGENT_URN, props["agentId"], outs, {**props, "key": UNKNOWN}, props)

    assert (diff.changes, diff.replaces) == (True, [])
