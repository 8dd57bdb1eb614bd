"""The package as a user installs it: `pip install <checkout>` into a fresh virtual environment
outside the repository, then `citrus-deploy service demo` from anywhere, and a deployment
through it. Nothing of the checkout is on the path: what runs is what pip installed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from citrus_deploy.standin.pg import free_port
from tests.paths import REPO


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the checkout installed (the pinned dependencies from
    requirements.txt, as an operator installs it; pip's cache keeps this quick)."""
    root = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", str(REPO / "requirements.txt"), str(REPO)], check=True)
    return root


def _outside_env(tmp: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep} | {"XDG_STATE_HOME": str(tmp)}


def test_the_installed_package_is_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import citrus_deploy; print(citrus_deploy.__file__)"],
        cwd=tmp_path,
        env=_outside_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith(str(venv)), done.stdout
    assert str(REPO) not in done.stdout


@pytest.fixture
def demo(venv: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = _outside_env(tmp_path) | {"CITRUS_PORT": str(port)}
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen(
        [str(venv / "bin" / "citrus-deploy"), "service", "demo"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, (tmp_path / "demo.log").read_text()
        assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
        time.sleep(0.3)
    yield url
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()


def test_the_demo_of_the_installed_package_deploys_a_server(demo: str, tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer dev"}

    answer = httpx.post(
        f"{demo}/admin/servers/deploy-with-agent", json={"name": "web-1"}, headers=auth
    )
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 120
    while True:
        shown = httpx.get(f"{demo}/admin/servers/web-1", headers=auth).json()
        last = shown.get("lastDeployment") or {}
        if last.get("state") in ("succeeded", "failed", "needs_operator"):
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.5)

    assert last["state"] == "succeeded", (last, (tmp_path / "demo.log").read_text()[-3000:])
    assert shown["status"] == "provisioning"  # the droplet is made; its agent is not online
    assert shown["agent"]["id"]
