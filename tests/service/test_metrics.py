"""GET /metrics through the real app and database: Prometheus' own parser reads it, it needs the
token, and its numbers move as deployments, stale checks and boot reports happen."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from citrus_deploy.queue import stale
from citrus_deploy.store.migrate import migrate_all as migrate
from citrus_deploy.web.app import create_app
from citrus_deploy.web.boot_reports import sign
from tests.conftest import AN_EARLIER_RELEASE, insert_server
from tests.service.conftest import AUTH, Worker, make_settings, rows, wait_for

DEPLOY = "/admin/servers/deploy-with-agent"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_parse_and_start_at_zero(client: TestClient) -> None:
    samples = scrape(client)

    families = {name for name, _ in samples}
    assert families == {
        "citrus_deployments",
        "citrus_deployment_duration_seconds_bucket",
        "citrus_deployment_duration_seconds_count",
        "citrus_deployment_duration_seconds_sum",
        "citrus_queue_jobs",
        "citrus_agents",
        "citrus_servers",
        "citrus_stale_transitions_total",
        "citrus_boot_failures_total",
    }
    assert set(samples.values()) == {0.0}
    assert value(samples, "citrus_deployments", kind="up", state="queued") == 0
    assert value(samples, "citrus_queue_jobs", queue="deployments", status="todo") == 0
    assert value(samples, "citrus_stale_transitions_total", transition="agent_failed") == 0
    assert value(samples, "citrus_boot_failures_total", step="fetch") == 0
    le = {
        dict(labels)["le"]
        for name, labels in samples
        if name == "citrus_deployment_duration_seconds_bucket"
    }
    assert {"5.0", "3600.0", "+Inf"} <= le


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic x"}]
)
def test_metrics_need_the_admin_token(client: TestClient, headers: dict[str, str]) -> None:
    response = client.get("/metrics", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "citrus_" not in response.text


def test_metrics_are_not_in_the_openapi_schema(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_agents_and_servers_by_status(client: TestClient, service_db: str) -> None:
    insert_server(service_db, "web-1")
    insert_server(service_db, "web-2", status="active")
    with psycopg.connect(service_db) as conn:
        conn.execute("UPDATE agents SET status = 'online' WHERE name = 'agent-web-2'")

    samples = scrape(client)

    assert value(samples, "citrus_servers", status="provisioning") == 1
    assert value(samples, "citrus_servers", status="active") == 1
    assert value(samples, "citrus_servers", status="failed") == 0
    assert value(samples, "citrus_agents", status="offline") == 1
    assert value(samples, "citrus_agents", status="online") == 1


def test_a_queued_deployment_shows_in_the_queue_and_by_state(client: TestClient) -> None:
    client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH)
    client.post(DEPLOY, json={"name": "web-2"}, headers=AUTH)

    samples = scrape(client)

    assert value(samples, "citrus_deployments", kind="up", state="queued") == 2
    assert value(samples, "citrus_deployments", kind="up", state="succeeded") == 0
    assert value(samples, "citrus_queue_jobs", queue="deployments", status="todo") == 2


def test_a_finished_deployment_counts_with_its_duration(
    client: TestClient, start_worker: Callable[..., Worker]
) -> None:
    client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH)
    start_worker()

    samples = wait_for(
        lambda: (
            (s := scrape(client))
            and value(s, "citrus_deployments", kind="up", state="succeeded") == 1
            and s
        ),
        what="the deployment to count as succeeded",
    )

    assert value(samples, "citrus_deployments", kind="up", state="queued") == 0
    assert value(samples, "citrus_queue_jobs", queue="deployments", status="todo") == 0
    histogram = "citrus_deployment_duration_seconds"
    assert value(samples, f"{histogram}_count", kind="up", state="succeeded") == 1
    assert value(samples, f"{histogram}_count", kind="up", state="failed") == 0
    assert value(samples, f"{histogram}_bucket", kind="up", state="succeeded", le="+Inf") == 1
    assert value(samples, f"{histogram}_sum", kind="up", state="succeeded") > 0
    assert value(samples, "citrus_servers", status="provisioning") == 1


def test_durations_fall_into_their_buckets(client: TestClient, service_db: str) -> None:
    """Rows finished the way the worker finishes them (fail_deployment, succeed_deployment)."""
    with psycopg.connect(service_db) as conn:
        for name, kind, seconds, state in [
            ("a", "up", 3, "succeeded"),
            ("b", "up", 40, "succeeded"),
            ("c", "up", 700, "succeeded"),
            ("d", "destroy", 4000, "failed"),
        ]:
            conn.execute(
                "INSERT INTO deployments (server_name, kind, state, started_at) "
                "VALUES (%s, %s, 'running', now() - make_interval(secs => %s))",
                (name, kind, seconds),
            )
            conn.execute(
                "UPDATE deployments SET state = %s, finished_at = now() WHERE server_name = %s",
                (state, name),
            )

    samples = scrape(client)

    def bucket(le: str, kind: str = "up", state: str = "succeeded") -> float:
        return value(
            samples, "citrus_deployment_duration_seconds_bucket", kind=kind, state=state, le=le
        )

    assert [bucket(le) for le in ("5.0", "30.0", "60.0", "600.0", "1200.0", "+Inf")] == [
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    assert bucket("3600.0", "destroy", "failed") == 0
    assert bucket("+Inf", "destroy", "failed") == 1
    total = value(samples, "citrus_deployment_duration_seconds_sum", kind="up", state="succeeded")
    assert total == pytest.approx(743, abs=5)
    assert value(samples, "citrus_deployments", kind="destroy", state="failed") == 1


def test_deployments_finished_before_the_counters_existed_are_counted(
    service_db: str, tmp_path: Path
) -> None:
    """The migration that adds the trigger counts the history once (and only once)."""
    with psycopg.connect(service_db) as conn:
        conn.execute(AN_EARLIER_RELEASE)
        conn.execute("DROP TRIGGER metrics_count_finished_deployment ON deployments")
        conn.execute("TRUNCATE metrics_deployments_finished")
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, started_at, finished_at) "
            "VALUES ('old-1', 'up', 'succeeded', now() - interval '100 s', now())"
        )
    migrate(service_db)
    migrate(service_db)

    with TestClient(create_app(make_settings(service_db, tmp_path))) as client:
        samples = scrape(client)
    assert value(samples, "citrus_deployments", kind="up", state="succeeded") == 1
    assert (
        value(
            samples,
            "citrus_deployment_duration_seconds_bucket",
            kind="up",
            state="succeeded",
            le="120.0",
        )
        == 1
    )


async def _stale_check(conninfo: str) -> stale.StaleResult:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        return await stale.check(conn, 0)


def test_stale_transitions_are_counted(client: TestClient, service_db: str) -> None:
    insert_server(service_db, "late-1")
    insert_server(service_db, "late-2")

    result = asyncio.run(_stale_check(service_db))
    assert sorted(result.failed_agents) == ["agent-late-1", "agent-late-2"]
    failed = scrape(client)
    # The agent connects after all; the next check makes its server active again.
    with psycopg.connect(service_db) as conn:
        conn.execute("UPDATE agents SET status = 'online' WHERE name = 'agent-late-1'")
    asyncio.run(_stale_check(service_db))
    asyncio.run(_stale_check(service_db))  # nothing more to count
    recovered = scrape(client)

    name = "citrus_stale_transitions_total"
    assert value(failed, name, transition="agent_failed") == 2
    assert value(failed, name, transition="server_recovered") == 0
    assert value(recovered, name, transition="agent_failed") == 2
    assert value(recovered, name, transition="agent_recovered") == 1
    assert value(recovered, name, transition="server_recovered") == 1
    assert value(recovered, "citrus_servers", status="active") == 1
    assert value(recovered, "citrus_servers", status="failed") == 1


def test_boot_failures_are_counted_by_step(client: TestClient, service_db: str) -> None:
    key = secrets.token_hex(32)
    agent_id = str(uuid.uuid4())
    with psycopg.connect(service_db) as conn:
        conn.execute(
            "INSERT INTO agents (id, key, name) VALUES (%s, %s, 'agent-web-1')", (agent_id, key)
        )

    def report(seq: int, step: str, event: str) -> int:
        body = json.dumps(
            {
                "boot": str(uuid.uuid4()),
                "seq": seq,
                "at": int(time.time()),
                "step": step,
                "label": step,
                "event": event,
                "exit": 1 if event == "failure" else None,
                "tail": "curl: (22) The requested URL returned error: 403",
            },
        ).encode()
        ts = str(int(time.time()))
        return client.post(
            f"/boot-reports/{agent_id}",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-Citrus-Timestamp": ts,
                "X-Citrus-Signature": f"sha256={sign(key, ts, body)}",
            },
        ).status_code

    assert report(1, "fetch", "step") == 201
    assert report(2, "fetch", "failure") == 201
    assert report(2, "unit", "failure") == 201
    # A refused report (bad signature) changes nothing, counters included.
    refused = client.post(
        f"/boot-reports/{agent_id}",
        content=b"{}",
        headers={
            "X-Citrus-Timestamp": str(int(time.time())),
            "X-Citrus-Signature": "sha256=" + "0" * 64,
        },
    )
    assert refused.status_code == 401

    samples = scrape(client)

    name = "citrus_boot_failures_total"
    assert value(samples, name, step="fetch") == 1
    assert value(samples, name, step="unit") == 1
    assert value(samples, name, step="start") == 0
    assert rows(service_db, "SELECT count(*) FROM boot_steps") == [(3,)]
    # Destroying the agent removes its boot rows, not what was counted.
    with psycopg.connect(service_db) as conn:
        conn.execute("DELETE FROM agents WHERE id = %s", (agent_id,))
    assert value(scrape(client), name, step="fetch") == 1


def test_a_slow_database_answers_503_within_the_timeout(service_db: str, tmp_path: Path) -> None:
    settings = make_settings(service_db, tmp_path, CITRUS_DB_TIMEOUT="0.5")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        with psycopg.connect(service_db) as conn:
            conn.execute("LOCK TABLE metrics_counters IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            response = client.get("/metrics", headers=AUTH)
            took = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["error"] == "database_unavailable"
        assert took < 3
        assert client.get("/metrics", headers=AUTH).status_code == 200
