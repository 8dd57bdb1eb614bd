"""Read-only checks: queued, run by real worker processes, and through the Automation API.

The worker tests run `citrus-deploy service worker` under the engine stand-in (real row providers
against PostgreSQL, DigitalOcean faked); the checks through the Automation API and the stand-in
CLI are in test_automation_deployer.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from citrus_deploy.engine.deployer import CheckStep, masked, refresh_result
from citrus_deploy.queue.checks import CheckNotFound, enqueue_check, get_check, wait_for_checks
from citrus_deploy.standin.engine import Engine
from tests.service.conftest import AUTH, PASSPHRASE, Worker, rows, wait_for

DEPLOY = "/admin/servers/deploy-with-agent"
DROPLET = "digitalocean:index/droplet:Droplet"
SERVER_ROW = "pulumi-python:dynamic/citrus:ServerRow"


def finished_check(database: str, check_id: int) -> dict[str, Any] | None:
    with psycopg.connect(database) as conn:
        found = get_check(conn, check_id)
    return found if found["state"] in ("succeeded", "failed") else None


def check(database: str, name: str, kind: str, config: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(database) as conn:
        check_id = enqueue_check(conn, name, kind, config)
    done = wait_for(lambda: finished_check(database, check_id), 60, f"{kind} check {check_id}")
    assert isinstance(done, dict)
    return done


def by_type(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["type"]: step for step in result["steps"]}


def drifted(result: dict[str, Any]) -> dict[str, str]:
    return {step["type"]: step["op"] for step in result["steps"] if step["op"] != "same"}


# -- through real workers, under the engine stand-in -----------------------------------------


@pytest.fixture
def deployed(client: TestClient, service_db: str, start_worker: Callable[..., Worker]) -> str:
    start_worker()
    client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH)

    def done() -> bool:
        shown = client.get("/admin/servers/web-1", headers=AUTH).json()
        return bool(shown.get("lastDeployment")) and shown["currentDeployment"] is None

    wait_for(done, 60, "the deployment of web-1")
    return "web-1"


def test_a_refresh_check_finds_nothing_on_a_clean_server_then_a_row_changed_by_hand(
    deployed: str, service_db: str, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "state" / "test-engine" / "web-1.json"
    before = checkpoint.read_bytes()

    clean = check(service_db, "web-1", "refresh", {"serverName": "web-1"})
    with psycopg.connect(service_db) as conn:
        conn.execute("UPDATE servers SET size = 's-2vcpu-4gb' WHERE name = 'web-1'")
    changed = check(service_db, "web-1", "refresh", {"serverName": "web-1"})

    assert (clean["state"], clean["error"]) == ("succeeded", None)
    assert drifted(clean["result"]) == {}
    assert changed["state"] == "succeeded", changed["error"]
    assert drifted(changed["result"]) == {SERVER_ROW: "update"}
    assert by_type(changed["result"])[SERVER_ROW]["diffs"] == [
        {"key": "size", "old": "s-1vcpu-512mb-10gb", "new": "s-2vcpu-4gb"}
    ]
    assert checkpoint.read_bytes() == before  # neither check wrote the checkpoint
    assert rows(service_db, "SELECT size FROM servers") == [("s-2vcpu-4gb",)]


def test_a_refresh_check_sees_a_droplet_deleted_behind_our_back(
    deployed: str, service_db: str, tmp_path: Path
) -> None:
    engine = Engine(tmp_path / "state" / "test-engine", passphrase=PASSPHRASE)
    cloud = json.loads(engine.cloud_file.read_text())
    cloud["droplets"].clear()
    engine.cloud_file.write_text(json.dumps(cloud))

    done = check(service_db, "web-1", "refresh", {"serverName": "web-1"})

    assert drifted(done["result"]) == {DROPLET: "delete"}
    assert done["result"]["summary"]["delete"] == 1


def test_a_preview_check_plans_the_new_size_without_applying_it(
    deployed: str, service_db: str
) -> None:
    done = check(service_db, "web-1", "preview", {"serverName": "web-1", "size": "s-1vcpu-1gb"})

    assert done["state"] == "succeeded", done["error"]
    steps = by_type(done["result"])
    assert (steps[DROPLET]["op"], steps[DROPLET]["diffs"]) == ("update", ["size"])
    assert done["result"]["summary"]["update"] == 2  # the droplet and its row
    assert rows(service_db, "SELECT size FROM servers") == [("s-1vcpu-512mb-10gb",)]
    # No secret of the worker's settings reached the stored result.
    assert "dop_v1" not in json.dumps(done["result"])


def test_a_preview_of_a_server_never_deployed_is_all_creates_and_a_refresh_of_it_fails(
    service_db: str, start_worker: Callable[..., Worker]
) -> None:
    start_worker()

    preview = check(service_db, "new-1", "preview", {"serverName": "new-1"})
    refresh = check(service_db, "new-1", "refresh", {"serverName": "new-1"})

    assert preview["state"] == "succeeded", preview["error"]
    assert set(drifted(preview["result"]).values()) == {"create"}
    assert (refresh["state"], refresh["attempts"]) == ("failed", 1)  # not retried
    assert "no stack named 'new-1' found" in refresh["error"]
    assert rows(service_db, "SELECT count(*) FROM servers") == [(0,)]


def test_a_check_job_takes_the_server_lock_and_no_queueing_lock(service_db: str) -> None:
    """Never beside that server's up/destroy, and a queued check refuses none of them."""
    with psycopg.connect(service_db) as conn:
        first = enqueue_check(conn, "web-1", "refresh", {"serverName": "web-1"})
        second = enqueue_check(conn, "web-1", "preview", {"serverName": "web-1"})
        jobs = conn.execute(
            "SELECT lock, queueing_lock, queue_name, task_name, args FROM procrastinate_jobs "
            "ORDER BY id"
        ).fetchall()
        assert get_check(conn, second)["state"] == "queued"
        with pytest.raises(CheckNotFound):
            get_check(conn, second + 1)
        with pytest.raises(ValueError, match="check kind"):
            enqueue_check(conn, "web-1", "up", {})
    assert jobs == [
        ("web-1", None, "deployments", "citrus.check", {"check_id": first}),
        ("web-1", None, "deployments", "citrus.check", {"check_id": second}),
    ]


# -- the result shapes -------------------------------------------------------------------------


def test_a_refresh_result_never_holds_a_secret_value() -> None:
    sig = "4dabf18193072939515e22adb298388d"
    marked = {sig: "1b47061264138c4ac30d75fd1eb44270", "value": "ghp_hidden"}
    step = CheckStep(
        "urn:x", "t", "update", ["key", "name"], {"key": marked, "name": "a"}, {"key": "[secret]"}
    )

    result = refresh_result([step])

    assert result["steps"][0]["diffs"] == [
        {"key": "key", "old": "[secret]", "new": "[secret]"},
        {"key": "name", "old": "a", "new": None},
    ]
    assert "ghp_hidden" not in json.dumps(result)
    assert masked({"a": [marked]}) == "[secret]"


def test_waiting_for_checks_returns_the_finished_and_names_the_rest(service_db: str) -> None:
    """What `plan --preview` and `drift` wait with: one query a poll, however many checks."""
    with psycopg.connect(service_db, autocommit=True) as conn:
        ids = [
            enqueue_check(conn, f"web-{i}", "refresh", {"serverName": f"web-{i}"})
            for i in (1, 2, 3)
        ]
        # As a worker records them:
        conn.execute(
            "UPDATE checks SET state = 'succeeded', result = '{\"steps\": []}' WHERE id = %s",
            (ids[0],),
        )
        conn.execute("UPDATE checks SET state = 'failed', error = 'boom' WHERE id = %s", (ids[1],))
        polls: list[int] = []
        done, unfinished = wait_for_checks(
            conn, ids, timeout=0.3, poll=0.1, watch=lambda: polls.append(1)
        )
    assert {i: (c["state"], c["error"]) for i, c in done.items()} == {
        ids[0]: ("succeeded", None),
        ids[1]: ("failed", "boom"),
    }
    assert done[ids[0]]["result"] == {"steps": []}
    assert unfinished == [ids[2]]
    assert len(polls) >= 2  # it kept polling for the third until the timeout
