"""The Pulumi program end to end under the engine stand-in, against a real PostgreSQL."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.rows import dict_row

from citrus_deploy.program import PROJECT_DIR
from citrus_deploy.standin.engine import (
    Engine,
    EngineError,
    Registration,
    Result,
    StackConfig,
    stack_config,
)
from citrus_deploy.standin.provider_host import ProviderHost
from citrus_deploy.standin.wire import reveal as unwrap
from tests.paths import REPO

AGENT_SERVER = "citrus:index:AgentServer"
AGENT_ROW = "pulumi-python:dynamic/citrus:AgentRow"
SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"
DROPLET = "digitalocean:index/droplet:Droplet"
UUID_T = "random:index/randomUuid:RandomUuid"
BYTES_T = "random:index/randomBytes:RandomBytes"

GITHUB_TOKEN = "ghp_Zx9TokenUnderTest0000000000000000000"
DO_TOKEN = "dop_v1_token_under_test_1111"
DB_PASSWORD = "pw-Under-Test-7f3a"
PASSPHRASE = "program-test-passphrase"


def with_password(conninfo: str) -> str:
    """The test server trusts local logins, so any password works: one we can search for."""
    parts = urlsplit(conninfo)
    netloc = parts.netloc.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    return urlunsplit(parts._replace(netloc=netloc))


def dev_config(database: str, **overrides: Any) -> StackConfig:
    secrets = {
        "githubToken": GITHUB_TOKEN,
        "databaseUrl": with_password(database),
        "digitalocean:token": DO_TOKEN,
    }
    return stack_config(REPO / "Pulumi.dev.yaml", **{**secrets, **overrides})


def rows(conninfo: str, table: str) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 fixed names


def one(result: Result, typ: str) -> Registration:
    (reg,) = result.by_type(typ)
    return reg


def up(database: str, tmp_path: Path, **overrides: Any) -> Result:
    return Engine(tmp_path / "state", passphrase=PASSPHRASE).up(
        "dev", dev_config(database, **overrides)
    )


@pytest.fixture
def deployed(database: str, tmp_path: Path) -> Result:
    return up(database, tmp_path)


def test_dev_stack_writes_the_contract_rows(deployed: Result, database: str) -> None:
    (agent,) = rows(database, "agents")
    (server,) = rows(database, "servers")
    key_hex = unwrap(one(deployed, BYTES_T).outputs["hex"])
    droplet = one(deployed, DROPLET)

    assert agent["status"] == "offline"
    assert agent["name"] == "agent-citrus-dev-1"
    assert re.fullmatch(r"[0-9a-f]{64}", agent["key"])
    assert agent["key"] == key_hex
    assert str(agent["id"]) == one(deployed, UUID_T).outputs["result"]
    assert server["name"] == "citrus-dev-1"
    assert server["status"] == "provisioning"
    assert server["digital_ocean_id"] == droplet.id
    assert (server["region"], server["size"]) == ("sfo3", "s-1vcpu-512mb-10gb")
    assert server["agent_id"] == agent["id"]


def test_a_retried_create_leaves_one_row_in_each_table(deployed: Result, database: str) -> None:
    """A crash between the insert and the state write makes the engine call create again."""
    with ProviderHost(PROJECT_DIR, "citrus-deploy") as host:
        host.configure(dev_config(database).wire())
        for typ in (AGENT_ROW, SERVER_ROW):
            reg = one(deployed, typ)
            again, _outs = host.create(reg.urn, unwrap(reg.inputs))
            assert again == reg.id

    assert len(rows(database, "agents")) == 1
    assert len(rows(database, "servers")) == 1


def test_resource_graph_types_parents_and_order(deployed: Result) -> None:
    component = one(deployed, AGENT_SERVER)
    children = [r for r in deployed.registrations if r.parent.endswith("::agent-server")]
    types = [r.typ for r in children]

    assert not component.custom
    # The two credentials are independent: the engine may register them in either order.
    assert sorted(types[:2]) == sorted([UUID_T, BYTES_T])
    assert types[2:] == [AGENT_ROW, DROPLET, SERVER_ROW]
    assert all(r.name.startswith("agent-server-") for r in children)


def test_droplet_takes_region_size_image_and_extras_from_config(
    database: str, tmp_path: Path
) -> None:
    result = up(
        database, tmp_path, region="ams3", size="s-2vcpu-2gb", image="debian-12-x64", vpcUuid=""
    )
    droplet = unwrap(one(result, DROPLET).inputs)

    assert (droplet["region"], droplet["size"], droplet["image"]) == (
        "ams3",
        "s-2vcpu-2gb",
        "debian-12-x64",
    )
    assert droplet["name"] == "citrus-dev-1"
    assert droplet["tags"] == ["citrus", "dev"]
    assert droplet["monitoring"] is True


def test_user_data_carries_exactly_the_generated_id_and_key(deployed: Result) -> None:
    user_data = unwrap(one(deployed, DROPLET).inputs["userData"])
    agent_id = one(deployed, UUID_T).outputs["result"]
    key = unwrap(one(deployed, BYTES_T).outputs["hex"])

    assert re.findall(r"^readonly AGENT_ID=(.*)$", user_data, re.M) == [agent_id]
    assert re.findall(r"^readonly AGENT_KEY=(.*)$", user_data, re.M) == [key]
    assert re.findall(r"^readonly ENGINE_WS_URL=(.*)$", user_data, re.M) == [
        "wss://engine.citrushost.io"
    ]


def test_component_registers_its_outputs(deployed: Result, database: str) -> None:
    (outputs,) = [v for k, v in deployed.component_outputs.items() if k.endswith("agent-server")]
    (server,) = rows(database, "servers")

    assert outputs == {
        "serverName": "citrus-dev-1",
        "dropletId": server["digital_ocean_id"],
        "ipv4Address": one(deployed, DROPLET).outputs["ipv4Address"],
        "agentId": str(server["agent_id"]),
        "status": "provisioning",
    }


def _plain_places(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, string) in a value that is NOT inside a secret marker."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _plain_places(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _plain_places(v, f"{path}[{i}]")]
    return [(path, str(value))]


def test_secrets_travel_only_inside_secret_values(deployed: Result) -> None:
    key = unwrap(one(deployed, BYTES_T).outputs["hex"])
    key_b64 = base64.b64encode(bytes.fromhex(key)).decode()
    secrets = {"agent key": key, "agent key b64": key_b64, "github token": GITHUB_TOKEN}
    secrets["do token"] = DO_TOKEN
    leaks = []
    for reg in deployed.registrations:
        # The resource id is never secret in state.
        places = [("id", reg.id), *_plain_places(reg.inputs, "inputs")]
        outputs = {k: v for k, v in reg.outputs.items() if k not in reg.additional_secret_outputs}
        places += _plain_places(outputs, "outputs")
        leaks += [
            (reg.name, where, label)
            for where, text in places
            for label, secret in secrets.items()
            if secret in text
        ]
    assert leaks == []


def test_database_password_appears_nowhere(deployed: Result) -> None:
    seen = []
    for reg in deployed.registrations:
        everything = str(unwrap(reg.inputs)) + str(unwrap(reg.outputs)) + reg.id
        pickled = unwrap(reg.inputs).get("__provider")
        if pickled:
            everything += base64.b64decode(pickled).decode("latin-1")
        if DB_PASSWORD in everything:
            seen.append(reg.name)
    assert [r.name for r in deployed.registrations if "__provider" in r.inputs] == [
        "agent-server-agent-row",
        "agent-server-server-row",
    ]
    assert seen == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("serverName", "bad_name!"),
        ("agentName", "agent bad"),
        ("region", "SFO3"),
        ("size", "s 1vcpu"),
        ("image", "debian;reboot"),
        ("engineWsUrl", "https://engine.example"),
        ("agentRepoUrl", "https://ghp_x@github.com/o/r.git"),
        ("agentRepoRef", "--upload-pack=touch"),
        ("githubToken", "tok en"),
        ("sshKeys", ["not-a-fingerprint"]),
        ("tags", ["bad tag"]),
        ("vpcUuid", "not-a-uuid"),
        ("monitoring", "maybe"),
        ("replaceOnBootScriptChange", "sometimes"),
        ("databaseUrl", "postgresql://[broken"),
    ],
)
def test_a_bad_field_stops_the_program_before_any_resource(
    database: str, tmp_path: Path, key: str, value: Any
) -> None:
    engine = Engine(tmp_path, passphrase=PASSPHRASE)

    with pytest.raises(EngineError, match=rf"invalid configuration.*\n  - {key}(\[0\])?: "):
        engine.up("dev", dev_config(database, **{key: value}))

    # The stack resource exists before the program runs; nothing else was registered.
    assert [r["type"] for r in engine.export("dev")["resources"]] == ["pulumi:pulumi:Stack"]
    assert rows(database, "agents") == []


def test_boot_script_changes_do_not_replace_droplets_unless_opted_in(
    database: str, tmp_path: Path
) -> None:
    default = one(up(database, tmp_path / "a"), DROPLET)
    opted = one(
        up(database, tmp_path / "b", serverName="other-1", replaceOnBootScriptChange=True),
        DROPLET,
    )

    assert default.ignore_changes == ["userData"]
    assert opted.ignore_changes == []
