"""`drift`: a refresh-preview of every GitOps server by the queue's workers, changing nothing.

Real Git repository, PostgreSQL, workers (started by `drift --workers 1`) and the engine
stand-in, whose fake DigitalOcean keeps its droplets in a file the test can edit behind the
engine's back (standin.fakes); agents come online through the hub stand-in (conftest.Hub).
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from citrus_deploy.gitops.drift import describe
from citrus_deploy.standin import fakes
from tests.gitops.conftest import REPO, FleetRepo, Hub, apply, gitops, make_fleet, query


def drift(capsys: pytest.CaptureFixture[str], repo: FleetRepo, *extra: str) -> tuple[int, str, str]:
    return gitops(capsys, "drift", str(repo.fleet), "--repository", REPO, "--workers", "1", *extra)


def test_describe_names_what_drifted() -> None:
    result = {
        "steps": [
            {"urn": "urn:pulumi:s::p::t::web-1", "type": "pulumi:pulumi:Stack", "op": "same"},
            {
                "urn": "urn:pulumi:s::p::digitalocean:index/droplet:Droplet::web-1-droplet",
                "type": "digitalocean:index/droplet:Droplet",
                "op": "delete",
            },
            {
                "urn": "urn:pulumi:s::p::pulumi-python:dynamic:Resource::web-1-server-row",
                "type": "pulumi-python:dynamic:Resource",
                "op": "update",
                "diffs": [{"key": "size", "old": "s-1vcpu-1gb", "new": "s-2vcpu-2gb"}],
            },
        ]
    }
    assert describe(result) == [
        "droplet deleted outside Pulumi",
        "servers row size s-1vcpu-1gb -> s-2vcpu-2gb",
    ]
    assert describe({"steps": [{"urn": "u::x", "type": "t", "op": "same"}]}) == []


def test_drift_sees_a_deleted_droplet_and_a_row_changed_by_hand_and_nothing_else(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    tmp_path: Path,
) -> None:
    conninfo = env["DATABASE_URL"]
    make_fleet(fleet_repo, "web-1", "web-2", "web-3")
    assert apply(capsys, fleet_repo, "--workers", "1", "--agent-timeout", "20")[0] == 0

    code, out, _ = drift(capsys, fleet_repo)
    assert code == 0, out
    assert out.strip() == "3 server(s) checked: 0 drifted"

    cloud = tmp_path / "state" / "test-engine" / "digitalocean.json"
    (droplet_id,) = query(conninfo, "SELECT digital_ocean_id FROM servers WHERE name = 'web-1'")[0]
    data = json.loads(cloud.read_text())
    del data["droplets"][droplet_id]
    cloud.write_text(json.dumps(data))
    assert droplet_id not in fakes.droplets(cloud)
    with psycopg.connect(conninfo) as conn:
        conn.execute("UPDATE servers SET size = 's-8vcpu-16gb' WHERE name = 'web-3'")
    before = fakes.droplets(cloud)

    report = tmp_path / "drift.json"
    code, out, _ = drift(capsys, fleet_repo, "--json", str(report))
    assert code == 1, out
    lines = out.strip().splitlines()
    assert "web-1: droplet deleted outside Pulumi" in lines
    assert "web-3: servers row size s-1vcpu-1gb -> s-8vcpu-16gb" in lines
    assert not any(line.startswith("web-2") for line in lines)
    assert lines[-1] == "3 server(s) checked: 2 drifted"
    saved = json.loads(report.read_text())
    assert [s["name"] for s in saved["servers"] if s["changes"]] == ["web-1", "web-3"]
    # Nothing was changed: not the cloud, not the row, and no deployment ran.
    assert fakes.droplets(cloud) == before
    assert query(conninfo, "SELECT size FROM servers WHERE name = 'web-3'") == [("s-8vcpu-16gb",)]
    assert query(conninfo, "SELECT count(*) FROM deployments") == [(3,)]
