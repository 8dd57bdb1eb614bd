"""The boot harness itself: the stand-ins, a failing boot, a stuck boot.

These prove the harness can tell a working boot from a broken one before the real boot tests
(test_boot.py) rely on it. Timings are printed (`pytest -s`) for the record.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.boot.old_script import render_old_script
from tests.boot.runner import BootTimeout, Machine
from tests.boot.standins.gitserver import AGENT_SOURCE, GitServer
from tests.boot.standins.hub import Hub

STANDINS = Path(__file__).resolve().parent / "standins"
TARBALL = AGENT_SOURCE / "vendor" / "citrus-ws-1.0.0.tgz"

NewAgent = Callable[[], tuple[str, str]]
AgentStatus = Callable[[str], str | None]


def install_agent_without_npm(directory: Path) -> None:
    """What `npm ci` does for the stand-in's one dependency: unpack the vendored tarball."""
    target = directory / "node_modules" / "citrus-ws"
    target.mkdir(parents=True)
    subprocess.run(
        ["tar", "-xzf", str(directory / "vendor" / TARBALL.name), "-C", str(target),
         "--strip-components=1"],
        check=True,
    )  # fmt: skip


# -- the stand-ins, without a machine ------------------------------------------------------------


def test_vendored_tarball_is_built_from_the_source_and_locked() -> None:
    """The committed tarball and lock match standins/citrus-ws (to rebuild: standins/README.md)."""
    with tarfile.open(TARBALL) as tar:
        for name in ("index.js", "package.json"):
            member = tar.extractfile(f"package/{name}")
            assert member is not None
            assert member.read() == (STANDINS / "citrus-ws" / name).read_bytes(), name
    digest = base64.b64encode(hashlib.sha512(TARBALL.read_bytes()).digest()).decode()
    assert f'"integrity": "sha512-{digest}"' in (AGENT_SOURCE / "package-lock.json").read_text()


def test_git_server_demands_the_token(tmp_path: Path, github_token: str) -> None:
    with GitServer(github_token) as git:
        env = {"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        as_user = git.url.replace("http://", f"http://{github_token}@")
        as_password = git.url.replace("http://", f"http://x-access-token:{github_token}@")
        wrong = git.url.replace("http://", "http://x-access-token:ghp_wrong@")
        for n, url in enumerate((as_user, as_password)):
            subprocess.run(["git", "clone", "-q", url, str(tmp_path / str(n))], env=env, check=True)
            assert (tmp_path / str(n) / "index.js").read_bytes() == (
                AGENT_SOURCE / "index.js"
            ).read_bytes()
        denied = subprocess.run(
            ["git", "clone", "-q", wrong, str(tmp_path / "x")], env=env, capture_output=True
        )
        assert denied.returncode != 0
        assert [r.authorized for r in git.requests if r.credentials][-1] is False
        assert git.authorized
        assert all(r.credentials for r in git.authorized)


def test_agent_standin_authenticates_and_hub_refuses_a_wrong_key(
    tmp_path: Path, hub: Hub, new_agent: NewAgent, agent_status: AgentStatus
) -> None:
    if subprocess.run(["node", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no node on the host")
    good, bad = new_agent(), new_agent()
    procs, logs = [], []
    for n, (agent_id, key) in enumerate((good, (bad[0], "0" * 64))):
        directory = tmp_path / str(n)
        subprocess.run(["cp", "-r", str(AGENT_SOURCE), str(directory)], check=True)
        install_agent_without_npm(directory)
        (directory / ".env").write_text(
            f"AGENT_ID={agent_id}\nAGENT_KEY={key}\nENGINE_WS_URL={hub.url}\n"
        )
        logs.append(tmp_path / f"agent-{n}.log")
        with logs[-1].open("wb") as out:
            # cwd=/: .env must be found next to index.js, not in the working directory.
            procs.append(
                subprocess.Popen(
                    ["node", str(directory / "index.js")], cwd="/", stdout=out, stderr=out
                )
            )

    def outputs() -> list[str]:
        return [log.read_text() for log in logs]

    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            good_out, bad_out = outputs()
            if "authenticated" in good_out and "refused" in bad_out:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    assert "authenticated" in outputs()[0], outputs()
    assert "refused" in outputs()[1], outputs()
    assert hub.is_online(good[0])
    assert agent_status(good[0]) == "online"
    assert {e.agent_id for e in hub.refused} == {bad[0]}
    assert agent_status(bad[0]) == "offline"
    assert good[1] not in outputs()[0], "the agent logged its key"


def test_agent_standin_exits_without_its_env(tmp_path: Path) -> None:
    if subprocess.run(["node", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no node on the host")
    subprocess.run(["cp", "-r", str(AGENT_SOURCE), str(tmp_path / "a")], check=True)
    install_agent_without_npm(tmp_path / "a")
    (tmp_path / ".env").write_text("AGENT_ID=x\nAGENT_KEY=y\nENGINE_WS_URL=ws://127.0.0.1:9\n")
    proc = subprocess.run(
        ["node", "index.js"], cwd=tmp_path / "a", capture_output=True, text=True, timeout=10
    )
    assert proc.returncode != 0
    assert "cannot read" in proc.stderr


def test_old_script_fills_every_placeholder() -> None:
    script = render_old_script(
        github_token="ghp_T", agent_id="A", agent_key="K", engine_ws_url="ws://h", repo="h/r.git"
    )
    assert "git clone https://$GITHUB_TOKEN@h/r.git /opt/citrus-agent" in script
    assert "GITHUB_TOKEN=ghp_T\n" in script
    assert not re.search(r"@@[A-Z_]+@@", script)


# -- booting -------------------------------------------------------------------------------------


@pytest.mark.boot
def test_failing_user_data_is_reported() -> None:
    with Machine("warm") as machine:
        result = machine.boot("#!/bin/bash\necho about-to-fail\nexit 3\n", timeout=60)
        print(f"\ntrivial boot: cloud-init done {result.cloud_init_seconds:.1f} s")
    assert result.errors, "a failing script must show in cloud-init's result"
    assert "about-to-fail" in result.cloud_init_output_log


@pytest.mark.boot
def test_stuck_boot_fails_within_its_bound() -> None:
    started = time.monotonic()
    with Machine("warm") as machine, pytest.raises(BootTimeout) as caught:
        machine.boot("#!/bin/bash\necho stuck-here\nsleep 600\n", timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 10 + 35, f"took {elapsed:.0f} s"
    assert "stuck-here" in str(caught.value), "the error must show the logs"
    assert not caught.value.result.cloud_init_done
