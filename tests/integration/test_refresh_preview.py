"""The engine's read-only operations, as `gitops drift` and `gitops plan --preview` use them.

`refresh --preview-only` reads every resource through its provider (the row providers in a real
provider host against PostgreSQL, the droplet in the fake cloud) and reports what drifted,
changing nothing: not the checkpoint, not the rows, not the cloud. `preview` plans a changed
config without applying it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citrus_deploy.standin.engine import Engine, Result, StackConfig, Step, stack_config
from citrus_deploy.standin.fakes import droplets
from citrus_deploy.standin.wire import is_secret, reveal
from tests.paths import REPO

SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"
AGENT_ROW = "pulumi-python:dynamic/citrus:AgentRow"
DROPLET = "digitalocean:index/droplet:Droplet"
PASSPHRASE = "refresh-preview-passphrase"


def config(database: str, **overrides: Any) -> StackConfig:
    secrets = {
        "githubToken": "ghp_refresh_preview_0123456789",
        "databaseUrl": database,
        "digitalocean:token": "dop_v1_refresh_preview",
    }
    return stack_config(REPO / "Pulumi.dev.yaml", **{**secrets, **overrides})


def step(result: Result, typ: str) -> Step:
    (found,) = [s for s in result.steps if s.type == typ and s.op != "delete-replaced"]
    return found


def drifted(result: Result) -> dict[str, str]:
    return {s.type: s.op for s in result.steps if s.op != "same"}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "state", passphrase=PASSPHRASE)


@pytest.fixture
def deployed(engine: Engine, database: str) -> Result:
    return engine.up("dev", config(database))


def test_a_clean_stack_has_no_drift_and_the_checkpoint_stays_byte_identical(
    engine: Engine, database: str, deployed: Result
) -> None:
    before = engine.state_path("dev").read_bytes()

    result = engine.refresh("dev", config(database), preview_only=True)

    assert drifted(result) == {}
    assert len(result.steps) == 8  # every resource read or, for components, reported same
    assert engine.state_path("dev").read_bytes() == before
    assert not engine.locked("dev")


def test_a_droplet_deleted_in_the_cloud_is_a_delete_and_stays_in_the_checkpoint(
    engine: Engine, database: str, deployed: Result
) -> None:
    droplet_id = deployed.outputs["dropletId"]
    cloud = json.loads(engine.cloud_file.read_text())
    del cloud["droplets"][droplet_id]
    engine.cloud_file.write_text(json.dumps(cloud))
    before = engine.state_path("dev").read_bytes()

    result = engine.refresh("dev", config(database), preview_only=True)

    assert drifted(result) == {DROPLET: "delete"}
    gone = step(result, DROPLET)
    assert gone.new is None
    assert reveal(gone.old)["size"] == "s-1vcpu-512mb-10gb"
    assert engine.state_path("dev").read_bytes() == before
    # A real refresh would now forget it; the preview did not.
    urns = [r["urn"] for r in engine.export("dev")["resources"]]
    assert any(urn.endswith(DROPLET + "::agent-server-droplet") for urn in urns), urns


def test_a_servers_row_changed_by_hand_is_an_update_naming_the_key_old_and_new(
    engine: Engine, database: str, deployed: Result
) -> None:
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE servers SET size = 's-2vcpu-4gb', status = 'active'")
    before = engine.state_path("dev").read_bytes()

    result = engine.refresh("dev", config(database), preview_only=True)

    assert drifted(result) == {SERVER_ROW: "update"}
    row = step(result, SERVER_ROW)
    # The status the hub moves on is the row's own output, not drift from the program.
    assert row.diffs == ["size"]
    assert (row.old or {})["size"] == "s-1vcpu-512mb-10gb"
    assert (row.new or {})["size"] == "s-2vcpu-4gb"
    assert engine.state_path("dev").read_bytes() == before
    with psycopg.connect(database) as conn:  # and the row is left as the hand left it
        assert conn.execute("SELECT size FROM servers").fetchone() == ("s-2vcpu-4gb",)


def test_secret_outputs_stay_marked_secret_in_what_the_refresh_reports(
    engine: Engine, database: str, deployed: Result
) -> None:
    result = engine.refresh("dev", config(database), preview_only=True)

    agent = step(result, AGENT_ROW)
    assert agent.op == "same"
    secret_keys = [k for k, v in (agent.old or {}).items() if is_secret(v)]
    assert secret_keys, agent.old
    assert all(is_secret((agent.new or {})[k]) for k in secret_keys)


def test_the_preview_takes_no_lock_as_the_diy_backend_does(
    engine: Engine, database: str, deployed: Result
) -> None:
    """pkg/backend/diy/backend.go: Refresh with PreviewOnly goes to apply() before Lock()."""
    engine.lock_path("dev").write_text("{}")  # someone else's update holds the stack

    result = engine.refresh("dev", config(database), preview_only=True)

    assert drifted(result) == {}
    assert engine.lock_path("dev").read_text() == "{}"


def test_preview_of_a_new_size_is_an_update_of_size_and_of_a_new_region_a_replace(
    engine: Engine, database: str, deployed: Result
) -> None:
    before = engine.state_path("dev").read_bytes()
    cloud_before = droplets(engine.cloud_file)

    resized = engine.preview("dev", config(database, size="s-1vcpu-1gb"))
    moved = engine.preview("dev", config(database, region="ams3"))

    assert (step(resized, DROPLET).op, step(resized, DROPLET).diffs) == ("update", ["size"])
    assert (step(resized, SERVER_ROW).op, step(resized, SERVER_ROW).diffs) == ("update", ["size"])
    assert step(resized, AGENT_ROW).op == "same"
    assert step(moved, DROPLET).op == "replace"
    assert "region" in step(moved, DROPLET).diffs
    assert engine.state_path("dev").read_bytes() == before
    assert droplets(engine.cloud_file) == cloud_before
