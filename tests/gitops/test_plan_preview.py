"""`plan --preview`: the engine's own preview of each changed server, run by the queue's workers.

Real Git repository, PostgreSQL and workers (`plan --workers 1`) under the engine stand-in;
agents come online through the hub stand-in (conftest.Hub).
"""

from __future__ import annotations

import json

import pytest

from tests.gitops.conftest import REPO, FleetRepo, Hub, apply, gitops, make_fleet, query


def test_preview_shows_what_the_engine_would_do_to_each_changed_server(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
) -> None:
    make_fleet(fleet_repo, "web-1", "web-2", "web-3")
    assert apply(capsys, fleet_repo, "--workers", "1", "--agent-timeout", "20")[0] == 0
    fleet_repo.write("web-1", size="s-2vcpu-2gb")  # resized in place
    fleet_repo.write("web-2", size="s-1vcpu-1gb", region="nyc3")  # a new droplet
    fleet_repo.write("web-4", size="s-1vcpu-1gb")  # a new server
    fleet_repo.commit("resize web-1, move web-2, add web-4")

    code, out, err = gitops(
        capsys, "plan", str(fleet_repo.fleet), "--repository", REPO, "--preview",
        "--workers", "1", "--json", "-",
    )  # fmt: skip
    assert code == 0, err
    servers = {s["name"]: s for s in json.loads(out)["servers"]}
    assert {name: s["action"] for name, s in servers.items()} == {
        "web-1": "update",
        "web-2": "replace",
        "web-3": "unchanged",
        "web-4": "create",
    }
    assert "preview" not in servers["web-3"]  # only changed servers are previewed

    def engine(name: str) -> dict[str, str]:
        preview = servers[name]["preview"]
        assert preview["state"] == "succeeded", preview
        return {step["type"].rsplit(":", 1)[-1]: step["op"] for step in preview["steps"]}

    assert engine("web-1")["Droplet"] == "update"
    assert engine("web-2")["Droplet"] == "replace"
    assert set(engine("web-4").values()) == {"create"}
    droplet = next(s for s in servers["web-1"]["preview"]["steps"] if s["op"] == "update")
    assert droplet["diffs"] == ["size"]
    # A preview changes nothing: no deployment beyond the first apply's three, sizes as they were.
    assert query(env["DATABASE_URL"], "SELECT count(*) FROM deployments") == [(3,)]
    assert query(env["DATABASE_URL"], "SELECT DISTINCT size FROM servers") == [("s-1vcpu-1gb",)]
