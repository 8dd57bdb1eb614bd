"""Two machines, one fleet: workers with separate checkouts, state directories and PULUMI_HOMEs,
sharing one state backend and one database, take turns on one stack.

Real worker processes (`citrus-deploy service worker`, each importing its own copy of the
package: PYTHONPATH names the copy's src/, ahead of the installed one) with
CITRUS_DEPLOYER=automation over the stand-in CLI (standin.cli), which keeps the passphrase salt
as the real CLI does: in the stack's settings file, made on the machine that ran `stack init`,
and in the checkpoint. The second machine has no settings file: with
PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER the CLI takes the checkpoint's salt; without it, it
would make a new one and re-encrypt the state under it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from citrus_deploy.standin.fakes import droplets
from citrus_deploy.store import gitops as gitops_store
from tests.conftest import Cli
from tests.paths import REPO
from tests.service.conftest import Worker, rows, service_env, wait_for


def checkout(target: Path) -> Path:
    """A copy of the program as a second machine has it: the files Git would check out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def machine_env(database: str, tmp_path: Path, machine: str) -> dict[str, str]:
    return service_env(
        database,
        tmp_path / "shared-state",  # PULUMI_BACKEND_URL: the one backend both share
        CITRUS_DEPLOYER="automation",
        PYTHONPATH=str(tmp_path / machine / "checkout" / "src"),
        CITRUS_STATE_DIR=str(tmp_path / machine / "state"),
        PULUMI_HOME=str(tmp_path / machine / "pulumi-home"),
        GITHUB_TOKEN="ghp_" + "g" * 36,
        ENGINE_WS_URL="wss://engine.citrushost.io",
        DIGITALOCEAN_TOKEN="dop_v1_" + "d" * 64,
    )


def deploy(database: str, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(database) as conn:
        dep_id = gitops_store.enqueue(
            conn,
            apply_id=None,
            name="web-1",
            kind=kind,
            config=config,
            repository="acme/fleet",
            commit="0" * 40,
        )

    def done() -> tuple[str, str | None] | None:
        ((found, error),) = rows(
            database, "SELECT state, error FROM deployments WHERE id = %s", (dep_id,)
        )
        return (found, error) if found in ("succeeded", "failed", "needs_operator") else None

    found, error = wait_for(done, 180, f"{kind} deployment {dep_id}")
    return {"state": found, "error": error}


def salt(tmp_path: Path, machine: str) -> str:
    settings = tmp_path / machine / "state" / "work" / "Pulumi.web-1.yaml"
    return str(yaml.safe_load(settings.read_text())["encryptionsalt"])


def test_one_stack_moves_between_two_machines(cli: Cli, service_db: str, tmp_path: Path) -> None:
    machines = {m: checkout(tmp_path / m / "checkout") for m in ("a", "b")}
    cloud = tmp_path / "shared-state" / "digitalocean.json"

    def run_on(machine: str, kind: str, config: dict[str, Any]) -> dict[str, Any]:
        log = tmp_path / machine / "worker.log"
        worker = Worker(machine_env(service_db, tmp_path, machine), log, machines[machine])
        worker.start()
        try:
            outcome = deploy(service_db, kind, config)
        finally:
            worker.stop()
        assert outcome["state"] == "succeeded", (outcome, log.read_text()[-3000:])
        return outcome

    run_on("a", "up", {"serverName": "web-1"})
    (first,) = droplets(cloud).values()
    assert first["size"] == "s-1vcpu-512mb-10gb"

    run_on("b", "up", {"serverName": "web-1", "size": "s-1vcpu-1gb"})
    (resized,) = droplets(cloud).values()
    assert resized["size"] == "s-1vcpu-1gb"
    assert rows(service_db, "SELECT size FROM servers") == [("s-1vcpu-1gb",)]
    # B decrypted A's state with A's salt, taken from the checkpoint, not a new one of its own.
    assert salt(tmp_path, "b") == salt(tmp_path, "a")
    checkpoint = tmp_path / "shared-state/.pulumi/stacks/citrus-deploy/web-1.json"
    latest = json.loads(checkpoint.read_text())["checkpoint"]["latest"]
    assert latest["secrets_providers"]["state"]["salt"] == salt(tmp_path, "a")

    run_on("b", "destroy", {"serverName": "web-1"})
    assert droplets(cloud) == {}
    assert rows(service_db, "SELECT count(*) FROM agents") == [(0,)]
    for machine, copy in machines.items():  # each ran its own copy, which got no stack file
        project = yaml.safe_load((tmp_path / machine / "state/work/Pulumi.yaml").read_text())
        assert project["main"] == str(copy / "src/citrus_deploy/program/project")
        assert not list(copy.glob("Pulumi.web-1.*")), machine
        assert (tmp_path / machine / "pulumi-home" / "workspaces").is_dir(), machine


@pytest.mark.parametrize("fallback", [True, False])
def test_the_stand_in_takes_the_checkpoints_salt_only_with_the_fallback(
    cli: Cli, database: str, tmp_path: Path, fallback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As pkg/cmd/pulumi/stack/secrets.go does: a machine without the stack's settings file
    makes a new salt (and the next write re-encrypts the state under it) unless told to fall
    back to the state's secrets manager."""
    from citrus_deploy.engine.automation import AutomationDeployer
    from tests.service.test_automation_deployer import config

    shared = f"file://{tmp_path}/shared"
    first = AutomationDeployer(backend_url=shared, work_dir=tmp_path / "a", passphrase="pp-1")
    first.up("web-1", config(database), lambda _line: None)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "Pulumi.yaml", tmp_path / "b" / "Pulumi.yaml")
    env = {"PULUMI_BACKEND_URL": shared, "PULUMI_CONFIG_PASSPHRASE": "pp-1"}
    if fallback:
        env["PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER"] = "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    done = subprocess.run(
        ["pulumi", "config", "--show-secrets", "--json", "--stack", "web-1"],
        cwd=tmp_path / "b",
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    made = yaml.safe_load((tmp_path / "b" / "Pulumi.web-1.yaml").read_text())["encryptionsalt"]
    theirs = yaml.safe_load((tmp_path / "a" / "Pulumi.web-1.yaml").read_text())["encryptionsalt"]
    assert (made == theirs) is fallback
