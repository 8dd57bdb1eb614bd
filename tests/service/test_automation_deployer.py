"""AutomationDeployer against a stand-in `pulumi` CLI: what the real deployer hands the CLI.

The Automation API library runs for real; only the CLI below it is the stand-in of
tests/service/fake_pulumi.py (the true boundary: the Pulumi engine). These tests show which
arguments, environment and directory the CLI gets, and how its answers are read. Whether Pulumi
then deploys is for tests/service/test_live_automation.py, which needs the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from service.automation import AutomationDeployer
from service.child import run_in_child
from service.deployer import ROOT, DeployError, StackValue

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
    for name in ("GITHUB_TOKEN", "DATABASE_URL", "DIGITALOCEAN_TOKEN", "DO_API_TOKEN"):
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


def test_a_locked_stack_is_a_transient_error(
    cli: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PULUMI_FAIL", "up:locked")

    with pytest.raises(DeployError, match="locked by another update") as raised:
        deployer(tmp_path).up("web-1", CONFIG, lambda _line: None)

    assert raised.value.transient is True


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
