"""GitOps through the real deployer: `apply` and `plan --preview` with workers that run the
Automation API over the stand-in CLI (standin.cli), as in production.

Real Git repository, PostgreSQL and worker processes; the CLI is the stand-in (the real CLI's
files, typed config, events and exit codes over the engine stand-in; DigitalOcean faked);
agents come online through the hub stand-in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citrus_deploy.gitops.apply import (
    blast_radius_error,
    engine_replaces,
    stale_plan_error,
    targets_of,
)
from citrus_deploy.gitops.plan import ServerPlan
from citrus_deploy.standin.fakes import droplets
from tests.conftest import Cli
from tests.gitops.conftest import REPO, FleetRepo, Hub, apply, gitops, make_fleet

FINGERPRINT = "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"


@pytest.fixture
def cli_env(
    cli: Cli, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    values = {
        "CITRUS_DEPLOYER": "automation",
        "CITRUS_STATE_DIR": str(tmp_path / "citrus-state"),
        "GITHUB_TOKEN": "ghp_" + "g" * 36,
        "ENGINE_WS_URL": "wss://engine.citrushost.io",
        "DIGITALOCEAN_TOKEN": "dop_v1_" + "d" * 64,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**env, **values}


def test_a_fleet_file_with_ssh_keys_and_tags_is_applied(
    cli_env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    tmp_path: Path,
) -> None:
    fleet_repo.write("web-1", size="s-1vcpu-1gb", sshKeys=["12345", FINGERPRINT], tags=["web"])
    fleet_repo.commit("add web-1")

    code, out, _ = apply(capsys, fleet_repo, "--workers", "1", "--agent-timeout", "30")

    assert code == 0, out
    (droplet,) = droplets(tmp_path / "state" / "digitalocean.json").values()
    assert (droplet["sshKeys"], droplet["tags"], droplet["size"]) == (
        ["12345", FINGERPRINT],
        ["web"],
        "s-1vcpu-1gb",
    )


def test_plan_preview_shows_a_moved_server_as_a_replace(
    cli_env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
) -> None:
    make_fleet(fleet_repo, "web-1", "web-2")
    assert apply(capsys, fleet_repo, "--workers", "1", "--agent-timeout", "30")[0] == 0
    fleet_repo.write("web-1", size="s-1vcpu-1gb", region="ams3")
    fleet_repo.write("web-2", size="s-2vcpu-2gb")
    fleet_repo.commit("move web-1, resize web-2")

    code, out, err = gitops(
        capsys, "plan", str(fleet_repo.fleet), "--repository", REPO, "--preview",
        "--workers", "1", "--json", "-",
    )  # fmt: skip

    assert code == 0, err
    servers = {s["name"]: s for s in json.loads(out)["servers"]}
    moved, resized = servers["web-1"]["preview"], servers["web-2"]["preview"]
    assert moved["state"] == "succeeded", moved
    assert (moved["summary"]["replace"], resized["summary"]["replace"]) == (1, 0)
    droplet = [s for s in moved["steps"] if s["type"] == "digitalocean:index/droplet:Droplet"]
    assert [(s["op"], s["diffs"]) for s in droplet] == [("replace", ["region"])]
    assert (servers["web-1"]["action"], servers["web-2"]["action"]) == ("replace", "update")


def _server(name: str) -> ServerPlan:
    return ServerPlan(name, "update", f"fleet/Pulumi.{name}.yaml", {"serverName": name}, "gitops")


def test_the_blast_radius_counts_a_replace_only_the_engine_foresaw() -> None:
    """A server the plan's own rules only update (a program change, a provider's force-new
    field) that the engine's preview replaces is a replace for the guard."""
    replacing = {"state": "succeeded", "summary": {"replace": 1}, "steps": []}
    replacing["steps"] = [{"urn": "urn:pulumi:s::p::t::agent-server-droplet", "op": "replace"}]
    servers = [_server(f"web-{i}") for i in range(1, 6)]
    for server in servers[:4]:
        server.take_preview(replacing)
    servers[4].take_preview({"state": "succeeded", "summary": {}, "steps": []})
    given = {"commit": "c", "repository": REPO, "servers": [s.to_json() for s in servers]}
    fresh = {
        "commit": "c",
        "repository": REPO,
        "servers": [{**s.to_json(), "action": "update", "engineReplace": False} for s in servers],
    }

    assert [s.action for s in servers] == ["replace"] * 4 + ["update"]
    assert "the engine's preview replaces agent-server-droplet" in servers[0].reasons
    assert stale_plan_error(given, fresh) is None  # the same plan, seen by the engine
    ups, _destroys, _skipped = targets_of(fresh, prune=False)
    assert blast_radius_error(ups, 5, None) is None  # the plan's own rules: 5 updates
    refused = blast_radius_error(engine_replaces(given, ups), 5, None)
    assert refused is not None
    assert "destroys or replaces 4 servers" in refused
