"""`apply` with real Git repositories, real PostgreSQL and a real queue worker (engine stand-in).

What these show: a stale plan is refused; a canary whose agent never comes online stops the
rollout; the blast-radius limit; `--prune` destroys exactly the removed servers and never one
made over HTTP; `--retry-failed` reruns only the failed ones; a busy server fails alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from citrus_deploy.gitops.apply import fresh_plan
from citrus_deploy.gitops.rollout import BUSY
from citrus_deploy.gitops.workers import NoWorkers, ServiceWorkersWatch
from citrus_deploy.store import gitops as gitops_store
from tests.conftest import insert_server
from tests.gitops.conftest import (
    REPO,
    FleetRepo,
    Hub,
    apply,
    checkout_of_the_program,
    gitops,
    make_fleet,
    query,
    table,
)
from tests.service.conftest import Worker


def deployments(conninfo: str) -> list[tuple[str, str, str]]:
    return [
        (name, kind, st)
        for name, kind, st in query(
            conninfo, "SELECT server_name, kind, state FROM deployments ORDER BY id"
        )
    ]


def servers(conninfo: str) -> dict[str, str]:
    return dict(query(conninfo, "SELECT name, status FROM servers"))  # type: ignore[arg-type]


def applies(conninfo: str) -> list[tuple[int, str | None]]:
    return [
        (i, o) for i, o in query(conninfo, "SELECT id, outcome FROM gitops_applies ORDER BY id")
    ]


def http_server(conninfo: str, name: str) -> None:
    """A server made over HTTP, as its finished `up` leaves the rows."""
    insert_server(conninfo, name, status="active")
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, config) "
            "VALUES (%s, 'up', 'succeeded', %s)",
            (name, Jsonb({"serverName": name})),
        )


def timed(what: str, started: float) -> None:
    print(f"{what}: {time.monotonic() - started:.1f}s")


# -- refused before anything starts ---------------------------------------------------------------


def test_a_plan_made_for_another_commit_is_refused(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = make_fleet(fleet_repo, "web-1")
    plan_file = tmp_path / "plan.json"
    code, _, _ = gitops(
        capsys, "plan", str(fleet_repo.fleet), "--repository", REPO, "--json", str(plan_file)
    )
    assert code == 0
    second = make_fleet(fleet_repo, "web-2")
    code, _, err = apply(capsys, fleet_repo, "--plan", str(plan_file))
    assert code == 1
    assert f"plan made for {first}, HEAD is {second}: plan again" in err
    assert deployments(env["DATABASE_URL"]) == []
    assert applies(env["DATABASE_URL"]) == []


def test_a_plan_the_fleet_moved_away_from_is_refused(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    make_fleet(fleet_repo, "web-1", "web-2")
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        plan = fresh_plan(conn, fleet_repo.fleet, REPO)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    http_server(env["DATABASE_URL"], "web-2")  # someone made web-2 over HTTP meanwhile
    code, _, err = apply(capsys, fleet_repo, "--plan", str(plan_file))
    assert code == 1
    assert "the fleet moved since the plan was made: 1 server(s) differ: web-2 (create" in err
    assert "web-1" not in err
    assert [d[0] for d in deployments(env["DATABASE_URL"])] == ["web-2"]  # only the HTTP one


def test_a_plan_with_errors_is_refused(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    make_fleet(fleet_repo, "web-1")
    fleet_repo.write("web-2", size="s-1vcpu-1gb", colour="blue")
    fleet_repo.commit()
    code, _, err = apply(capsys, fleet_repo)
    assert code == 1
    assert "the plan has 1 error(s)" in err
    assert "web-2" in err
    assert deployments(env["DATABASE_URL"]) == []


def test_uncommitted_files_are_refused(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    make_fleet(fleet_repo, "web-1")
    fleet_repo.write("web-2", size="s-1vcpu-1gb")
    code, _, err = apply(capsys, fleet_repo)
    assert code == 1
    assert "uncommitted changes in the fleet folder: fleet/Pulumi.web-2.yaml" in err
    assert deployments(env["DATABASE_URL"]) == []


def test_uncommitted_program_changes_are_refused(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    """An edited component would run on every server under a commit that does not hold it."""
    package = checkout_of_the_program(fleet_repo)
    with (package / "program" / "component.py").open("a") as file:
        file.write("# an edit nobody committed\n")
    code, _, err = apply(capsys, fleet_repo)
    assert code == 1
    assert (
        "apply: refused: uncommitted changes in the program: "
        "src/citrus_deploy/program/component.py (a plan is made for a commit): commit them"
    ) in err
    assert deployments(env["DATABASE_URL"]) == []


# -- waves and gates ------------------------------------------------------------------------------


def test_a_canary_whose_agent_never_comes_online_stops_the_rollout(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    worker: Worker,
) -> None:
    started = time.monotonic()
    hub.refuse = {"web-1"}  # the canary: first by name
    make_fleet(fleet_repo, "web-1", "web-2", "web-3")
    code, out, _ = apply(capsys, fleet_repo, "--agent-timeout", "1.5")
    timed("canary apply", started)
    assert code == 1
    assert "stopping: the canary failed (web-1); 2 server(s) not started" in out
    rows = table(out)
    assert rows["web-1"][:2] == ["create", "1"]
    assert rows["web-1"][3] == "failed"
    assert "the agent was not online 1.5s after the deployment" in out
    assert rows["web-2"][3] == rows["web-3"][3] == "not started"
    assert deployments(env["DATABASE_URL"]) == [("web-1", "up", "succeeded")]
    assert applies(env["DATABASE_URL"])[-1][1] == "stopped"


def test_a_healthy_rollout_runs_every_wave(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    worker: Worker,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    make_fleet(fleet_repo, "web-1", "web-2", "web-3")
    result = tmp_path / "result.json"
    code, out, _ = apply(capsys, fleet_repo, "--agent-timeout", "20", "--json", str(result))
    timed("3-server apply", started)
    assert code == 0, out
    assert {n: r[1] for n, r in table(out).items()} == {"web-1": "1", "web-2": "2", "web-3": "3"}
    assert servers(env["DATABASE_URL"]) == dict.fromkeys(("web-1", "web-2", "web-3"), "active")
    saved = json.loads(result.read_text())
    assert saved["outcome"] == "succeeded"
    assert [s["outcome"] for s in saved["servers"]] == ["succeeded"] * 3
    assert applies(env["DATABASE_URL"])[-1][1] == "succeeded"
    # Nothing changed: nothing to do, and it says so.
    code, out, _ = apply(capsys, fleet_repo)
    assert code == 0
    assert "0 up, 0 destroy" in out


def test_a_busy_server_fails_alone(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    worker: Worker,
) -> None:
    make_fleet(fleet_repo, "web-1", "web-2", "web-3", "web-4")
    with psycopg.connect(env["DATABASE_URL"]) as conn:  # another apply's, still queued
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, config, source, repository, commit)"
            " VALUES ('web-4', 'up', 'queued', '{}', 'gitops', %s, 'c0ffee')",
            (REPO,),
        )
    code, out, _ = apply(capsys, fleet_repo, "--agent-timeout", "20")
    assert code == 1
    rows = table(out)
    assert rows["web-4"][3] == "failed"
    assert BUSY in out
    assert [rows[n][3] for n in ("web-1", "web-2", "web-3")] == ["succeeded"] * 3


# -- destroys -------------------------------------------------------------------------------------


def test_prune_destroys_exactly_the_removed_servers_and_never_an_http_one(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    worker: Worker,
) -> None:
    started = time.monotonic()
    conninfo = env["DATABASE_URL"]
    make_fleet(fleet_repo, "web-1", "web-2", "web-3")
    assert apply(capsys, fleet_repo, "--agent-timeout", "20")[0] == 0
    http_server(conninfo, "made-by-http")
    fleet_repo.remove("web-2")
    fleet_repo.commit("remove web-2")

    code, out, _ = apply(capsys, fleet_repo)
    assert code == 0
    assert "will NOT destroy web-2: its file was removed: destroyed only with --prune" in out
    assert table(out)["web-2"][3] == "skipped"
    assert "web-2" in servers(conninfo)

    code, out, _ = apply(capsys, fleet_repo, "--prune")
    timed("prune test", started)
    assert code == 0, out
    assert "will destroy web-2" in out
    assert out.index("will destroy web-2") < out.index("wave 1")  # listed before it starts
    assert set(servers(conninfo)) == {"web-1", "web-3", "made-by-http"}
    destroyed = [d for d in deployments(conninfo) if d[1] == "destroy"]
    assert destroyed == [("web-2", "destroy", "succeeded")]


def test_the_blast_radius_limit(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    worker: Worker,
) -> None:
    conninfo = env["DATABASE_URL"]
    names = ("a-1", "a-2", "a-3", "a-4")
    make_fleet(fleet_repo, *names)
    assert apply(capsys, fleet_repo, "--agent-timeout", "20")[0] == 0
    for name in names:
        fleet_repo.remove(name)
    fleet_repo.commit("remove them all")
    before = deployments(conninfo)

    code, _, err = apply(capsys, fleet_repo, "--prune")
    assert code == 1
    assert "destroys or replaces 4 servers, more than max(3, 5% of the fleet of 4) = 3" in err
    assert "a-1 (destroy), a-2 (destroy), a-3 (destroy), a-4 (destroy)" in err
    code, _, err = apply(capsys, fleet_repo, "--prune", "--allow-destroy", "3")
    assert code == 1
    assert "--allow-destroy 3 allows only 3" in err
    assert deployments(conninfo) == before  # nothing was queued

    code, out, _ = apply(capsys, fleet_repo, "--prune", "--allow-destroy", "4")
    assert code == 0, out
    assert servers(conninfo) == {}


# -- retry ----------------------------------------------------------------------------------------


def test_retry_failed_reruns_only_the_failed_servers(
    env: dict[str, str],
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    hub: Hub,
    worker: Worker,
) -> None:
    conninfo = env["DATABASE_URL"]
    hub.refuse = {"web-3"}  # the last wave's only server: its agent does not come (yet)
    make_fleet(fleet_repo, "web-1", "web-2", "web-3")
    code, out, _ = apply(capsys, fleet_repo, "--agent-timeout", "1.5")
    assert code == 1
    assert table(out)["web-3"][3] == "failed"
    head = fleet_repo.git("rev-parse", "HEAD").strip()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        first = gitops_store.last_apply(conn, REPO, head)
    assert first is not None

    hub.refuse = set()  # fixed: its agent connects now
    code, out, _ = apply(capsys, fleet_repo, "--retry-failed", "--agent-timeout", "20")
    assert code == 0, out
    assert "retrying the 1 server(s) that failed in apply" in out
    assert list(table(out)) == ["web-3"]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        last = gitops_store.last_apply(conn, REPO, head)
        assert last is not None
        assert last != first
        rerun = gitops_store.apply_deployments(conn, last)
    assert [(d["server_name"], d["kind"], d["state"]) for d in rerun] == [
        ("web-3", "up", "succeeded")
    ]
    assert servers(conninfo) == dict.fromkeys(("web-1", "web-2", "web-3"), "active")


def test_retry_failed_without_an_earlier_apply_is_refused(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    make_fleet(fleet_repo, "web-1")
    code, _, err = apply(capsys, fleet_repo, "--retry-failed")
    assert code == 1
    assert "no earlier apply of" in err


def test_without_a_running_worker_apply_refuses_and_queues_nothing(
    env: dict[str, str], fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    make_fleet(fleet_repo, "web-1")
    code, _, err = apply(capsys, fleet_repo)
    assert code == 2
    assert "no worker of the service is running" in err
    assert "--workers N" in err
    assert query(env["DATABASE_URL"], "SELECT count(*) FROM deployments") == [(0,)]
    assert query(env["DATABASE_URL"], "SELECT count(*) FROM gitops_applies") == [(0,)]


def test_waiting_stops_once_the_services_workers_are_gone(service_db: str) -> None:
    """apply, drift and plan --preview wait on the service's workers; when the last one stops
    reporting they say so, instead of waiting for ever."""
    with psycopg.connect(service_db, autocommit=True) as conn:
        conn.execute("INSERT INTO procrastinate_workers DEFAULT VALUES")  # reported just now
        watch = ServiceWorkersWatch(conn, every=0)
        watch()
        conn.execute("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 min'")
        with pytest.raises(NoWorkers, match="no worker of the service is running"):
            watch()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_agent_timeout_is_refused_by_name(
    fleet_repo: FleetRepo, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, _, err = gitops(capsys, "apply", str(fleet_repo.fleet), "--agent-timeout", value)
    assert code == 2
    assert "--agent-timeout must be a number of seconds >= 0" in err
