"""AutomationDeployer through the real Automation API over the stand-in `pulumi` CLI.

The Automation API library runs for real; below it is the stand-in CLI (standin.cli), which
answers as the real CLI does (each behaviour traced to pulumi/pulumi) and runs the real program
under the engine stand-in: real rows in PostgreSQL, DigitalOcean faked. What the real CLI then
does with a real cloud is for tests/service/test_live_automation.py, which needs the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from citrus_deploy.engine.automation import AutomationDeployer
from citrus_deploy.engine.child import run_in_child
from citrus_deploy.engine.deployer import DeployError, StackValue
from citrus_deploy.program import PROJECT_DIR
from citrus_deploy.standin.cli.commands import VERSION
from citrus_deploy.standin.fakes import accept_only, droplets
from tests.conftest import Cli
from tests.paths import REPO

GITHUB_TOKEN = "ghp_" + "T" * 36
DO_TOKEN = "dop_v1_" + "d" * 64
PASSPHRASE = "passphrase-5b1e"
FINGERPRINT = "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"
DROPLET = "digitalocean:index/droplet:Droplet"
SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"


def config(database: str, name: str = "web-1", **plain: Any) -> dict[str, StackValue]:
    values = {
        "citrus-deploy:serverName": StackValue(name),
        "citrus-deploy:engineWsUrl": StackValue("wss://engine.citrushost.io"),
        "citrus-deploy:githubToken": StackValue(GITHUB_TOKEN, secret=True),
        "citrus-deploy:databaseUrl": StackValue(database, secret=True),
        "digitalocean:token": StackValue(DO_TOKEN, secret=True),
    }
    for key, value in plain.items():
        values[key if ":" in key else f"citrus-deploy:{key}"] = StackValue(value)
    return values


def secrets_of(database: str) -> tuple[str, ...]:
    return (GITHUB_TOKEN, database, DO_TOKEN, PASSPHRASE)


def deployer(tmp_path: Path, **kwargs: Any) -> AutomationDeployer:
    kwargs.setdefault("backend_url", f"file://{tmp_path}/state")
    return AutomationDeployer(work_dir=tmp_path / "work", passphrase=PASSPHRASE, **kwargs)


def locks(tmp_path: Path, stack: str = "web-1") -> list[Path]:
    found = tmp_path / "state/.pulumi/locks/organization/citrus-deploy" / stack
    return sorted(found.glob("*.json"))


def cloud(tmp_path: Path) -> Path:
    return tmp_path / "state" / "digitalocean.json"


def quiet(_line: str) -> None:
    pass


# -- what citrus hands the CLI ----------------------------------------------------------------


def test_up_gives_the_cli_secrets_in_its_environment_never_its_arguments(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    lines: list[str] = []

    outputs = deployer(tmp_path).up("web-1", config(database), lines.append)

    made = cli.calls()
    for call in made:
        argv = " ".join(call["argv"])
        assert not [s for s in secrets_of(database) if s in argv], call["argv"]
    (up,) = [call for call in made if call["words"][0] == "up"]
    assert up["env"] == {
        "ADMIN_TOKEN": None,
        "DO_API_TOKEN": None,
        "PULUMI_BACKEND_URL": f"file://{tmp_path}/state",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        "PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER": "true",
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "DATABASE_URL": database,
        "DIGITALOCEAN_TOKEN": DO_TOKEN,
    }
    (set_all,) = [w for w in cli.words() if w[:2] == ["config", "set-all"]]
    assert "--secret" not in set_all
    assert "--plaintext" not in set_all
    typed = json.loads(set_all[set_all.index("--json") + 1])
    assert typed["citrus-deploy:serverName"] == {"value": "web-1", "secret": False}
    assert set(outputs) == {"serverName", "dropletId", "ipv4Address", "agentId", "status"}
    assert "Updating (web-1):" in lines
    # The duration is the engine's wall clock ("in 0s" unloaded, "in 1s" on a busy machine).
    summary = re.compile(r"\[event\] summary: \{'create': 8\} in \d+s")
    assert [line for line in lines if summary.fullmatch(line)]


def test_engine_events_come_over_grpc_as_from_a_current_cli(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """The stand-in reports the CLI of the installed SDK's release, so the Automation API
    listens for events as a gRPC server and the stand-in streams them to it, as the CLI does."""
    from importlib import metadata

    deployer(tmp_path).up("web-1", config(database), quiet)

    (up,) = [w for w in cli.words() if w[0] == "up"]
    assert up[up.index("--event-log") + 1].startswith("tcp://127.0.0.1:")
    assert "v" + metadata.version("pulumi") == VERSION, (
        "the stand-in should report the CLI of the installed Automation API: check that it "
        "still speaks what this release expects, then update its VERSION"
    )


def test_destroy_runs_the_program_so_a_rotated_token_is_the_one_used(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """Without the program, destroy would use the DigitalOcean token stored in state by the
    last `up`, which fails once that token is rotated (pulumi/pulumi#4981, #18740)."""
    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    rotated = "dop_v1_" + "r" * 64
    accept_only(cloud(tmp_path), rotated)
    lines: list[str] = []

    rotated_config = {**config(database), "digitalocean:token": StackValue(rotated, secret=True)}
    service.destroy("web-1", rotated_config, lines.append)

    assert droplets(cloud(tmp_path)) == {}
    (destroy,) = [call for call in cli.calls() if call["words"][0] == "destroy"]
    assert "--run-program=true" in destroy["words"]
    assert destroy["env"]["DIGITALOCEAN_TOKEN"] == rotated
    for call in cli.calls():
        assert rotated not in " ".join(call["argv"])
    assert "Destroying (web-1):" in lines
    assert not (tmp_path / "work" / "Pulumi.web-1.yaml").exists()


def test_the_stand_in_refuses_what_it_does_not_know(cli: Cli, tmp_path: Path) -> None:
    """What keeps the stand-in honest: a command or flag a newer Automation API adds fails, in
    cobra's words."""
    for words, said in (
        (["destroy", "--refresh"], "error: unknown flag: --refresh"),
        (["destroy", "--run-program=yes"], 'error: invalid argument "yes" for "--run-program"'),
        (["stack", "ls"], 'error: unknown command "stack" for "pulumi"'),
    ):
        done = subprocess.run(
            ["pulumi", *words, "--stack", "web-1"],
            capture_output=True,
            text=True,
            check=False,
            cwd=REPO,
        )
        assert done.returncode == 1, (words, done.stderr)
        assert done.stderr.startswith(said), done.stderr


def test_a_worker_hands_pulumi_its_settings_secrets_and_nothing_of_its_own(
    cli: Cli, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
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
        "work_dir": str(tmp_path / "work"),
    }
    lines: list[str] = []

    async def record(line: str) -> None:
        lines.append(line)

    outputs = asyncio.run(run_in_child("up", "web-1", config(database), options, record))

    assert outputs["serverName"] == "web-1"
    made = cli.calls()
    assert {(call["env"]["ADMIN_TOKEN"], call["env"]["DO_API_TOKEN"]) for call in made} == {
        (None, None)
    }
    stack_calls = [call for call in made if call["words"] != ["version"]]
    assert {call["env"]["PULUMI_CONFIG_PASSPHRASE"] for call in stack_calls} == {PASSPHRASE}
    assert {call["env"]["DIGITALOCEAN_TOKEN"] for call in stack_calls} == {DO_TOKEN}


# -- typed config -----------------------------------------------------------------------------


def test_ssh_keys_and_tags_reach_the_droplet_as_lists(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    service = deployer(tmp_path)

    service.up("web-1", config(database, sshKeys=["1234", FINGERPRINT], tags=["web", "eu"]), quiet)

    (droplet,) = droplets(cloud(tmp_path)).values()
    assert (droplet["sshKeys"], droplet["tags"]) == (["1234", FINGERPRINT], ["web", "eu"])
    settings = yaml.safe_load((tmp_path / "work" / "Pulumi.web-1.yaml").read_text())
    assert settings["config"]["citrus-deploy:tags"] == ["web", "eu"]
    assert settings["encryptionsalt"].startswith("v1:")


def test_lists_set_as_json_text_are_refused_as_the_real_cli_refuses_them(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """What `set_all_config` with JSON-encoded strings (the service before typed config) gets
    from the CLI: the list is a string, and `up` stops before the engine runs."""
    from pulumi import automation as auto

    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    opts = auto.LocalWorkspaceOptions(env_vars=service.env)
    stack = auto.select_stack(stack_name="web-1", work_dir=str(tmp_path / "work"), opts=opts)
    stack.set_all_config({"citrus-deploy:tags": auto.ConfigValue('["web"]')})

    with pytest.raises(auto.CommandError) as raised:
        stack.up(on_output=quiet)

    assert (
        "stderr: error: validating stack config: Stack 'web-1' with configuration key 'tags' "
        "must be of type 'array<string>'"
    ) in str(raised.value)
    assert " code: 1\n" in str(raised.value)
    assert locks(tmp_path) == []


# -- the work directory -----------------------------------------------------------------------


def _git_status() -> str:
    done = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return "\n".join(line for line in done.stdout.splitlines() if "__pycache__" not in line)


def test_a_deployment_writes_nothing_into_the_checkout(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """Not even for a stack named like the checkout's example: its Pulumi.dev.yaml is neither
    read nor written; stack files live in the work directory."""
    before, example = _git_status(), (REPO / "Pulumi.dev.yaml").read_bytes()
    service = deployer(tmp_path)

    service.up("dev", config(database, "dev"), quiet)
    service.preview("dev", config(database, "dev", size="s-1vcpu-1gb"), quiet)
    service.destroy("dev", config(database, "dev"), quiet)

    assert _git_status() == before
    assert (REPO / "Pulumi.dev.yaml").read_bytes() == example
    stack_calls = [call for call in cli.calls() if call["words"] != ["version"]]
    assert {call["cwd"] for call in stack_calls} == {str(tmp_path / "work")}
    made = yaml.safe_load((tmp_path / "work" / "Pulumi.yaml").read_text())
    assert made["main"] == str(PROJECT_DIR)  # the package's, not the checkout's
    assert made["runtime"]["options"]["virtualenv"] == sys.prefix


def test_each_operation_makes_the_stack_file_anew_from_the_deployment(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """A value left in the stack file (by hand, or by an earlier deployment that set a key the
    next one drops) would win over the environment or linger; the file is a cache."""
    service = deployer(tmp_path)
    service.up("web-1", config(database, tags=["old"]), quiet)
    path = tmp_path / "work" / "Pulumi.web-1.yaml"
    edited = yaml.safe_load(path.read_text())
    edited["config"]["citrus-deploy:region"] = "ams3"
    edited["config"]["citrus-deploy:githubToken"] = "ghp_by_hand"
    path.write_text(yaml.safe_dump(edited))

    service.up("web-1", config(database), quiet)

    left = yaml.safe_load(path.read_text())["config"]
    assert set(left) == {"citrus-deploy:serverName", "citrus-deploy:engineWsUrl"}
    (droplet,) = droplets(cloud(tmp_path)).values()
    assert (droplet["region"], droplet.get("tags")) == ("sfo3", None)  # no tags: none set


# -- previews ---------------------------------------------------------------------------------


def by_type(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["type"]: step for step in result["steps"]}


def test_a_preview_shows_a_replaced_droplet_as_one_replace(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """The engine sends create-replacement, replace and later delete-replaced for one URN; the
    preview counts it once, as the engine's summary does."""
    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    lines: list[str] = []

    moved = service.preview("web-1", config(database, region="ams3"), lines.append)
    resized = service.preview("web-1", config(database, size="s-1vcpu-1gb"), quiet)

    assert (by_type(moved)[DROPLET]["op"], by_type(moved)[DROPLET]["diffs"]) == (
        "replace",
        ["region"],
    )
    assert moved["summary"]["replace"] == 1
    assert moved["summary"]["update"] == 1  # the server row moves to the new droplet
    assert (by_type(resized)[DROPLET]["op"], by_type(resized)[DROPLET]["diffs"]) == (
        "update",
        ["size"],
    )
    # The dynamic provider host names no changed keys: taken from the inputs, as the CLI shows.
    assert (by_type(resized)[SERVER_ROW]["op"], by_type(resized)[SERVER_ROW]["diffs"]) == (
        "update",
        ["size"],
    )
    # The stack, the component and the explicit provider are steps too; default providers not.
    assert resized["summary"] == {"create": 0, "update": 2, "replace": 0, "delete": 0, "same": 6}
    assert not [s for s in resized["steps"] if "::default" in s["urn"]]
    assert "Previewing update (web-1):" in lines


def test_a_preview_of_a_new_stack_leaves_no_stack_behind(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    result = deployer(tmp_path).preview("web-1", config(database), quiet)

    assert result["summary"]["create"] == 8
    words = [w[:2] for w in cli.words()]
    assert ["stack", "init"] in words
    assert words[-1] == ["stack", "rm"]  # removed again: a check leaves no stack behind
    assert not (tmp_path / "state/.pulumi/stacks/citrus-deploy/web-1.json").exists()
    assert not (tmp_path / "work" / "Pulumi.web-1.yaml").exists()


def test_a_refresh_preview_reports_drift_and_writes_nothing(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    checkpoint = tmp_path / "state/.pulumi/stacks/citrus-deploy/web-1.json"
    state_before = checkpoint.read_bytes()
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE servers SET size = 's-2vcpu-4gb'")
    cloud(tmp_path).write_text(json.dumps({"droplets": {}}))  # deleted by hand

    result = service.preview_refresh("web-1", config(database), quiet)

    ops = {s["type"]: s["op"] for s in result["steps"] if s["op"] != "same"}
    assert ops == {DROPLET: "delete", SERVER_ROW: "update"}
    assert by_type(result)[SERVER_ROW]["diffs"] == [
        {"key": "size", "old": "s-1vcpu-512mb-10gb", "new": "s-2vcpu-4gb"}
    ]
    (refresh,) = [w for w in cli.words() if w[0] == "refresh"]
    assert refresh[:2] == ["refresh", "--preview-only"]
    assert checkpoint.read_bytes() == state_before


def test_a_refresh_preview_of_a_missing_stack_is_an_error(cli: Cli, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="no stack named 'gone-1' found") as raised:
        deployer(tmp_path).preview_refresh("gone-1", config("postgresql://x@h/db"), quiet)

    assert raised.value.transient is False
    assert [w[:2] for w in cli.words()] == [["version"], ["stack", "select"]]


# -- stops ------------------------------------------------------------------------------------


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _wait(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def test_a_stop_while_the_engine_runs_lets_the_step_in_flight_finish(
    cli: Cli, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITRUS_STANDIN_STEP_DELAY", "0.5")
    service = deployer(tmp_path)
    lines: list[str] = []

    def watch(line: str) -> None:
        lines.append(line)
        if "agent-server-agent-row created" in line:
            service.cancel()  # while the droplet is being made

    thread, outcome = _in_thread(lambda: service.up("web-1", config(database), watch))
    thread.join(120)

    error = outcome["error"]
    assert isinstance(error, DeployError)
    assert error.transient
    assert error.repair is None
    assert "update canceled" in str(error)
    assert "SIGTERM received; cancelling." in "\n".join(lines)
    assert locks(tmp_path) == []
    made = set(droplets(cloud(tmp_path)))
    checkpoint = json.loads(
        (tmp_path / "state/.pulumi/stacks/citrus-deploy/web-1.json").read_text()
    )
    recorded = {
        r["id"] for r in checkpoint["checkpoint"]["latest"]["resources"] if r["type"] == DROPLET
    }
    assert made == recorded  # a droplet in flight was finished and recorded, or never begun
    assert checkpoint["checkpoint"]["latest"]["pending_operations"] == []
    deployer(tmp_path).up("web-1", config(database), quiet)  # the retry converges
    assert len(droplets(cloud(tmp_path))) == 1


def test_a_stop_before_the_engine_runs_waits_for_it_and_leaves_no_lock(
    cli: Cli, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI has taken the stack's lock but its engine has not started: a SIGTERM now would
    kill it and leave the lock. The stop is delivered once the engine runs."""
    monkeypatch.setenv("CITRUS_STANDIN_DELAY", "locked=1.5")
    service = deployer(tmp_path)
    thread, outcome = _in_thread(lambda: service.up("web-1", config(database), quiet))
    _wait(lambda: locks(tmp_path), "the CLI to take the lock")

    service.cancel()
    thread.join(120)

    error = outcome["error"]
    assert isinstance(error, DeployError)
    assert error.transient
    assert error.repair is None
    assert "update canceled" in str(error)
    assert locks(tmp_path) == []
    assert droplets(cloud(tmp_path)) == {}


def test_a_stop_between_two_cli_calls_is_not_lost(cli: Cli, tmp_path: Path, database: str) -> None:
    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    service.cancel()  # e.g. while `config set-all` ran

    with pytest.raises(DeployError, match="stopped before the next pulumi operation") as raised:
        service.up("web-1", config(database, size="s-1vcpu-1gb"), quiet)

    assert raised.value.transient
    assert [w[0] for w in cli.words()].count("up") == 1


def test_a_cli_killed_outside_its_engine_leaves_the_stack_to_an_operator(
    cli: Cli, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM from elsewhere (a service manager signalling every process) while the CLI holds
    the lock outside its engine: the CLI dies by it and its lock stays, so the deployment says
    what to run rather than retry into the lock."""
    monkeypatch.setenv("CITRUS_STANDIN_DELAY", "locked=30")
    service = deployer(tmp_path)
    thread, outcome = _in_thread(lambda: service.up("web-1", config(database), quiet))
    (lock,) = _wait(lambda: locks(tmp_path), "the CLI to take the lock")

    os.kill(json.loads(lock.read_text())["pid"], signal.SIGTERM)
    thread.join(60)

    error = outcome["error"]
    assert isinstance(error, DeployError)
    assert error.repair is not None
    assert "killed by SIGTERM outside its engine" in str(error)
    assert "pulumi cancel --stack web-1" in error.repair
    assert locks(tmp_path) == [lock]
    monkeypatch.delenv("CITRUS_STANDIN_DELAY")
    with pytest.raises(DeployError, match="no deployment of the service holds") as locked:
        service.up("web-1", config(database), quiet)
    assert locked.value.repair is not None


# -- failures ---------------------------------------------------------------------------------


def test_a_failed_step_is_told_from_the_engines_diagnostics(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    accept_only(cloud(tmp_path), "dop_v1_another_token")

    with pytest.raises(DeployError) as raised:
        deployer(tmp_path).up("web-1", config(database), quiet)

    text = str(raised.value)
    assert "agent-server-droplet: Error creating droplet: POST /v2/droplets: 401" in text
    assert "Unable to authenticate you" in text
    assert "stack: update failed" in text
    assert raised.value.transient is False
    assert locks(tmp_path) == []


def test_an_unreachable_state_database_is_worth_a_retry(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    from citrus_deploy.standin.pg import free_port

    url = f"postgres://pulumi:state-pw-91@127.0.0.1:{free_port()}/pulumi_state"

    with pytest.raises(DeployError, match="failed to ping PostgreSQL") as raised:
        deployer(tmp_path, backend_url=url).up("web-1", config(database), quiet)

    assert raised.value.transient is True


def test_the_destroy_falls_back_to_the_checkpoint_only_when_the_program_cannot_run(
    cli: Cli, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A destroy stopped after the agent key was deleted leaves a program that cannot run (it
    renders the boot script from the key): the retry destroys from the checkpoint. A config
    the CLI refuses is no such case: that destroy fails and says why."""
    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    with pytest.raises(DeployError, match="validating stack config"):
        service.destroy("web-1", config(database, monitoring="maybe"), quiet)
    assert len(droplets(cloud(tmp_path))) == 1  # nothing destroyed

    def stop_after_the_key(line: str) -> None:
        if "agent-server-agent-key deleted" in line:
            stopping.cancel()

    monkeypatch.setenv("CITRUS_STANDIN_STEP_DELAY", "0.3")
    stopping = deployer(tmp_path)
    with pytest.raises(DeployError, match="canceled"):
        stopping.destroy("web-1", config(database), stop_after_the_key)
    lines: list[str] = []

    deployer(tmp_path).destroy("web-1", config(database), lines.append)

    assert any("the program could not run for the destroy" in line for line in lines)
    assert droplets(cloud(tmp_path)) == {}
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)


# -- locks and pending operations a killed update leaves --------------------------------------


def test_a_locked_stack_needs_an_operator_not_a_retry(
    cli: Cli, tmp_path: Path, database: str
) -> None:
    """The queue runs one operation per stack: a lock is a killed update's, and retrying would
    spend every attempt on it."""
    service = deployer(tmp_path)
    service.up("web-1", config(database), quiet)
    left = tmp_path / "state/.pulumi/locks/organization/citrus-deploy/web-1/dead.json"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_text(json.dumps({"pid": 1, "username": "x", "hostname": "h", "timestamp": "t"}))

    with pytest.raises(DeployError, match="no deployment of the service holds") as raised:
        service.up("web-1", config(database), quiet)

    assert raised.value.transient is False
    assert raised.value.repair is not None
    assert "pulumi cancel --stack web-1" in raised.value.repair


def test_pending_operations_of_a_killed_update_stop_the_next_up(
    cli: Cli, tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulumi's `up` would only warn and create the droplet a second time."""
    monkeypatch.setenv("CITRUS_STANDIN_STEP_DELAY", "30")
    service = deployer(tmp_path)
    checkpoint = tmp_path / "state/.pulumi/stacks/citrus-deploy/web-1.json"
    thread, outcome = _in_thread(lambda: service.up("web-1", config(database), quiet))

    def pending() -> Any:
        if not checkpoint.exists():
            return None
        return json.loads(checkpoint.read_text())["checkpoint"]["latest"].get("pending_operations")

    _wait(pending, "a pending operation")
    (lock,) = locks(tmp_path)
    os.kill(json.loads(lock.read_text())["pid"], signal.SIGKILL)  # the machine died
    thread.join(60)
    assert isinstance(outcome["error"], DeployError)
    monkeypatch.delenv("CITRUS_STANDIN_STEP_DELAY")
    lock.unlink()  # `pulumi cancel`, as the repair steps say

    with pytest.raises(DeployError, match="pending operation") as raised:
        service.up("web-1", config(database), quiet)

    assert raised.value.repair is not None
    assert "--clear-pending-creates" in raised.value.repair


def test_destroying_a_stack_that_does_not_exist_is_done(cli: Cli, tmp_path: Path) -> None:
    lines: list[str] = []

    deployer(tmp_path).destroy("never-made", config("postgresql://x@h/db"), lines.append)

    assert lines == ["stack never-made does not exist: nothing to destroy"]
    assert [w[:2] for w in cli.words()] == [["version"], ["stack", "select"]]


def test_a_secret_with_no_environment_variable_stops_before_the_cli(
    cli: Cli, tmp_path: Path
) -> None:
    given = {
        **config("postgresql://x@h/db"),
        "citrus-deploy:sshKeys": StackValue('["k"]', secret=True),
    }

    with pytest.raises(DeployError, match="citrus-deploy:sshKeys has no environment variable"):
        deployer(tmp_path).up("web-1", given, quiet)

    assert cli.calls() == []
