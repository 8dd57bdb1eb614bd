"""HTTP deployments through the real deployer: the Automation API over the stand-in CLI.

A worker process with CITRUS_DEPLOYER=automation, as in production, and the stand-in `pulumi`
on its PATH (standin.cli: the real CLI's files, typed config, events and exit codes over the
engine stand-in; DigitalOcean faked). The service's SSH keys and tags are lists, which the CLI
takes only typed as Pulumi.yaml declares them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from citrus_deploy.settings import load_settings
from citrus_deploy.standin.fakes import droplets
from citrus_deploy.web.app import create_app
from tests.conftest import Cli
from tests.service.conftest import AUTH, Worker, rows, service_env, wait_for

FINGERPRINT = "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"
DEPLOY = "/admin/servers/deploy-with-agent"


def automation_env(database: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return service_env(
        database,
        tmp_path / "state",
        CITRUS_DEPLOYER="automation",
        CITRUS_STATE_DIR=str(tmp_path / "citrus-state"),
        GITHUB_TOKEN="ghp_" + "g" * 36,
        ENGINE_WS_URL="wss://engine.citrushost.io",
        DIGITALOCEAN_TOKEN="dop_v1_" + "d" * 64,
        CITRUS_SSH_KEYS=f"12345,{FINGERPRINT}",
        CITRUS_DROPLET_TAGS='["citrus", "web"]',
        **extra,
    )


@pytest.fixture
def service(cli: Cli, service_db: str, tmp_path: Path) -> Iterator[TestClient]:
    env = automation_env(service_db, tmp_path)
    worker = Worker(env, tmp_path / "worker.log").start()
    try:
        with TestClient(create_app(load_settings(**env))) as client:
            yield client
    finally:
        worker.stop()
        print((tmp_path / "worker.log").read_text())


def finished(client: TestClient, name: str) -> dict[str, Any] | None:
    shown: dict[str, Any] = client.get(f"/admin/servers/{name}", headers=AUTH).json()
    return shown if shown.get("lastDeployment") and not shown.get("currentDeployment") else None


def test_an_http_deployment_carries_the_services_ssh_keys_and_tags(
    service: TestClient, cli: Cli, service_db: str, tmp_path: Path
) -> None:
    assert service.post(DEPLOY, json={"name": "web-1"}, headers=AUTH).status_code == 202

    shown = wait_for(lambda: finished(service, "web-1"), 120, "the deployment")

    assert shown["lastDeployment"]["state"] == "succeeded", shown["lastDeployment"]
    (droplet,) = droplets(tmp_path / "state" / "digitalocean.json").values()
    assert droplet["sshKeys"] == ["12345", FINGERPRINT]
    assert droplet["tags"] == ["citrus", "web"]
    assert rows(service_db, "SELECT name, status FROM servers") == [("web-1", "provisioning")]
    assert ["up", "--yes", "--skip-preview"] in [w[:3] for w in cli.words()]

    service.delete("/admin/servers/web-1", headers=AUTH)
    gone = lambda: service.get("/admin/servers/web-1", headers=AUTH).status_code == 404  # noqa: E731
    wait_for(gone, 120, "the destroy")
    assert droplets(tmp_path / "state" / "digitalocean.json") == {}
    assert rows(service_db, "SELECT count(*) FROM agents") == [(0,)]
