"""The README's newcomer path, as a newcomer runs it: `citrus-deploy service demo`, a POST, a GET,
the stale check flipping the row. Real processes, real PostgreSQL; the engine stand-in stands in for
the Pulumi engine and DigitalOcean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from citrus_deploy.standin.pg import free_port
from tests.paths import REPO

AUTH = {"Authorization": "Bearer dev"}


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ADMIN_TOKEN")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citrus_deploy", "service", "demo"],
            cwd=REPO,
            env={**env, "CITRUS_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        match = re.search(r"DATABASE_URL=(\S+)", log.read_text())
        assert match, log.read_text()
        yield base, match.group(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def poll(url: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(url, headers=AUTH).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.3)


def test_a_newcomer_sees_a_post_become_rows_and_the_stale_check_flip_them(
    demo: tuple[str, str],
) -> None:
    base, database = demo
    posted = httpx.post(
        f"{base}/admin/servers/deploy-with-agent", json={"name": "web-1"}, headers=AUTH
    )
    assert posted.status_code == 202
    server = poll(
        base + posted.headers["location"],
        lambda b: (b.get("lastDeployment") or {}).get("state") == "succeeded",
    )
    assert server["status"] == "provisioning"
    assert server["agent"]["name"] == "agent-web-1"
    assert re.fullmatch(r"\d+", server["id"])
    assert "agent-server-server-row created" in server["lastDeployment"]["outputTail"]

    check = subprocess.run(
        [sys.executable, "-m", "citrus_deploy", "service", "stale-check", "--timeout", "0"],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "1 agent(s) failed, 1 server(s) failed" in check.stdout

    after = httpx.get(base + posted.headers["location"], headers=AUTH).json()
    assert (after["status"], after["agent"]["status"]) == ("failed", "failed")
