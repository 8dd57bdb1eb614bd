"""Queue and workers for real: HTTP -> queue -> worker process -> program -> rows.

Workers are `citrus-deploy service worker` processes running the engine stand-in (the stand-in
for the Pulumi engine and DigitalOcean); everything else, PostgreSQL included, is real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from citrus_deploy.standin import fakes
from citrus_deploy.standin.engine import Engine
from citrus_deploy.standin.pg import PgServer, free_port
from citrus_deploy.web.app import create_app
from tests.service.conftest import (
    AUTH,
    Worker,
    fault_trigger,
    make_settings,
    rows,
    service_env,
    wait_for,
)

DEPLOY = "/admin/servers/deploy-with-agent"


def server(client: TestClient, name: str) -> dict[str, Any]:
    response = client.get(f"/admin/servers/{name}", headers=AUTH)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished(client: TestClient, name: str) -> dict[str, Any] | None:
    shown = server(client, name)
    return shown if shown["currentDeployment"] is None and shown["lastDeployment"] else None


def test_a_post_becomes_rows_through_a_worker(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    start_worker()

    client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH)
    shown = wait_for(lambda: finished(client, "web-1"), what="the deployment")

    ((agent_id, agent_name, agent_status),) = rows(
        service_db, "SELECT id::text, name, status FROM agents"
    )
    ((droplet, status, row_agent),) = rows(
        service_db, "SELECT digital_ocean_id, status, agent_id::text FROM servers"
    )
    last = shown["lastDeployment"]
    assert (last["state"], last["attempts"], last["error"]) == ("succeeded", 1, None)
    assert (agent_name, agent_status, status, row_agent) == (
        "agent-web-1",
        "offline",
        "provisioning",
        agent_id,
    )
    assert (shown["id"], shown["agent"]["id"], shown["status"]) == (droplet, agent_id, status)
    assert shown["ipv4Address"].startswith("203.0.113.")
    assert "AgentRow agent-server-agent-row created" in last["outputTail"]
    assert last["outputs"]["dropletId"] == droplet


def test_wait_true_answers_with_the_full_record(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    start_worker()

    response = client.post(DEPLOY + "?wait=true", headers=AUTH)

    assert response.status_code == 200
    body = response.json()
    ((droplet, agent_id),) = rows(
        service_db, "SELECT digital_ocean_id, agent_id::text FROM servers"
    )
    assert list(body) == ["success", "message", "server"]
    assert list(body["server"])[:4] == ["id", "name", "status", "agent"]
    assert (body["success"], body["server"]["id"], body["server"]["agent"]["id"]) == (
        True,
        droplet,
        agent_id,
    )
    assert body["server"]["status"] == "provisioning"
    assert body["server"]["agent"]["name"] == "agent-" + body["server"]["name"].split("-")[1]


def test_region_and_size_of_the_post_are_the_droplets(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    """They were ignored: the server got sfo3 and the smallest size whatever was asked."""
    start_worker()

    named = client.post(
        DEPLOY + "?wait=true",
        json={"name": "web-1", "region": "nyc3", "size": "s-2vcpu-4gb"},
        headers=AUTH,
    )
    generated = client.post(DEPLOY + "?wait=true", json={"region": "ams3"}, headers=AUTH)

    assert (named.status_code, generated.status_code) == (200, 200), named.text
    assert (named.json()["server"]["region"], named.json()["server"]["size"]) == (
        "nyc3",
        "s-2vcpu-4gb",
    )
    assert (generated.json()["server"]["region"], generated.json()["server"]["size"]) == (
        "ams3",
        "s-1vcpu-512mb-10gb",  # Pulumi.yaml's default
    )
    assert sorted(rows(service_db, "SELECT region, size FROM servers")) == [
        ("ams3", "s-1vcpu-512mb-10gb"),
        ("nyc3", "s-2vcpu-4gb"),
    ]


def test_two_posts_for_one_name_run_one_deployment(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    barrier = threading.Barrier(2)
    answers: list[int] = []

    def post() -> None:
        barrier.wait()
        answers.append(client.post(DEPLOY, json={"name": "twin-1"}, headers=AUTH).status_code)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start_worker()
    wait_for(lambda: finished(client, "twin-1"), what="the deployment")

    assert sorted(answers) == [202, 409]
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(1,)]
    assert rows(
        service_db, "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'citrus.deploy'"
    ) == [(1,)]
    assert rows(service_db, "SELECT count(*) FROM agents") == [(1,)]
    assert rows(service_db, "SELECT count(*) FROM servers") == [(1,)]


def test_delete_destroys_the_stack_and_its_rows(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    client.post(DEPLOY + "?wait=true", json={"name": "gone-1"}, headers=AUTH)

    response = client.delete("/admin/servers/gone-1", headers=AUTH)
    location = response.headers["location"]
    done = wait_for(
        lambda: (d := client.get(location, headers=AUTH).json())["state"] == "succeeded" and d,
        what="the destroy",
    )

    assert rows(service_db, "SELECT count(*) FROM servers") == [(0,)]
    assert rows(service_db, "SELECT count(*) FROM agents") == [(0,)]
    assert "AgentRow agent-server-agent-row deleted" in done["outputTail"]
    assert client.get("/admin/servers/gone-1", headers=AUTH).status_code == 404
    assert client.get("/admin/servers", headers=AUTH).json() == {"servers": []}


def test_a_failed_deployment_leaves_the_server_failed_with_its_error(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    # check_violation: not transient
    fault_trigger(service_db, "INSERT ON servers", sqlstate="23514", times="always")
    start_worker()

    client.post(DEPLOY, json={"name": "doomed-1"}, headers=AUTH)
    shown = wait_for(lambda: finished(client, "doomed-1"), what="the deployment")
    listed = client.get("/admin/servers", headers=AUTH).json()["servers"]

    last = shown["lastDeployment"]
    assert (shown["status"], last["state"], last["attempts"]) == ("failed", "failed", 1)
    assert "refused the row" in last["error"]
    assert [(s["name"], s["status"]) for s in listed] == [("doomed-1", "failed")]
    # The agent row exists (offline): the stale check will fail it; nothing is silent.
    assert rows(service_db, "SELECT status FROM agents") == [("offline",)]
    assert rows(
        service_db, "SELECT status FROM procrastinate_jobs WHERE task_name = 'citrus.deploy'"
    ) == [("failed",)]


def test_a_transient_failure_is_retried_with_backoff_and_completes(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    # connection_failure: transient
    fault_trigger(service_db, "INSERT ON servers", sqlstate="08006", times="once")
    start_worker()

    client.post(DEPLOY, json={"name": "flaky-1"}, headers=AUTH)
    shown = wait_for(lambda: finished(client, "flaky-1"), what="the deployment")

    last = shown["lastDeployment"]
    assert (last["state"], last["attempts"], last["error"]) == ("succeeded", 2, None)
    assert "!! attempt 1 failed (transient)" in last["outputTail"]
    assert "unchanged" in last["outputTail"]  # attempt 2 reused what attempt 1 created
    assert rows(service_db, "SELECT count(*) FROM agents") == [(1,)]
    assert rows(service_db, "SELECT count(*) FROM servers") == [(1,)]


def test_a_worker_killed_mid_deployment_is_recorded_and_retried(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    first = start_worker(CITRUS_TEST_ENGINE_STEP_DELAY="0.7")
    client.post(DEPLOY, json={"name": "killed-1"}, headers=AUTH)

    def agent_row_created() -> bool:
        current = server(client, "killed-1")["currentDeployment"]
        return bool(current) and "AgentRow agent-server-agent-row created" in current["outputTail"]

    wait_for(agent_row_created, what="the agent row")
    first.kill()
    # The deployer child notices its worker is gone and stops as Pulumi's CLI does on SIGTERM:
    # the step in flight completes, no other starts, nothing is left pending or locked.
    wait_for(lambda: not _deployer_children(), timeout=20, what="the deployer child to stop")
    engine = Engine(tmp_path / "state" / "test-engine")
    assert engine.export("killed-1")["pending_operations"] == []
    assert not engine.locked("killed-1")
    assert server(client, "killed-1")["currentDeployment"]["state"] == "running"

    start_worker()  # after the stalled timeout (3 s) it retries the job
    shown = wait_for(lambda: finished(client, "killed-1"), timeout=40, what="the retry")

    last = shown["lastDeployment"]
    assert (last["state"], last["attempts"]) == ("succeeded", 2)
    assert "!! attempt 1 interrupted: worker" in last["outputTail"]
    assert "stopped sending heartbeats" in last["outputTail"]
    assert rows(service_db, "SELECT count(*) FROM agents") == [(1,)]
    assert rows(service_db, "SELECT count(*) FROM servers") == [(1,)]
    # What the step in flight made is in the checkpoint: one droplet, the one the stack knows.
    (droplet_id,) = rows(service_db, "SELECT digital_ocean_id FROM servers")[0]
    assert list(fakes.droplets(tmp_path / "state" / "test-engine" / "digitalocean.json")) == [
        droplet_id
    ]


def test_a_dead_workers_deployment_is_retried_only_once_its_child_has_stopped(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    """The worker dies during a 15 s create. Its child finishes that step (within its 20 s
    grace) and stops; the retry must not start before, or it would find the stack locked by
    the child and end as needs_operator. It starts after stalled timeout + grace, and succeeds."""
    first = start_worker(CITRUS_TEST_ENGINE_STEP_DELAY="15", DEPLOY_STOP_GRACE="20")
    client.post(DEPLOY, json={"name": "slow-1"}, headers=AUTH)

    def creating() -> bool:  # the component's step is done; the first slow create has begun
        current = server(client, "slow-1")["currentDeployment"]
        return bool(current) and "AgentServer agent-server created" in current["outputTail"]

    wait_for(creating, what="the first create")
    first.kill()
    start_worker(DEPLOY_STOP_GRACE="20")
    shown = wait_for(lambda: finished(client, "slow-1"), timeout=90, what="the retry")

    last = shown["lastDeployment"]
    assert (last["state"], last["attempts"]) == ("succeeded", 2), last["error"]
    (droplet_id,) = rows(service_db, "SELECT digital_ocean_id FROM servers")[0]
    assert list(fakes.droplets(tmp_path / "state" / "test-engine" / "digitalocean.json")) == [
        droplet_id
    ]


def test_a_deployment_killed_past_its_grace_is_left_for_an_operator(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    """Its worker dies in the middle of a slow create; the child, stopped gracefully, cannot
    finish within DEPLOY_STOP_GRACE and is killed, leaving the create pending. The retry must
    not `up` again (a second droplet): the server and its deployment say what to run."""
    first = start_worker(CITRUS_TEST_ENGINE_STEP_DELAY="5", DEPLOY_STOP_GRACE="0.5")
    client.post(DEPLOY, json={"name": "halfway-1"}, headers=AUTH)

    def creating() -> bool:  # the component's step is done; the first slow create has begun
        current = server(client, "halfway-1")["currentDeployment"]
        return bool(current) and "AgentServer agent-server created" in current["outputTail"]

    wait_for(creating, what="the first create")
    first.kill()
    wait_for(lambda: not _deployer_children(), timeout=10, what="the deployer child to die")

    start_worker()  # after the stalled timeout it picks the job up again
    shown = wait_for(lambda: finished(client, "halfway-1"), timeout=40, what="the retry")
    listed = client.get("/admin/servers", headers=AUTH).json()["servers"]

    last = shown["lastDeployment"]
    assert (shown["status"], last["state"], last["attempts"]) == (
        "needs_operator",
        "needs_operator",
        2,
    )
    assert "pending operation" in last["error"]
    assert "pulumi refresh --stack halfway-1 --clear-pending-creates" in last["error"]
    assert [(s["name"], s["status"]) for s in listed] == [("halfway-1", "needs_operator")]
    assert rows(service_db, "SELECT count(*) FROM servers") == [(0,)]


def _deployer_children() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"citrus_deploy.engine.child" in cmdline:
            found.append(int(pid))
    return found


# -- the database goes away and comes back ------------------------------------------------------


def test_database_stopped_and_restarted_503_then_recovers(own_pg: PgServer, tmp_path: Path) -> None:
    settings = make_settings(own_pg.conninfo(), tmp_path, CITRUS_DB_TIMEOUT="1")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        before = client.post(DEPLOY, json={"name": "before-1"}, headers=AUTH)
        own_pg.stop()
        during = [
            client.post(DEPLOY, json={"name": "during-1"}, headers=AUTH),
            client.get("/admin/servers", headers=AUTH),
            client.get("/admin/servers/before-1", headers=AUTH),
            client.get("/healthz"),
        ]
        own_pg.restart()
        after = wait_for(
            lambda: (
                (r := client.post(DEPLOY, json={"name": "after-1"}, headers=AUTH)).status_code
                != 503
                and r
            ),
            timeout=20,
            what="recovery",
        )
        health = client.get("/healthz")

    assert before.status_code == 202
    assert [r.status_code for r in during] == [503, 503, 503, 503]
    assert all("Traceback" not in r.text and "psycopg" not in r.text for r in during)
    assert during[0].json()["error"] == "database_unavailable"
    assert during[0].headers["retry-after"] == "5"
    assert after.status_code == 202
    assert health.json()["database"] == "ok"
    names = rows(own_pg.conninfo(), "SELECT server_name FROM deployments ORDER BY id")
    assert names == [("before-1",), ("after-1",)]


def test_sigterm_while_the_database_is_away_stops_the_worker_cleanly(tmp_path: Path) -> None:
    closed_port = f"postgresql://citrus@127.0.0.1:{free_port()}/citrus"
    worker = Worker(service_env(closed_port, tmp_path / "state"), tmp_path / "w.log").start()
    assert worker.proc is not None
    try:
        wait_for(lambda: "connecting to" in worker.log.read_text(), what="the worker to start")

        worker.proc.send_signal(signal.SIGTERM)

        assert worker.proc.wait(15) == 0
    finally:
        worker.stop()


def test_sigterm_stops_a_worker_cleanly(start_worker: Callable[..., Worker]) -> None:
    worker = start_worker()
    assert worker.proc is not None
    wait_for(lambda: "concurrency" in worker.log.read_text(), what="the worker to start")

    worker.proc.send_signal(signal.SIGTERM)

    try:
        code = worker.proc.wait(15)
    except subprocess.TimeoutExpired:  # seen once in CI: say what the worker was doing
        raise AssertionError(
            f"no exit 15 s after SIGTERM:\n{worker.log.read_text()[-4000:]}"
        ) from None
    assert code == 0
