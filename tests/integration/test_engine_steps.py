"""The engine's steps over one stack's life, every row-provider call in a real provider host.

Preview of a new stack, create, an unchanged `up`, a changed config, the opt-in droplet
replacement (its preview first), refresh after a row was deleted by hand, destroy from the
checkpoint alone, and destroy after a DigitalOcean token rotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from citrus_deploy.standin.engine import Engine, EngineError, Result, StackConfig, stack_config
from citrus_deploy.standin.fakes import accept_only, droplets
from citrus_deploy.standin.wire import UNKNOWN, reveal
from tests.paths import REPO

AGENT_ROW = "pulumi-python:dynamic/citrus:AgentRow"
SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"
DROPLET = "digitalocean:index/droplet:Droplet"
OLD_TOKEN, NEW_TOKEN = "dop_v1_before_rotation", "dop_v1_after_rotation"
GITHUB_TOKEN = "ghp_engine_steps_0123456789"
PASSPHRASE = "engine-steps-passphrase"


def config(database: str, **overrides: Any) -> StackConfig:
    secrets = {
        "githubToken": GITHUB_TOKEN,
        "databaseUrl": database,
        "digitalocean:token": OLD_TOKEN,
    }
    return stack_config(REPO / "Pulumi.dev.yaml", **{**secrets, **overrides})


def ops(result: Result) -> dict[str, str]:
    """Each resource type's step (a replaced resource's later deletion left out)."""
    return {step.type: step.op for step in result.steps if step.op != "delete-replaced"}


def server_row(database: str) -> dict[str, Any] | None:
    with psycopg.connect(database, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM servers").fetchone()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path / "state", passphrase=PASSPHRASE)


def test_preview_of_a_new_stack_plans_every_resource_and_changes_nothing(
    engine: Engine, database: str
) -> None:
    result = engine.preview("dev", config(database))

    assert result.change_summary == {"create": 8}  # stack, provider, component, 5 children
    (agent_row,) = result.by_type(AGENT_ROW)
    (row,) = result.by_type(SERVER_ROW)
    # The credentials and the droplet do not exist yet: their values crossed as unknowns.
    assert reveal(agent_row.inputs["agentId"]) == UNKNOWN
    assert reveal(agent_row.inputs["key"]) == UNKNOWN
    assert row.inputs["dropletId"] == UNKNOWN
    assert server_row(database) is None
    assert not engine.state_path("dev").exists()
    assert droplets(engine.cloud_file) == {}


def test_up_creates_and_an_unchanged_up_keeps_every_output(engine: Engine, database: str) -> None:
    created = engine.up("dev", config(database))
    before = engine.export("dev", show_secrets=True)["resources"]

    again = engine.up("dev", config(database))

    assert created.change_summary == {"create": 8}
    assert again.change_summary == {"same": 8}
    after = engine.export("dev", show_secrets=True)["resources"]
    # Same outputs, the pickled `__provider` of the rows included, and no pending operation.
    assert [(r["urn"], r["id"], r["outputs"]) for r in after] == [
        (r["urn"], r["id"], r["outputs"]) for r in before
    ]
    assert engine.export("dev")["pending_operations"] == []
    assert server_row(database)["digital_ocean_id"] == created.outputs["dropletId"]  # type: ignore[index]


def test_a_new_size_updates_droplet_and_row_in_place(engine: Engine, database: str) -> None:
    created = engine.up("dev", config(database))

    preview = engine.preview("dev", config(database, size="s-1vcpu-1gb"))
    updated = engine.up("dev", config(database, size="s-1vcpu-1gb"))

    for result in (preview, updated):
        assert ops(result)[DROPLET] == "update"
        assert ops(result)[SERVER_ROW] == "update"
        assert ops(result)[AGENT_ROW] == "same"
    row = server_row(database)
    assert row is not None
    assert (row["size"], row["digital_ocean_id"]) == ("s-1vcpu-1gb", created.outputs["dropletId"])


def test_a_new_boot_script_is_ignored_unless_the_stack_opts_in(
    engine: Engine, database: str
) -> None:
    created = engine.up("dev", config(database))
    old_droplet = created.outputs["dropletId"]

    ignored = engine.up("dev", config(database, agentRepoRef="v2"))
    opted = config(database, agentRepoRef="v2", replaceOnBootScriptChange=True)
    preview = engine.preview("dev", opted)
    replaced = engine.up("dev", opted)

    assert ignored.change_summary == {"same": 8}
    # The preview sends the row's Check and Diff an unknown droplet id: it must plan, not fail.
    assert ops(preview)[DROPLET] == "replace"
    assert ops(preview)[SERVER_ROW] == "update"
    (planned_row,) = preview.by_type(SERVER_ROW)
    assert planned_row.inputs["dropletId"] == UNKNOWN
    assert ops(replaced)[DROPLET] == "replace"
    assert [s.type for s in replaced.steps if s.op == "delete-replaced"] == [DROPLET]
    new_droplet = replaced.outputs["dropletId"]
    assert new_droplet != old_droplet
    assert list(droplets(engine.cloud_file)) == [new_droplet]  # the old one deleted after
    assert server_row(database)["digital_ocean_id"] == new_droplet  # type: ignore[index]


def test_refresh_forgets_a_row_deleted_by_hand_and_up_writes_it_again(
    engine: Engine, database: str
) -> None:
    created = engine.up("dev", config(database))
    with psycopg.connect(database) as conn:
        conn.execute("DELETE FROM servers")

    refreshed = engine.refresh("dev", config(database))
    restored = engine.up("dev", config(database))

    assert ops(refreshed)[SERVER_ROW] == "delete"
    assert ops(refreshed)[AGENT_ROW] == "same"
    assert ops(restored)[SERVER_ROW] == "create"
    assert ops(restored)[DROPLET] == "same"
    assert server_row(database)["digital_ocean_id"] == created.outputs["dropletId"]  # type: ignore[index]


def test_destroy_from_the_checkpoint_alone_deletes_in_reverse_order(
    engine: Engine, database: str
) -> None:
    created = engine.up("dev", config(database))

    # Without the program: a config the program would refuse does not matter.
    destroyed = engine.destroy("dev", config(database, region="NOT A REGION"))

    created_order = [s.urn for s in created.steps]
    assert [s.urn for s in destroyed.steps] == list(reversed(created_order))
    assert {s.op for s in destroyed.steps} == {"delete"}
    assert server_row(database) is None
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)
    assert droplets(engine.cloud_file) == {}
    assert engine.export("dev")["resources"] == []


def test_after_a_token_rotation_only_destroy_with_the_program_works(
    engine: Engine, database: str
) -> None:
    """Destroy from the checkpoint uses the provider's stored token (pulumi#4981)."""
    engine.up("dev", config(database))
    accept_only(engine.cloud_file, NEW_TOKEN)
    rotated = config(database, **{"digitalocean:token": NEW_TOKEN})

    with pytest.raises(EngineError, match="Unable to authenticate you"):
        engine.destroy("dev", rotated)
    engine.destroy("dev", rotated, run_program=True)

    assert droplets(engine.cloud_file) == {}
    assert engine.export("dev")["resources"] == []


def test_the_checkpoint_seals_every_secret_with_the_passphrase(
    engine: Engine, database: str
) -> None:
    """As Pulumi's passphrase secrets provider does: no key, token or password in clear."""
    created = engine.up("dev", config(database))
    (key_bytes,) = created.by_type("random:index/randomBytes:RandomBytes")
    key = reveal(key_bytes.outputs["hex"])
    raw = engine.state_path("dev").read_text()

    assert len(key) == 64
    for secret in (key, GITHUB_TOKEN, OLD_TOKEN):
        assert secret not in raw
    assert '"ciphertext"' in raw
    assert engine.up("dev", config(database)).change_summary == {"same": 8}  # it reads back
    wrong = Engine(engine.state_dir, passphrase="not-the-passphrase")
    with pytest.raises(EngineError, match="incorrect passphrase"):
        wrong.up("dev", config(database))
    with pytest.raises(EngineError, match="passphrase must be set"):
        Engine(engine.state_dir).up("new-stack", config(database))


@pytest.mark.parametrize("stop_after", ["ServerRow", "Droplet", "AgentRow", "RandomBytes"])
def test_a_destroy_stopped_half_way_is_finished_by_the_next_destroy(
    tmp_path: Path, database: str, stop_after: str
) -> None:
    """A destroy stopped half-way (its worker died) is retried. With the agent key already
    deleted the program cannot run (it renders the boot script from the key): the deployer
    then destroys what the checkpoint still holds without it, as `pulumi destroy` does."""
    from citrus_deploy.engine.deployer import StackValue
    from citrus_deploy.engine.standin import StandInDeployer

    engine = Engine(tmp_path / "state", passphrase=PASSPHRASE)
    engine.up("dev", config(database))

    def stop_at_the_step(line: str) -> None:
        if f"{stop_after} " in line and "deleted" in line:
            stopping.request_cancel()

    stopping = Engine(tmp_path / "state", passphrase=PASSPHRASE, on_output=stop_at_the_step)
    with pytest.raises(EngineError, match="canceled"):
        stopping.destroy("dev", config(database), run_program=True)
    assert engine.export("dev")["resources"] != []

    stack = config(database)
    values = {k: StackValue(v, k in stack.secret_keys) for k, v in stack.values.items()}
    lines: list[str] = []
    StandInDeployer(tmp_path / "state", passphrase=PASSPHRASE).destroy("dev", values, lines.append)

    assert not engine.state_path("dev").exists()
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM servers").fetchone() == (0,)
    assert droplets(engine.cloud_file) == {}
