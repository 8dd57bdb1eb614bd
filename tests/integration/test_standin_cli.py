"""The stand-in CLI as a user of the real one would see it: files, words and exit codes.

Each case is one the real CLI's source decides (the module docstrings of standin.cli name the
files); these keep the stand-in to them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from citrus_deploy.engine.automation import write_work_dir
from tests.conftest import Cli


@pytest.fixture
def project(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "work"
    write_work_dir(work)
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{tmp_path}/state")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "pp-standin")
    return work


def pulumi(
    work: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pulumi", "--non-interactive", *args],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_stack_init_keeps_one_salt_in_the_stack_file_and_the_checkpoint(
    project: Path, tmp_path: Path
) -> None:
    done = pulumi(project, "stack", "init", "web-1")

    assert (done.returncode, done.stderr) == (0, "Created stack 'web-1'\n")
    settings = yaml.safe_load((project / "Pulumi.web-1.yaml").read_text())
    checkpoint = json.loads(
        (tmp_path / "state/.pulumi/stacks/citrus-deploy/web-1.json").read_text()
    )
    salt = checkpoint["checkpoint"]["latest"]["secrets_providers"]["state"]["salt"]
    assert settings == {"encryptionsalt": salt}
    assert salt.startswith("v1:")
    assert len(salt.split(":")) == 5
    again = pulumi(project, "stack", "init", "web-1")
    assert again.returncode == 1
    assert "error: stack 'organization/citrus-deploy/web-1' already exists" in again.stderr


def test_a_missing_stack_and_a_missing_confirmation_have_their_own_exit_codes(
    project: Path,
) -> None:
    missing = pulumi(project, "stack", "select", "--stack", "nope")
    assert (missing.returncode, missing.stderr) == (6, "error: no stack named 'nope' found\n")
    pulumi(project, "stack", "init", "web-1")
    unconfirmed = pulumi(project, "up", "--stack", "web-1")
    assert unconfirmed.returncode == 2
    assert "--yes or --skip-preview or --preview-only must be passed in" in unconfirmed.stderr


def test_config_set_all_stores_objects_typed_and_plain_values_as_text(project: Path) -> None:
    pulumi(project, "stack", "init", "web-1")
    typed = {
        "citrus-deploy:tags": {"value": '["a","b"]', "objectValue": ["a", "b"], "secret": False}
    }

    pulumi(project, "config", "set-all", "--stack", "web-1", "--json", json.dumps(typed))
    pulumi(
        project,
        "config",
        "set-all",
        "--stack",
        "web-1",
        "--plaintext",
        'citrus-deploy:sshKeys=["k"]',
    )
    listed = pulumi(project, "config", "--json", "--stack", "web-1")

    config = yaml.safe_load((project / "Pulumi.web-1.yaml").read_text())["config"]
    assert config == {"citrus-deploy:tags": ["a", "b"], "citrus-deploy:sshKeys": '["k"]'}
    shown = json.loads(listed.stdout)
    assert shown["citrus-deploy:tags"]["objectValue"] == ["a", "b"]
    assert "objectValue" not in shown["citrus-deploy:sshKeys"]
    refused = pulumi(project, "preview", "--stack", "web-1")
    assert refused.returncode == 1
    assert refused.stderr == (
        "error: validating stack config: Stack 'web-1' with configuration key 'sshKeys' must be "
        "of type 'array<string>'\n"
    )
    assert refused.stdout == ""  # before the engine: no banner


def test_a_stack_with_resources_is_not_removed_without_force(project: Path) -> None:
    pulumi(project, "stack", "init", "web-1")
    checkpoint = project.parent / "state/.pulumi/stacks/citrus-deploy/web-1.json"
    data = json.loads(checkpoint.read_text())
    data["checkpoint"]["latest"]["resources"] = [
        {"urn": "urn:x", "type": "random:index/randomUuid:RandomUuid"}
    ]
    checkpoint.write_text(json.dumps(data))

    refused = pulumi(project, "stack", "rm", "--yes", "web-1")
    forced = pulumi(project, "stack", "rm", "--yes", "--force", "web-1")

    assert refused.returncode == 1
    assert "error: 'web-1' still has resources; removal rejected." in refused.stderr
    assert (forced.returncode, forced.stdout) == (0, "Stack 'web-1' has been removed!\n")
    assert not checkpoint.exists()
    assert not (project / "Pulumi.web-1.yaml").exists()


def test_a_lock_left_behind_is_reported_with_who_made_it(project: Path, tmp_path: Path) -> None:
    pulumi(project, "stack", "init", "web-1")
    left = tmp_path / "state/.pulumi/locks/organization/citrus-deploy/web-1/x.json"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_text(json.dumps({"pid": 42, "username": "ci", "hostname": "box", "timestamp": "T"}))

    done = pulumi(project, "up", "--yes", "--skip-preview", "--stack", "web-1")

    assert done.returncode == 1
    assert done.stderr.startswith("error: the stack is currently locked by 1 lock(s).")
    assert f"file://{left}?no_tmp_dir=true: created by ci@box (pid 42) at T" in done.stderr


def test_a_second_sigterm_terminates_the_update(
    project: Path, tmp_path: Path, database: str
) -> None:
    """The first cancels (steps in flight finish), the second terminates: `update cancelled`,
    exit 8, the lock released (pkg/backend/cancellation_scope.go, pkg/cmd/pulumi/operations)."""
    pulumi(project, "stack", "init", "web-1")
    pulumi(project, "config", "set-all", "--stack", "web-1", "--plaintext", "serverName=web-1",
           "--plaintext", "engineWsUrl=wss://engine.citrushost.io")  # fmt: skip
    env = {
        "CITRUS_STANDIN_STEP_DELAY": "3",
        "DATABASE_URL": database,
        "GITHUB_TOKEN": "ghp_" + "g" * 36,
        "DIGITALOCEAN_TOKEN": "dop_v1_x",
    }
    proc = subprocess.Popen(
        ["pulumi", "--non-interactive", "up", "--yes", "--skip-preview", "--stack", "web-1"],
        cwd=project,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "state/.pulumi/stacks/citrus-deploy/web-1.json"
    deadline = time.monotonic() + 60
    while not json.loads(checkpoint.read_text())["checkpoint"]["latest"].get("pending_operations"):
        assert time.monotonic() < deadline, "no step began"
        time.sleep(0.05)  # a provider call is in flight: the engine runs, its handler is set
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 8, (out, err)
    assert "SIGTERM received; cancelling." in out
    assert "SIGTERM received; terminating" in out
    assert err.endswith("error: update cancelled\n")
    assert not list((tmp_path / "state/.pulumi/locks").rglob("*.json"))
