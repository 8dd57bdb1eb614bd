"""AutomationDeployer against a stand-in `pulumi` CLI: what the real deployer hands the CLI.

The Automation API library runs for real; only the CLI below it is the stand-in of
tests/service/fake_pulumi.py (the true boundary: the Pulumi engine). These tests show which
arguments, environment and directory the CLI gets, and how its answers are read. Whether Pulumi
then deploys is for tests/service/test_live_automation.py, which needs the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from service.automation import AutomationDeployer, install_pinned_plugins
from service.child import run_in_child
from service.deployer import ROOT, DeployError, StackValue
from tests.service import fake_pulumi

GITHUB_TOKEN = "ghp_" + "T" * 36
DATABASE_URL = "postgresql://citrus:db-password-7f3a@db.internal:5432/citrus"
DO_TOKEN = "dop_v1_" + "d" * 64
PASSPHRASE = "passphrase-5b1e"
SECRETS = (GITHUB_TOKEN, DATABASE_URL, "db-password-7f3a", DO_TOKEN, PASSPHRASE)

CONFIG = {
    "citrus-deploy:serverName": StackValue("web-1"),
    "citrus-deploy:engineWsUrl": StackValue("wss://engine.citrushost.io"),
    "citrus-deploy:githubToken": StackValue(GITHUB_TOKEN, secret=True),
    "citrus-deploy:databaseUrl": StackValue(DATABASE_URL, secret=True),
    "digitalocean:token": StackValue(DO_TOKEN, secret=True),
}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts the stand-in `pulumi` first on PATH; returns the directory it records into."""
    bindir, home = tmp_path / "bin", tmp_path / "fake-pulumi"
    bindir.mkdir()
    home.mkdir()
    script = bindir / "pulumi"
    fake = Path(__file__).with_name("fake_pulumi.py")
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_PULUMI_DIR", str(home))
    for name in (
        "GITHUB_TOKEN",
        "DATABASE_URL",
        "DIGITALOCEAN_TOKEN",
        "DO_API_TOKEN",
        "PULUMI_BACKEND_URL",
        "PULUMI_HOME",
        "FAKE_PULUMI_FAIL",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


def calls(home: Path) -> list[dict[str, Any]]:
    """Every call the CLI got; "words" = its arguments without the global --non-interactive."""
    path = home / "calls.jsonl"
    if not path.exists():
        return []
    made = [json.loads(line) for line in path.read_text().splitlines()]
    for call in made:
        call["words"] = [arg for arg in call["argv"] if arg != "--non-interactive"]
    return made


def deployer(tmp_path: Path) -> AutomationDeployer:
    return AutomationDeployer(backend_url=f"file://{tmp_path}/state", passphrase=PASSPHRASE)


def test_up_gives_the_cli_secrets_in_its_environment_never_its_arguments(
    cli: Path, tmp_path: Path
) -> None:
    lines: list[str] = []

    outputs = deployer(tmp_path).up("web-1", CONFIG, lines.append)

    made = calls(cli)
    for call in made:
        argv = " ".join(call["argv"])
        assert not [s for s in SECRETS if s in argv], call["argv"]
    (up,) = [call for call in made if call["words"][0] == "up"]
    assert up["env"] == {
        "ADMIN_TOKEN": None,
        "DO_API_TOKEN": None,
        "PULUMI_BACKEND_URL": f"file://{tmp_path}/state",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_HOME": None,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "DATABASE_URL": DATABASE_URL,
        "DIGITALOCEAN_TOKEN": DO_TOKEN,
    }
    (set_all,) = [call["words"] for call in made if call["words"][:2] == ["config", "set-all"]]
    assert "--secret" not in set_all
    assert "citrus-deploy:serverName=web-1" in set_all
    assert outputs == {"serverName": "web-1", "dropletId": "412345678"}  # secret ones dropped
    assert "Updating (web-1):" in lines
    assert "[event] summary: {'create': 7} in 3s" in lines


def test_engine_events_come_over_grpc_as_from_a_current_cli(cli: Path, tmp_path: Path) -> None:
    """The stand-in reports the CLI of the installed SDK's release, so the Automation API
    listens for events as a gRPC server and the stand-in streams them to it, as the CLI does."""
    lines: list[str] = []

    deployer(tmp_path).up("web-1", CONFIG, lines.append)

    (up,) = [call["words"] for call in calls(cli) if call["words"][0] == "up"]
    assert up[up.index("--event-log") + 1].startswith("tcp://127.0.0.1:")
    assert "[event] summary: {'create': 7} in 3s" in lines
    assert "v" + metadata.version("pulumi") == fake_pulumi.VERSION, (
        "the stand-in should report the CLI of the installed Automation API: check that it "
        "still speaks what this release expects, then update its VERSION"
    )


def test_destroy_runs_the_program_with_the_secrets_in_the_environment_only(
    cli: Path, tmp_path: Path
) -> None:
    """Without the program, destroy would use the DigitalOcean token stored in state by the
    last `up`, which fails once that token is rotated (pulumi/pulumi#4981, #18740)."""
    service = deployer(tmp_path)
    service.up("web-1", CONFIG, lambda _line: None)
    rotated = "dop_v1_" + "r" * 64
    lines: list[str] = []

    service.destroy(
        "web-1", {**CONFIG, "digitalocean:token": StackValue(rotated, secret=True)}, lines.append
    )

    made = calls(cli)
    for call in made:
        assert not [s for s in (*SECRETS, rotated) if s in " ".join(call["argv"])], call["argv"]
    (destroy,) = [call for call in made if call["words"][0] == "destroy"]
    assert "--run-program=true" in destroy["words"]
    assert destroy["env"]["DIGITALOCEAN_TOKEN"] == rotated
    assert destroy["env"]["GITHUB_TOKEN"] == GITHUB_TOKEN
    assert destroy["env"]["DATABASE_URL"] == DATABASE_URL
    assert destroy["env"]["PULUMI_CONFIG_PASSPHRASE"] == PASSPHRASE
    assert "Destroying (web-1):" in lines


def test_the_stand_in_refuses_what_it_does_not_know(cli: Path, tmp_path: Path) -> None:
    """What keeps the stand-in honest: a command or flag a newer Automation API adds fails."""
    deployer(tmp_path).up("web-1", CONFIG, lambda _line: None)

    for words in (["destroy", "--refresh"], ["destroy", "--run-program=yes"], ["stack", "ls"]):
        done = subprocess.run(
            ["pulumi", *words, "--stack", "web-1"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 2, (words, done.stderr)
        assert done.stderr.startswith(("error: unknown flag", "error: invalid argument", "fake"))


def test_secrets_left_in_the_stack_config_give_way_to_the_services(
    cli: Path, tmp_path: Path
) -> None:
    """A token set by hand with `pulumi config set --secret` would win over the environment."""
    stale = {"citrus-deploy:githubToken": "ghp_old", "citrus-deploy:region": "ams3"}
    (cli / "stacks.json").write_text(json.dumps({"web-1": {"config": stale, "outputs": {}}}))

    deployer(tmp_path).up("web-1", CONFIG, lambda _line: None)

    words = [call["words"] for call in calls(cli)]
    (rm_all,) = [w for w in words if w[:2] == ["config", "rm-all"]]
    assert rm_all[-3:] == [
        "citrus-deploy:databaseUrl",
        "citrus-deploy:githubToken",
        "digitalocean:token",
    ]
    assert words.index(rm_all) < [w[0] for w in words].index("up")
    config = json.loads((cli / "stacks.json").read_text())["web-1"]["config"]
    assert "citrus-deploy:githubToken" not in config
    assert config["citrus-deploy:region"] == "ams3"  # plain keys the service does not set stay


def test_a_worker_hands_pulumi_its_settings_secrets_and_nothing_of_its_own(
    cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the worker's child process, as a deployment runs: the web's admin token and the
    worker's own secret variables stay behind; the deployment's secrets come from its request."""
    monkeypatch.setenv("ADMIN_TOKEN", "admin-token-of-the-web-0123456789")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "the-worker-env-passphrase")
    monkeypatch.setenv("DO_API_TOKEN", "dop_v1_stale_in_the_worker_env")
    options = {
        "deployer": "automation",
        "backend_url": f"file://{tmp_path}/state",
        "passphrase": PASSPHRASE,
        "passphrase_file": None,
        "step_delay": 0.0,
    }
    lines: list[str] = []

    async def record(line: str) -> None:
        lines.append(line)

    outputs = asyncio.run(run_in_child("up", "web-1", CONFIG, options, record))

    assert outputs["serverName"] == "web-1"
    made = calls(cli)
    assert made, lines
    assert {(call["env"]["ADMIN_TOKEN"], call["env"]["DO_API_TOKEN"]) for call in made} == {
        (None, None)
    }
    stack_calls = [call for call in made if call["words"] != ["version"]]
    assert {call["env"]["PULUMI_CONFIG_PASSPHRASE"] for call in stack_calls} == {PASSPHRASE}
    assert {call["env"]["DIGITALOCEAN_TOKEN"] for call in stack_calls} == {DO_TOKEN}


def test_every_call_runs_in_the_project_directory(cli: Path, tmp_path: Path) -> None:
    deployer(tmp_path).up("web-1", CONFIG, lambda _line: None)
    deployer(tmp_path).destroy("web-1", CONFIG, lambda _line: None)

    made = calls(cli)
    assert {call["cwd"] for call in made} == {str(ROOT)}
    assert [call["words"][:2] for call in made][-5:] == [
        ["config", "set-all"],
        ["config", "rm-all"],
        ["destroy", "--skip-preview"],
        ["stack", "history"],
        ["stack", "rm"],
    ]


def test_a_new_stack_does_not_adopt_a_config_file_found_in_the_project(
    cli: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    hand_made = "config:\n  citrus-deploy:region: ams3\n"
    (project / "Pulumi.dev.yaml").write_text(hand_made)
    service = AutomationDeployer(
        backend_url=f"file://{tmp_path}/state", passphrase=PASSPHRASE, work_dir=project
    )
    config = {**CONFIG, "citrus-deploy:serverName": StackValue("dev")}

    with pytest.raises(DeployError, match=r"Pulumi\.dev\.yaml in the project directory") as raised:
        service.up("dev", config, lambda _line: None)

    assert raised.value.transient is False
    assert [call["words"][:2] for call in calls(cli)] == [["version"], ["stack", "select"]]
    assert (project / "Pulumi.dev.yaml").read_text() == hand_made
    service.up("web-1", CONFIG, lambda _line: None)  # a name of its own is fine


def test_a_locked_stack_needs_an_operator_not_a_retry(
    cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue runs one operation per stack: a lock is a killed update's, and retrying would
    spend every attempt on it."""
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up:locked")

    with pytest.raises(DeployError, match="no deployment of the service holds") as raised:
        deployer(tmp_path).up("web-1", CONFIG, lambda _line: None)

    assert raised.value.transient is False
    assert raised.value.repair is not None
    assert "pulumi cancel --stack web-1" in raised.value.repair


def test_pending_operations_of_a_killed_update_stop_the_next_up(
    cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulumi's `up` would only warn and create the droplet a second time."""
    service = deployer(tmp_path)
    service.up("web-1", CONFIG, lambda _line: None)
    droplet = {"urn": "urn:pulumi:web-1::citrus-deploy::digitalocean:index/droplet:Droplet::d"}
    pending = [
        {"resource": {**droplet, "type": "digitalocean:index/droplet:Droplet"}, "type": "creating"}
    ]
    monkeypatch.setenv("FAKE_PULUMI_PENDING", json.dumps(pending))

    with pytest.raises(DeployError, match="1 pending operation") as raised:
        service.up("web-1", CONFIG, lambda _line: None)

    assert raised.value.repair is not None
    assert "--clear-pending-creates" in raised.value.repair
    assert not [call for call in calls(cli) if call["words"][0] == "up"][1:]


def test_destroying_a_stack_that_does_not_exist_is_done(cli: Path, tmp_path: Path) -> None:
    lines: list[str] = []

    deployer(tmp_path).destroy("never-made", CONFIG, lines.append)

    assert lines == ["stack never-made does not exist: nothing to destroy"]
    assert [call["words"][:2] for call in calls(cli)] == [["version"], ["stack", "select"]]


def test_a_secret_with_no_environment_variable_stops_before_the_cli(
    cli: Path, tmp_path: Path
) -> None:
    config = {**CONFIG, "citrus-deploy:sshKeys": StackValue('["k"]', secret=True)}

    with pytest.raises(DeployError, match="citrus-deploy:sshKeys has no environment variable"):
        deployer(tmp_path).up("web-1", config, lambda _line: None)

    assert calls(cli) == []


# -- resource plugins, installed when a worker starts ----------------------------------------

PINNED = {
    "digitalocean": "v" + metadata.version("pulumi-digitalocean"),
    "random": "v" + metadata.version("pulumi-random"),
}


def test_a_worker_installs_the_plugins_the_installed_packages_pin(
    cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's own secrets stay out of the CLI's environment; the operator's PULUMI_HOME
    (where plugins go) reaches it."""
    monkeypatch.setenv("ADMIN_TOKEN", "admin-token-of-the-web-0123456789")
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))

    installed = install_pinned_plugins()

    assert {plugin.name: f"v{plugin.version}" for plugin in installed} == PINNED
    made = calls(cli)
    assert [call["words"] for call in made if call["words"][0] == "plugin"] == [
        ["plugin", "install", "resource", name, version] for name, version in PINNED.items()
    ]
    for call in made:
        assert call["cwd"] == str(ROOT)
        assert call["env"] == {
            **dict.fromkeys(fake_pulumi.WATCHED_ENV),
            "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        }


def service_command(cli: Path, tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`python -m service <command>` with valid automation settings and no reachable database."""
    env = {
        **os.environ,
        "CITRUS_DEPLOYER": "automation",
        "DATABASE_URL": "postgresql://citrus@127.0.0.1:1/citrus",
        "ADMIN_TOKEN": "admin-token-of-the-web-0123456789",
        "PULUMI_BACKEND_URL": f"file://{tmp_path}/state",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "ENGINE_WS_URL": "wss://engine.citrushost.io",
        "DIGITALOCEAN_TOKEN": DO_TOKEN,
    }
    return subprocess.run(
        [sys.executable, "-m", "service", command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["worker", "all"])
def test_a_worker_that_cannot_install_a_plugin_does_not_start(
    cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """One message naming the plugin, its version and the CLI's words; no traceback, no job."""
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "plugin:offline")

    done = service_command(cli, tmp_path, command)

    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(f"{command}: ")]
    version = PINNED["digitalocean"]
    assert lines[start:] == [
        f"{command}: cannot install the Pulumi resource plugin digitalocean {version} "
        "(the version pulumi_digitalocean pins); the worker does not start without it. "
        "The CLI said:",
        f"error: [resource plugin digitalocean-{version[1:]}] downloading from : failed to "
        f'download plugin: digitalocean-{version[1:]}: Get "https://get.pulumi.com/releases/'
        f'plugins/pulumi-resource-digitalocean-{version}-linux-amd64.tar.gz": dial tcp: '
        "lookup get.pulumi.com: no such host",
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert "citrus-deploy: web on" not in done.stdout  # `all` started no children
    assert [call["words"][0] for call in calls(cli)] == ["version", "plugin"]
