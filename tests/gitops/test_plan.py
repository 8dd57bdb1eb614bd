"""make_plan against deployed state, on real Git repositories; and the `plan` command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citrus_deploy.gitops.cli import main
from citrus_deploy.gitops.fleet import read_fleet
from citrus_deploy.gitops.plan import Plan, ServerPlan, forces_replace, make_plan
from citrus_deploy.program.component import REPLACE_KEYS
from citrus_deploy.store.ownership import Deployed
from tests.conftest import insert_server
from tests.gitops.conftest import FleetRepo, checkout_of_the_program

REPO = "example/fleet"
PROGRAM = "a" * 64


def deployed(name: str, managed_by: str | None = "gitops", **fields: Any) -> Deployed:
    values: dict[str, Any] = {
        "name": name,
        "managed_by": managed_by,
        "repository": REPO if managed_by == "gitops" else None,
        "server_status": "active",
        "agent_status": "online",
        "droplet_id": "1000",
        "applied_config": None,
        "applied_commit": None,
        "applied_program": None,
        "attempted_commit": None,
        "last_kind": "up",
        "last_state": "succeeded",
        "last_error": None,
        "active": False,
    }
    values.update(fields)
    return Deployed(**values)


def plan_of(repo: FleetRepo, state: dict[str, Deployed], program: str = PROGRAM) -> Plan:
    fleet = read_fleet(repo.fleet, display="fleet")
    commit = repo.git("rev-parse", "HEAD").strip()
    return make_plan(fleet, state, repository=REPO, commit=commit, program_hash=program)


def applied(plan: Plan) -> dict[str, Deployed]:
    """What the service records once `apply` of this plan succeeded everywhere."""
    state = {}
    for s in plan.servers:
        if s.action in ("create", "update", "replace", "unchanged"):
            state[s.name.lower()] = deployed(
                s.name,
                applied_config=s.config,
                applied_commit=plan.commit,
                applied_program=plan.program_hash,
                attempted_commit=plan.commit,
            )
    return state


def by_name(plan: Plan) -> dict[str, ServerPlan]:
    return {s.name: s for s in plan.servers}


def changes(server: ServerPlan) -> list[tuple[str, Any, Any, bool]]:
    return [(c.key, c.old, c.new, c.forces_replace) for c in server.changes]


def test_added_changed_removed_renamed_and_untouched_files(fleet_repo: FleetRepo) -> None:
    for name in ("keep", "grow", "move", "gone", "old-name"):
        fleet_repo.write(name, size="s-1vcpu-512mb-10gb", tags=[name])
    fleet_repo.commit("five servers")
    first = plan_of(fleet_repo, {})
    assert {s.action for s in first.servers} == {"create"}
    state = applied(first)

    fleet_repo.write("grow", size="s-1vcpu-1gb", tags=["grow"])
    fleet_repo.write("move", size="s-1vcpu-512mb-10gb", tags=["move"], region="nyc3")
    fleet_repo.remove("gone")
    fleet_repo.rename("old-name", "new-name")
    fleet_repo.write("added", size="s-2vcpu-2gb")
    commit = fleet_repo.commit("change the fleet")

    plan = plan_of(fleet_repo, state)
    assert plan.commit == commit
    servers = by_name(plan)
    assert {name: s.action for name, s in servers.items()} == {
        "added": "create",
        "gone": "destroy",
        "grow": "update",
        "keep": "unchanged",
        "move": "replace",
        "new-name": "create",
        "old-name": "destroy",
    }
    assert changes(servers["grow"]) == [("size", "s-1vcpu-512mb-10gb", "s-1vcpu-1gb", False)]
    assert changes(servers["move"]) == [("region", "sfo3", "nyc3", True)]
    assert servers["move"].reasons == ["region cannot change in place: a new droplet"]
    assert servers["gone"].prune is True
    assert servers["gone"].file is None
    assert servers["gone"].reasons == ["no file Pulumi.gone.yaml in fleet"]
    assert servers["keep"].changes == []
    assert servers["added"].config == {"serverName": "added", "size": "s-2vcpu-2gb"}
    assert plan.summary() == {
        "create": 2,
        "update": 1,
        "replace": 1,
        "destroy": 2,
        "unchanged": 1,
        "error": 0,
    }


def test_a_rename_with_the_same_settings_says_so(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("old-name", size="s-1vcpu-1gb")
    fleet_repo.commit()
    state = applied(plan_of(fleet_repo, {}))
    fleet_repo.rename("old-name", "new-name")
    fleet_repo.commit("rename")
    servers = by_name(plan_of(fleet_repo, state))
    assert servers["old-name"].action == "destroy"
    assert servers["new-name"].action == "create"
    assert servers["new-name"].reasons == [
        "same settings as the removed old-name: a renamed file destroys old-name and creates "
        "new-name (the file name is the server name)"
    ]


def test_a_program_change_marks_every_server_changed(fleet_repo: FleetRepo) -> None:
    for name in ("a", "b", "c"):
        fleet_repo.write(name)
    fleet_repo.commit()
    state = applied(plan_of(fleet_repo, {}))
    assert {s.action for s in plan_of(fleet_repo, state).servers} == {"unchanged"}
    plan = plan_of(fleet_repo, state, program="b" * 64)
    assert [(s.name, s.action) for s in plan.servers] == [
        ("a", "update"),
        ("b", "update"),
        ("c", "update"),
    ]
    assert plan.servers[0].reasons == ["program changed (aaaaaaaaaaaa -> bbbbbbbbbbbb)"]


def test_a_file_for_a_server_made_over_http_is_an_error_and_never_destroyed(
    fleet_repo: FleetRepo,
) -> None:
    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.commit()
    state = {
        "web-1": deployed("web-1", "http", region="sfo3", size="s-1vcpu-512mb-10gb"),
        "api-1": deployed("api-1", "http"),
        "hand-1": deployed("hand-1", "manual"),
        "other-1": deployed("other-1", "gitops", repository="someone/else"),
    }
    plan = plan_of(fleet_repo, state)
    assert [(s.name, s.action, s.errors) for s in plan.servers] == [
        (
            "web-1",
            "error",
            ["managed by http; add `gitops:adopt: true` to the file to take it over"],
        )
    ]
    # No file for api-1, hand-1, other-1 either: they are someone else's, never a destroy.
    fleet_repo.remove("web-1")
    fleet_repo.commit("remove")
    assert plan_of(fleet_repo, state).servers == []


def test_a_file_for_another_repositorys_server_is_an_error(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("web-1")
    fleet_repo.commit()
    state = {"web-1": deployed("web-1", "gitops", repository="someone/else")}
    (server,) = plan_of(fleet_repo, state).servers
    assert server.errors == [
        "managed by gitops of someone/else; add `gitops:adopt: true` to the file to take it over"
    ]


def test_an_adopting_file_takes_over_an_http_server(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("web-1", size="s-1vcpu-1gb", **{"gitops:adopt": True})
    fleet_repo.write("web-2", size="s-1vcpu-512mb-10gb", region="nyc3", **{"gitops:adopt": True})
    fleet_repo.write("web-3", **{"gitops:adopt": True})
    fleet_repo.commit()
    state = {
        name: deployed(name, "http", region="sfo3", size="s-1vcpu-512mb-10gb")
        for name in ("web-1", "web-2")
    }
    state["web-3"] = deployed("web-3", "manual", region="sfo3", size="s-1vcpu-512mb-10gb")
    servers = by_name(plan_of(fleet_repo, state))
    assert servers["web-1"].action == "update"
    assert servers["web-1"].adopt is True
    assert servers["web-1"].reasons == ["adopts a server managed by http"]
    assert changes(servers["web-1"]) == [("size", "s-1vcpu-512mb-10gb", "s-1vcpu-1gb", False)]
    assert servers["web-2"].action == "replace"
    assert changes(servers["web-2"]) == [("region", "sfo3", "nyc3", True)]
    # Nothing differs that we know of, but GitOps must still run an `up` to own it.
    assert servers["web-3"].action == "update"
    assert servers["web-3"].reasons == ["adopts a server managed by manual"]
    assert servers["web-3"].changes == []


def test_values_are_compared_as_the_program_sees_them(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("a", region="sfo3", monitoring="true", tags=[])
    fleet_repo.write("b", size="s-1vcpu-1gb")
    fleet_repo.commit()
    state = {
        # absent vs Pulumi.yaml's default, "true" vs true, [] vs absent: all the same.
        "a": deployed(
            "a", applied_config={"serverName": "a", "monitoring": True}, applied_program=PROGRAM
        ),
        "b": deployed(
            "b",
            applied_config={
                "serverName": "b",
                "size": "s-1vcpu-1gb",
                "agentName": "agent-b",
                "region": "sfo3",
            },
            applied_program=PROGRAM,
        ),
    }
    assert [(s.name, s.action) for s in plan_of(fleet_repo, state).servers] == [
        ("a", "unchanged"),
        ("b", "unchanged"),
    ]


def test_replace_forcing_keys() -> None:
    assert {"region", "image", "sshKeys", "vpcUuid", "monitoring"} == REPLACE_KEYS
    assert forces_replace("region", {})
    assert not forces_replace("size", {})
    assert not forces_replace("agentRepoRef", {})
    assert forces_replace("agentRepoRef", {"replaceOnBootScriptChange": True})
    assert forces_replace("engineWsUrl", {"replaceOnBootScriptChange": "true"})
    assert not forces_replace("tags", {"replaceOnBootScriptChange": True})


def test_a_boot_script_change_replaces_only_when_the_stack_opts_in(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("a", agentRepoRef="main")
    fleet_repo.write("b", agentRepoRef="main", replaceOnBootScriptChange=True)
    fleet_repo.commit()
    state = applied(plan_of(fleet_repo, {}))
    fleet_repo.write("a", agentRepoRef="v2")
    fleet_repo.write("b", agentRepoRef="v2", replaceOnBootScriptChange=True)
    fleet_repo.commit()
    servers = by_name(plan_of(fleet_repo, state))
    assert servers["a"].action == "update"
    assert servers["b"].action == "replace"
    assert servers["b"].reasons == ["agentRepoRef cannot change in place: a new droplet"]


def test_a_file_with_errors_is_an_error_entry_not_a_destroy(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.commit()
    state = applied(plan_of(fleet_repo, {}))
    fleet_repo.write("web-1", size="BIG")
    fleet_repo.write_text("web-2.yml", "config: {}\n")
    fleet_repo.commit()
    plan = plan_of(fleet_repo, state)
    assert [(s.name, s.action) for s in plan.servers] == [("web-1", "error")]
    assert plan.errors == [
        "fleet/web-2.yml: not a stack file: a fleet file is named Pulumi.<server name>.yaml"
    ]
    assert plan.summary()["error"] == 2
    assert plan.has_errors


def _replace_with(kind: str, path: Path) -> None:
    path.unlink()
    if kind == "a symlink out of the repository":
        outside = path.parent.parent.parent / "outside.yaml"
        outside.write_text("config:\n  citrus-deploy:size: s-8vcpu-16gb\n")
        path.symlink_to(outside)
    elif kind == "a dangling symlink":
        path.symlink_to("/nonexistent/Pulumi.web-1.yaml")
    elif kind == "a symlink loop":
        path.symlink_to(path.name)
    elif kind == "a directory":
        path.mkdir()
        (path / "x").write_text("x\n")  # Git keeps no empty folder
    elif kind == "an empty file":
        path.write_text("")
    else:  # a second config block, once hiding `gitops:adopt: true`
        path.write_text("config:\n  citrus-deploy:size: s-1vcpu-1gb\nconfig: {}\n")


@pytest.mark.parametrize(
    "kind",
    [
        "a symlink out of the repository",
        "a dangling symlink",
        "a symlink loop",
        "a directory",
        "an empty file",
        "a second config block",
    ],
)
def test_a_server_file_that_cannot_be_read_is_an_error_never_a_destroy(
    fleet_repo: FleetRepo, kind: str
) -> None:
    """Issue 17: a dangling link or a folder named Pulumi.web-1.yaml was skipped, so web-1
    was planned as a destroy; a link out of the repository made the plan of one commit change;
    an empty file replaced the server with the defaults."""
    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.write("web-2", size="s-1vcpu-1gb")
    fleet_repo.commit()
    state = applied(plan_of(fleet_repo, {}))
    _replace_with(kind, fleet_repo.path("web-1"))
    fleet_repo.commit(f"web-1 becomes {kind}")

    plan = by_name(plan_of(fleet_repo, state))

    assert (plan["web-1"].action, plan["web-1"].prune) == ("error", False)
    assert plan["web-1"].errors[0].startswith("fleet/Pulumi.web-1.yaml")
    assert plan["web-2"].action == "unchanged"


def test_a_failed_first_apply_is_retried_and_a_failed_last_one_redeployed(
    fleet_repo: FleetRepo,
) -> None:
    fleet_repo.write("a")
    fleet_repo.write("b")
    fleet_repo.commit()
    state = applied(plan_of(fleet_repo, {}))
    state["a"] = deployed("a", server_status=None, last_state="failed", attempted_commit="c" * 40)
    state["b"] = replace(state["b"], last_state="failed")
    servers = by_name(plan_of(fleet_repo, state))
    assert servers["a"].action == "create"
    assert servers["a"].reasons == [
        "no successful GitOps apply of this server yet (last attempt: commit cccccccccccc)"
    ]
    assert servers["b"].action == "update"
    assert servers["b"].reasons == ["the last deployment failed"]


def test_a_case_only_difference_from_the_deployed_name_is_an_error(fleet_repo: FleetRepo) -> None:
    fleet_repo.write("Web-1")
    fleet_repo.commit()
    (server,) = plan_of(fleet_repo, {"web-1": deployed("web-1", applied_config={})}).servers
    assert server.action == "error"
    assert server.errors[0].startswith("the server is deployed as 'web-1'")


# The command, against a real database ---------------------------------------------------------


def run_plan(
    repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, conninfo: str | None, *args: str
) -> int:
    monkeypatch.chdir(repo.root)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    monkeypatch.delenv("CITRUS_GITOPS_REPOSITORY", raising=False)
    if conninfo is None:
        monkeypatch.delenv("DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("DATABASE_URL", conninfo)
    return main(["plan", "fleet", *args])


def test_plan_refuses_uncommitted_changes_naming_them(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_repo.write("web-1")
    fleet_repo.write("web-2")
    fleet_repo.commit()
    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.remove("web-2")
    fleet_repo.write("web-3")
    (fleet_repo.root / "elsewhere.txt").write_text("outside the fleet folder\n")
    assert run_plan(fleet_repo, monkeypatch, None) == 2
    err = capsys.readouterr().err
    assert err == (
        "gitops plan: uncommitted changes in the fleet folder: fleet/Pulumi.web-1.yaml, "
        "fleet/Pulumi.web-2.yaml, fleet/Pulumi.web-3.yaml (a plan is made for a commit)\n"
    )


def test_plan_prints_uncommitted_file_names_escaped(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newline in a name would start a line of its own in the CI log: `::error::...`."""
    fleet_repo.write_text("Pulumi.web\n::error::pwned.yaml", "config: {}\n")
    assert run_plan(fleet_repo, monkeypatch, None) == 2
    assert capsys.readouterr().err == (
        "gitops plan: uncommitted changes in the fleet folder: "
        "fleet/Pulumi.web\\n::error::pwned.yaml (a plan is made for a commit)\n"
    )


def test_plan_refuses_uncommitted_program_changes(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan hashes the checkout's program: an edit not in the commit would be deployed
    under a commit that does not hold it."""
    package = checkout_of_the_program(fleet_repo)
    with (package / "program" / "component.py").open("a") as file:
        file.write("# an edit nobody committed\n")
    (package / "errors.py").write_text("")
    (package / "program" / "templates" / "extra.sh.j2").write_text("echo new\n")
    assert run_plan(fleet_repo, monkeypatch, None) == 2
    assert capsys.readouterr().err == (
        "gitops plan: uncommitted changes in the program: src/citrus_deploy/errors.py, "
        "src/citrus_deploy/program/component.py, "
        "src/citrus_deploy/program/templates/extra.sh.j2 (a plan is made for a commit)\n"
    )


def test_plan_refuses_an_ignored_file_the_program_hash_reads(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    package = checkout_of_the_program(fleet_repo)
    (fleet_repo.root / ".gitignore").write_text("*.local\n")
    fleet_repo.commit("ignore local files")
    (package / "program" / "settings.local").write_text("hashed all the same\n")
    assert run_plan(fleet_repo, monkeypatch, None) == 2
    assert "in the program: src/citrus_deploy/program/settings.local" in capsys.readouterr().err


def test_plan_ignores_what_is_not_the_program(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Compiled files, and the service's code beside the program, are not hashed."""
    package = checkout_of_the_program(fleet_repo)
    (package / "web" / "app.py").write_text("# edited, not the program\n")
    (package / "program" / "__pycache__").mkdir(exist_ok=True)
    (package / "program" / "__pycache__" / "component.cpython-311.pyc").write_bytes(b"\0")
    assert run_plan(fleet_repo, monkeypatch, None) == 2  # then it needs the database
    assert "DATABASE_URL is not set" in capsys.readouterr().err


def test_plan_needs_a_database_url(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_plan(fleet_repo, monkeypatch, None) == 2
    assert "DATABASE_URL is not set" in capsys.readouterr().err


def test_plan_outside_a_git_repository_is_a_usage_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fleet").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert main(["plan", "fleet"]) == 2
    assert "rev-parse --show-toplevel" in capsys.readouterr().err


def test_plan_against_the_database(
    fleet_repo: FleetRepo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database: str,
) -> None:
    """An HTTP-made server (a servers row and a succeeded http up) blocks its file."""
    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.write("made-by-hand", size="s-1vcpu-1gb")
    commit = fleet_repo.commit()
    insert_server(database, "made-by-hand")
    json_path = fleet_repo.root.parent / "plan.json"
    code = run_plan(
        fleet_repo, monkeypatch, database, "--json", str(json_path), "--repository", REPO
    )
    out = capsys.readouterr()
    assert code == 1, out.err
    plan = json.loads(json_path.read_text())
    assert plan["commit"] == commit
    assert plan["repository"] == REPO
    assert plan["fleet"] == "fleet"
    assert len(plan["programHash"]) == 64
    assert [(s["name"], s["action"], s["managedBy"]) for s in plan["servers"]] == [
        ("made-by-hand", "error", "manual"),
        ("web-1", "create", None),
    ]
    assert "### Errors (1)" in out.out
    assert f"commit `{commit[:12]}`" in out.out
    assert out.err.endswith("1 create, 1 error\n")


def test_plan_of_a_clean_fleet_exits_0_with_markdown_on_stdout(
    fleet_repo: FleetRepo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database: str,
) -> None:
    fleet_repo.write("web-1")
    fleet_repo.commit()
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo/fleet")
    monkeypatch.chdir(fleet_repo.root)
    monkeypatch.setenv("DATABASE_URL", database)
    assert main(["plan", "fleet", "--markdown", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## GitOps plan for `fleet`\n\nRepository `octo/fleet`")
    assert "- 1 server created" in out


def test_plan_with_an_unreachable_database_is_a_usage_error(
    fleet_repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://someone:sekrit-pass@127.0.0.1:1/nothing"
    assert run_plan(fleet_repo, monkeypatch, url) == 2
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/nothing" in err
    assert "sekrit-pass" not in err


def test_plan_reads_what_gitops_applied(
    fleet_repo: FleetRepo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database: str,
) -> None:
    """The service's record (deployments rows) is what the files are compared with."""
    from citrus_deploy.engine.fingerprint import PACKAGE, program_hash

    fleet_repo.write("web-1", size="s-1vcpu-1gb")
    fleet_repo.write("web-2", size="s-1vcpu-1gb")
    commit = fleet_repo.commit()
    rows = [
        ("web-1", "gitops", REPO, {"serverName": "web-1", "size": "s-1vcpu-1gb"}),
        ("web-2", "gitops", REPO, {"serverName": "web-2"}),
        ("gone", "gitops", REPO, {"serverName": "gone"}),
        ("api-1", "http", None, {"serverName": "api-1", "agentName": "agent-api-1"}),
    ]
    with psycopg.connect(database) as conn:
        for name, source, repository, config in rows:
            conn.execute(
                "INSERT INTO deployments (server_name, kind, state, config, source, repository,"
                " commit, program_hash, finished_at) "
                "VALUES (%s, 'up', 'succeeded', %s, %s, %s, %s, %s, now())",
                (
                    name,
                    json.dumps(config),
                    source,
                    repository,
                    commit if source == "gitops" else None,
                    program_hash(PACKAGE) if source == "gitops" else None,
                ),
            )
    assert run_plan(fleet_repo, monkeypatch, database, "--json", "-", "--repository", REPO) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["action"]) for s in plan["servers"]] == [
        ("gone", "destroy"),
        ("web-1", "unchanged"),
        ("web-2", "update"),
    ]
    assert plan["servers"][2]["changes"] == [
        {"forcesReplace": False, "key": "size", "new": "s-1vcpu-1gb", "old": "s-1vcpu-512mb-10gb"}
    ]
