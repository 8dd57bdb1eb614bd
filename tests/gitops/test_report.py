"""The plan's markdown (a PR comment: under 60,000 characters) and JSON (golden, stable)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from citrus_deploy.gitops.fleet import read_fleet
from citrus_deploy.gitops.plan import Change, Plan, ServerPlan, make_plan
from citrus_deploy.gitops.report import MARKDOWN_LIMIT, to_json, to_markdown
from citrus_deploy.store.ownership import Deployed
from tests.gitops.test_plan import deployed

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "plan.json"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PROGRAM = "ab" * 32
OLD_PROGRAM = "cd" * 32


def plan_of(servers: list[ServerPlan], errors: list[str] | None = None) -> Plan:
    return Plan("example/fleet", COMMIT, "fleet", PROGRAM, servers, errors or [])


def update(name: str, key: str, old: Any, new: Any, forces: bool = False) -> ServerPlan:
    return ServerPlan(
        name=name,
        action="replace" if forces else "update",
        file=f"fleet/Pulumi.{name}.yaml",
        config={"serverName": name, key: new},
        managed_by="gitops",
        changes=[Change(key, old, new, forces)],
    )


def test_5000_changed_servers_stay_under_the_limit_with_the_summary_first() -> None:
    servers = [
        update(f"web-{i:04d}", "size", "s-1vcpu-512mb-10gb", "s-1vcpu-1gb") for i in range(4997)
    ]
    servers += [update(f"db-{i}", "region", "sfo3", "nyc3", forces=True) for i in range(3)]
    servers += [
        ServerPlan(f"old-{i}", "destroy", None, {}, "gitops", reasons=["no file"], prune=True)
        for i in range(40)
    ]
    text = to_markdown(plan_of(servers))
    assert len(text) <= MARKDOWN_LIMIT
    lines = text.splitlines()
    summary = lines[lines.index("### Summary") + 2 : lines.index("### Summary") + 5]
    assert summary == [
        "- 4997 servers: size s-1vcpu-512mb-10gb -> s-1vcpu-1gb",
        "- 3 servers replaced: region sfo3 -> nyc3",
        "- 40 servers destroyed (file removed; only with `apply --prune`)",
    ]
    for i in range(40):  # every destroy is named
        assert f"- `old-{i}`" in lines
    assert "| `db-0` | replace | region `sfo3` -> `nyc3` | — |" in lines
    detailed = sum(1 for line in lines if line.startswith("| `"))
    assert 100 < detailed < 5000
    assert lines[-1] == (
        f"_{5000 - detailed} more entries left out to keep this under 60,000 characters: "
        "the JSON artifact holds every server._"
    )


def test_5000_errors_stay_under_the_limit() -> None:
    servers = [
        ServerPlan(
            f"web-{i:04d}",
            "error",
            f"fleet/Pulumi.web-{i:04d}.yaml",
            {},
            None,
            errors=[f"fleet/Pulumi.web-{i:04d}.yaml:2: citrus-deploy:size: must be a size slug"],
        )
        for i in range(5000)
    ]
    text = to_markdown(plan_of(servers))
    assert len(text) <= MARKDOWN_LIMIT
    assert "- 5000 servers with errors" in text
    assert "- `fleet/Pulumi.web-0000.yaml:2: citrus-deploy:size: must be a size slug`" in text
    assert text.rstrip().endswith("the JSON artifact holds every server._")


def test_a_small_plan_is_shown_whole_without_a_left_out_line() -> None:
    text = to_markdown(plan_of([update("web-1", "size", "a", "b")]))
    assert "left out" not in text
    assert "| `web-1` | update | size `a` -> `b` | — |" in text


def test_no_secret_reaches_the_markdown_even_in_an_error() -> None:
    token = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    servers = [
        ServerPlan(
            "web-1",
            "error",
            "fleet/Pulumi.web-1.yaml",
            {},
            None,
            errors=[f"fleet/Pulumi.web-1.yaml:2: x: {token} and https://u:pw-secret@h/x"],
        )
    ]
    text = to_markdown(plan_of(servers, [f"odd: {token}"]))
    assert token not in text
    assert "pw-secret" not in text
    assert "[redacted]" in text


def test_markdown_escapes_what_a_file_could_inject() -> None:
    server = update("web-1", "digitalocean:apiEndpoint", None, "https://x/`|<img src=x>")
    text = to_markdown(plan_of([server]))
    outside_code = text.split("`")[::2]
    assert not [part for part in outside_code if "<img" in part]
    row = next(line for line in text.splitlines() if line.startswith("| `web-1`"))
    assert row.count(" | ") == 3  # the pipe in the value does not add a column
    assert "`" not in row.split("`https://x/")[1].split("`")[0]


def golden_plan(tmp_path: Path) -> Plan:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    files = {
        "Pulumi.web-1.yaml": "config:\n  citrus-deploy:size: s-1vcpu-1gb\n",
        "Pulumi.web-2.yaml": "config:\n  citrus-deploy:region: nyc3\n",
        "Pulumi.web-3.yaml": "config:\n  citrus-deploy:tags: [web]\n",
        "Pulumi.new-1.yaml": "config:\n  citrus-deploy:monitoring: true\n",
        "Pulumi.api-1.yaml": "config:\n  citrus-deploy:size: s-2vcpu-2gb\n",
        "Pulumi.api-2.yaml": "config:\n  citrus-deploy:size: s-2vcpu-2gb\n  gitops:adopt: true\n",
        "Pulumi.bad-1.yaml": "config:\n  citrus-deploy:size: BIG\n",
        "stray.yaml": "config: {}\n",
    }
    for name, text in files.items():
        (fleet / name).write_text(text)
    state: dict[str, Deployed] = {
        "web-1": deployed("web-1", applied_config={"serverName": "web-1"}, applied_program=PROGRAM),
        "web-2": deployed("web-2", applied_config={"serverName": "web-2"}, applied_program=PROGRAM),
        "web-3": deployed(
            "web-3",
            applied_config={"serverName": "web-3", "tags": ["web"]},
            applied_program=OLD_PROGRAM,
        ),
        "gone-1": deployed(
            "gone-1", applied_config={"serverName": "gone-1"}, applied_program=PROGRAM
        ),
        "api-1": deployed("api-1", "http", region="sfo3", size="s-1vcpu-512mb-10gb"),
        "api-2": deployed("api-2", "http", region="sfo3", size="s-1vcpu-512mb-10gb"),
        "hand-1": deployed("hand-1", "manual"),
    }
    return make_plan(
        read_fleet(fleet, display="fleet"),
        state,
        repository="example/fleet",
        commit=COMMIT,
        program_hash=PROGRAM,
    )


def test_json_matches_the_golden_file(tmp_path: Path) -> None:
    text = to_json(golden_plan(tmp_path))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_json_is_stable_and_sorted(tmp_path: Path) -> None:
    plan = golden_plan(tmp_path)
    text = to_json(plan)
    data = json.loads(text)
    lines = text.splitlines()
    # One server per line, each with its keys sorted, so a diff of two plans reads per server.
    server_lines = lines[lines.index('"servers": [') + 1 : lines.index("],")]
    assert [json.loads(line.rstrip(","))["name"] for line in server_lines] == [
        s["name"] for s in data["servers"]
    ]
    assert all(
        line.rstrip(",")
        == json.dumps(
            json.loads(line.rstrip(",")),
            sort_keys=True,
            ensure_ascii=False,
            separators=(", ", ": "),
        )
        for line in server_lines
    )
    assert list(data) == sorted(data)
    assert [s["name"] for s in data["servers"]] == sorted(s["name"] for s in data["servers"])
    assert data["commit"] == COMMIT
    plan.servers.reverse()
    assert to_json(plan) == text
