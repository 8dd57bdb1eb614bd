"""The resource plugins a worker installs before it takes a job, through the stand-in CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from citrus_deploy.engine.plugins import install_pinned_plugins
from citrus_deploy.standin.cli.commands import WATCHED_ENV
from tests.conftest import Cli
from tests.paths import REPO

GITHUB_TOKEN = "ghp_" + "T" * 36
DATABASE_URL = "postgresql://citrus:db-password-7f3a@db.internal:5432/citrus"
DO_TOKEN = "dop_v1_" + "d" * 64
PASSPHRASE = "passphrase-5b1e"

PINNED = {
    "digitalocean": "v" + metadata.version("pulumi-digitalocean"),
    "random": "v" + metadata.version("pulumi-random"),
}


def test_a_worker_installs_the_plugins_the_installed_packages_pin(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's own secrets stay out of the CLI's environment; the operator's PULUMI_HOME
    (where plugins go) reaches it."""
    monkeypatch.setenv("ADMIN_TOKEN", "admin-token-of-the-web-0123456789")
    monkeypatch.setenv("DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))

    installed = install_pinned_plugins(tmp_path / "work")

    assert {plugin.name: f"v{plugin.version}" for plugin in installed} == PINNED
    made = cli.calls()
    assert [call["words"] for call in made if call["words"][0] == "plugin"] == [
        ["plugin", "install", "resource", name, version] for name, version in PINNED.items()
    ]
    for call in made:
        if call["words"][0] == "plugin":
            assert call["cwd"] == str(tmp_path / "work")  # not the program's directory
        assert call["env"] == {
            **dict.fromkeys(WATCHED_ENV),
            "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        }


def service_command(cli: Cli, tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`citrus-deploy service <command>` with valid automation settings and no reachable
    database."""
    env = {
        **os.environ,
        "CITRUS_DEPLOYER": "automation",
        "DATABASE_URL": "postgresql://citrus@127.0.0.1:1/citrus",
        "ADMIN_TOKEN": "admin-token-of-the-web-0123456789",
        "PULUMI_BACKEND_URL": f"file://{tmp_path}/state",
        "CITRUS_STATE_DIR": str(tmp_path / "citrus-state"),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "GITHUB_TOKEN": GITHUB_TOKEN,
        "ENGINE_WS_URL": "wss://engine.citrushost.io",
        "DIGITALOCEAN_TOKEN": DO_TOKEN,
    }
    return subprocess.run(
        [sys.executable, "-m", "citrus_deploy", "service", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["worker", "all"])
def test_a_worker_that_cannot_install_a_plugin_does_not_start(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
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
    assert [words[0] for words in cli.words()] == ["version", "plugin"]
