"""The real deployer: AutomationDeployer up/destroy of a real stack, through the worker's seam.

Runs only with a Pulumi CLI on PATH and a DigitalOcean token (conftest skips it otherwise, with
the reason). It creates one real, smallest droplet and destroys it; state goes to a throwaway
file:// backend with a generated passphrase.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from pathlib import Path

import psycopg
import pytest

from citrus_deploy.engine.automation import AutomationDeployer
from citrus_deploy.engine.child import run_in_child
from citrus_deploy.engine.deployer import StackValue

pytestmark = pytest.mark.live


def _config(database: str, name: str) -> dict[str, StackValue]:
    token = os.environ.get("DIGITALOCEAN_TOKEN") or os.environ["DO_API_TOKEN"]
    return {
        "citrus-deploy:serverName": StackValue(name),
        "citrus-deploy:tags": StackValue(["citrus-live-test"]),  # a list, typed as declared
        "citrus-deploy:engineWsUrl": StackValue("wss://engine.citrushost.io"),
        "citrus-deploy:databaseUrl": StackValue(database, secret=True),
        "citrus-deploy:githubToken": StackValue(os.environ.get("GITHUB_TOKEN", "x"), secret=True),
        "digitalocean:token": StackValue(token, secret=True),
    }


def test_up_and_destroy_in_process(database: str, tmp_path: Path) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    deployer = AutomationDeployer(
        backend_url=f"file://{tmp_path}/state",
        work_dir=tmp_path / "work",
        passphrase=secrets.token_hex(16),
    )
    lines: list[str] = []
    config = _config(database, name)
    try:
        outputs = deployer.up(name, config, lines.append)
        with psycopg.connect(database) as conn:
            row = conn.execute("SELECT digital_ocean_id FROM servers").fetchone()
        assert row == (outputs["dropletId"],)
        assert any("agent-server-droplet" in line for line in lines)
    finally:
        deployer.destroy(name, config, lines.append)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM agents").fetchone() == (0,)


def test_the_child_process_runs_the_automation_api(database: str, tmp_path: Path) -> None:
    name = f"live-{uuid.uuid4().hex[:8]}"
    options = {
        "deployer": "automation",
        "backend_url": f"file://{tmp_path}/state",
        "passphrase": secrets.token_hex(16),
        "passphrase_file": None,
        "step_delay": 0,
        "work_dir": str(tmp_path / "work"),
    }
    lines: list[str] = []

    async def record(line: str) -> None:
        lines.append(line)

    config = _config(database, name)
    try:
        outputs = asyncio.run(run_in_child("up", name, config, options, record))
        assert outputs["serverName"] == name
    finally:
        asyncio.run(run_in_child("destroy", name, config, options, record))
