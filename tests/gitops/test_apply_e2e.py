"""`apply --workers 2` end to end: 20 stack files become 20 agents + servers rows, all Ready.

Real Git repository, real PostgreSQL, two real `citrus-deploy service worker` processes started
by apply itself (gitops.workers), the engine stand-in; agents come online only through the
hub stand-in (tests.gitops.conftest.Hub, the true boundary).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from citrus_deploy.store import ownership
from tests.gitops.conftest import REPO, FleetRepo, Hub, apply, gitops, make_fleet, query, table

NAMES = tuple(f"web-{i:02d}" for i in range(1, 21))


@pytest.fixture
def timer() -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"took {time.monotonic() - started:.1f}s")


def test_twenty_files_become_twenty_ready_servers(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    tmp_path: Path,
    timer: None,
) -> None:
    conninfo = env["DATABASE_URL"]
    make_fleet(fleet_repo, *NAMES)
    started = time.monotonic()
    code, out, _ = apply(capsys, fleet_repo, "--workers", "2", "--agent-timeout", "30")
    print(f"apply of 20 servers with 2 workers: {time.monotonic() - started:.1f}s")
    assert code == 0, out
    rows = table(out)
    assert sorted(rows) == list(NAMES)
    assert [rows[n][1] for n in NAMES] == ["1"] + ["2"] * 2 + ["3"] * 17
    assert query(conninfo, "SELECT count(*) FROM servers WHERE status = 'active'") == [(20,)]
    assert query(conninfo, "SELECT count(*) FROM agents WHERE status = 'online'") == [(20,)]
    pairs = query(
        conninfo,
        "SELECT s.name, a.name FROM servers s JOIN agents a ON a.id = s.agent_id ORDER BY 1",
    )
    assert pairs == [(n, f"agent-{n}") for n in NAMES]

    status_file = tmp_path / "status.json"
    code, out, _ = gitops(
        capsys, "status", str(fleet_repo.fleet), "--repository", REPO, "--json", str(status_file)
    )
    assert code == 0, out
    head = fleet_repo.git("rev-parse", "HEAD").strip()
    servers = json.loads(status_file.read_text())["servers"]
    assert [(s["name"], s["state"], s["lastAppliedCommit"]) for s in servers] == [
        (n, "Ready", head) for n in NAMES
    ]
    assert "20 Ready" in out


def test_a_failing_server_does_not_stop_the_others_in_its_wave(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    timer: None,
) -> None:
    conninfo = env["DATABASE_URL"]
    hub.refuse = {"web-05"}  # in the last wave (17 servers): 1 failure is under 10%
    make_fleet(fleet_repo, *NAMES)
    started = time.monotonic()
    code, out, _ = apply(capsys, fleet_repo, "--workers", "2", "--agent-timeout", "3")
    print(f"apply of 20 servers, one failing: {time.monotonic() - started:.1f}s")
    assert code == 1
    assert "stopping" not in out
    rows = table(out)
    assert rows["web-05"][1:4] == ["3", rows["web-05"][2], "failed"]
    assert "the agent was not online 3s after the deployment" in out
    others = [n for n in NAMES if n != "web-05"]
    assert [rows[n][3] for n in others] == ["succeeded"] * 19
    with psycopg.connect(conninfo, autocommit=True) as conn:
        deployed = ownership.load_deployed(conn)
        assert (
            ownership.gitops_state(deployed["web-05"]) == "Reconciling"
        )  # still awaiting its agent
        assert {ownership.gitops_state(deployed[n]) for n in others} == {"Ready"}
    assert query(conninfo, "SELECT outcome FROM gitops_applies") == [("failed",)]

    code, out, _ = gitops(capsys, "status", str(fleet_repo.fleet), "--repository", REPO)
    assert "web-05" in out
    assert "19 Ready, 1 Reconciling" in out
