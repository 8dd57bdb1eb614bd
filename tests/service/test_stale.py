"""The stale-agent check on rows whose created_at is moved back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from db import queries
from db.__main__ import migrate
from service import stale, tasks
from service.pool import open_pool
from service.worker import remediate
from standin.engine import ROOT
from tests.service.conftest import AUTH, make_settings, rows, service_env

TIMEOUT = 600.0


def add(
    conn: psycopg.Connection,
    name: str,
    *,
    agent: str,
    age_minutes: float,
    server: str | None = "provisioning",
) -> None:
    agent_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO agents (id, key, status, name, created_at) "
        "VALUES (%s, %s, %s, %s, now() - make_interval(mins => %s))",
        (agent_id, "b" * 64, agent, f"agent-{name}", age_minutes),
    )
    if server:
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id) "
            "VALUES (%s, %s, 'sfo3', 's-1vcpu-512mb-10gb', %s, %s)",
            (name, f"d-{name}", server, agent_id),
        )


@pytest.fixture
def fleet(database: str) -> str:
    with psycopg.connect(database) as conn:
        add(conn, "stale-1", agent="offline", age_minutes=11)
        add(conn, "stale-2", agent="offline", age_minutes=60 * 24)
        add(conn, "stale-nodroplet", agent="offline", age_minutes=11, server=None)
        add(conn, "young-1", agent="offline", age_minutes=9)
        add(conn, "online-1", agent="online", age_minutes=30)
        add(conn, "online-young", agent="online", age_minutes=1)
        add(conn, "active-1", agent="online", age_minutes=30, server="active")
        add(conn, "failed-deploy", agent="online", age_minutes=30, server="failed")
        add(conn, "failed-before", agent="failed", age_minutes=30, server="failed")
        add(conn, "late-row", agent="failed", age_minutes=30, server="provisioning")
    return database


async def run_check(conninfo: str) -> stale.StaleResult:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        return await stale.check(conn, TIMEOUT)


def states(conninfo: str) -> dict[str, tuple[str, str | None]]:
    found = rows(
        conninfo,
        "SELECT a.name, a.status, s.status FROM agents a LEFT JOIN servers s ON s.agent_id = a.id",
    )
    return {name.removeprefix("agent-"): (agent, server) for name, agent, server in found}


def test_exactly_the_expected_rows_change(fleet: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="citrus.stale")
    result = asyncio.run(run_check(fleet))

    assert sorted(result.failed_agents) == [
        "agent-stale-1",
        "agent-stale-2",
        "agent-stale-nodroplet",
    ]
    assert sorted(result.failed_servers) == ["late-row", "stale-1", "stale-2"]
    assert sorted(result.active_servers) == ["online-1", "online-young"]
    assert states(fleet) == {
        "stale-1": ("failed", "failed"),
        "stale-2": ("failed", "failed"),
        "stale-nodroplet": ("failed", None),
        "young-1": ("offline", "provisioning"),
        "online-1": ("online", "active"),
        "online-young": ("online", "active"),
        "active-1": ("online", "active"),
        "failed-deploy": ("online", "failed"),  # failed by its deployment: stays failed
        "failed-before": ("failed", "failed"),
        "late-row": ("failed", "failed"),  # row written after its agent had failed
    }
    logged = caplog.text
    assert "3 agent(s) still offline after 600s marked failed" in logged
    assert "agent-stale-1" in logged
    assert "2 server(s) active" in logged


def test_a_second_run_changes_nothing(fleet: str) -> None:
    asyncio.run(run_check(fleet))
    again = asyncio.run(run_check(fleet))

    assert again.changed == 0


def test_two_checkers_at_once_change_each_row_once(database: str) -> None:
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO agents (id, key, status, name, created_at) "
            "SELECT gen_random_uuid(), repeat('c', 64), 'offline', 'agent-bulk-' || i, "
            "now() - interval '1 hour' FROM generate_series(1, 3000) AS i"
        )
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, agent_id) "
            "SELECT 'bulk-' || substr(name, 12), 'd-' || name, 'sfo3', 's', id FROM agents"
        )

    async def both() -> list[stale.StaleResult]:
        return list(await asyncio.gather(run_check(database), run_check(database)))

    first, second = asyncio.run(both())

    agents = first.failed_agents + second.failed_agents
    servers = first.failed_servers + second.failed_servers
    assert len(agents) == len(set(agents)) == 3000
    assert len(servers) == len(set(servers)) == 3000
    assert rows(database, "SELECT status, count(*) FROM agents GROUP BY 1") == [("failed", 3000)]


def test_only_servers_whose_agent_is_still_offline_stay_awaiting(fleet: str) -> None:
    asyncio.run(run_check(fleet))

    awaiting = rows(
        fleet,
        "SELECT s.name FROM servers_awaiting_agent w JOIN servers s ON s.id = w.server_id",
    )
    assert awaiting == [("young-1",)]


def test_a_server_failed_by_its_deployment_stays_failed_and_leaves_the_queue(
    database: str,
) -> None:
    with psycopg.connect(database) as conn:
        add(conn, "deploy-broke", agent="offline", age_minutes=1)
        conn.execute(queries.load()["fail_server"], {"server_name": "deploy-broke"})
        conn.execute("UPDATE agents SET status = 'online' WHERE name = 'agent-deploy-broke'")

    result = asyncio.run(run_check(database))

    assert result.changed == 0
    assert states(database)["deploy-broke"] == ("online", "failed")
    assert rows(database, "SELECT count(*) FROM servers_awaiting_agent") == [(0,)]


def test_server_status_changes_write_no_index_entry(fleet: str) -> None:
    """Every servers update of the check is HOT: no index mentions servers.status."""
    sql = queries.load()
    with psycopg.connect(fleet) as conn:  # one transaction, so its own statistics are visible
        conn.execute(sql["fail_stale_agents"], {"timeout_seconds": TIMEOUT})
        conn.execute(sql["settle_provisioning_servers"])
        ((updated, hot),) = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
            "WHERE relname = 'servers'"
        ).fetchall()

    assert (updated, hot) == (5, 5)  # stale-1, stale-2, late-row failed; online-* active


def test_migrate_queues_provisioning_servers_written_before_the_trigger(database: str) -> None:
    with psycopg.connect(database) as conn:
        conn.execute("ALTER TABLE servers DISABLE TRIGGER servers_await_agent")
        add(conn, "older", agent="online", age_minutes=30)
        conn.execute("ALTER TABLE servers ENABLE TRIGGER servers_await_agent")
    assert rows(database, "SELECT count(*) FROM servers_awaiting_agent") == [(0,)]

    migrate(database)
    result = asyncio.run(run_check(database))

    assert result.active_servers == ["older"]


def test_the_statement_uses_the_partial_index(database: str) -> None:
    statement = queries.load()["fail_stale_agents"]
    with psycopg.connect(database) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute("EXPLAIN " + statement, {"timeout_seconds": TIMEOUT}).fetchall()  # type: ignore[call-overload]

    assert "agents_offline_created_at" in "\n".join(line for (line,) in plan)


def test_the_cli_runs_the_check(fleet: str, tmp_path: Path) -> None:
    env = {**service_env(fleet, tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "stale-check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    assert "3 agent(s) failed, 3 server(s) failed, 2 server(s) active" in done.stdout
    assert states(fleet)["stale-1"] == ("failed", "failed")


def test_the_check_is_a_periodic_job_every_minute() -> None:
    (periodic,) = [
        p
        for p in tasks.app.periodic_registry.periodic_tasks.values()
        if p.task is tasks.stale_check
    ]

    assert periodic.cron == "* * * * *"


async def check_and_remediate(conninfo: str, tmp_path: Path, backoff: float = 300) -> list[str]:
    await run_check(conninfo)
    pool = open_pool(make_settings(conninfo, tmp_path), max_size=2)
    await pool.open(wait=True)
    try:
        with tasks.app.replace_connector(tasks.procrastinate.PsycopgConnector()) as queue:
            async with queue.open_async(pool):
                return await remediate(pool, backoff=backoff)
    finally:
        await pool.close()


def test_remediation_queues_the_destroy_of_failed_servers(service_db: str, tmp_path: Path) -> None:
    with psycopg.connect(service_db) as conn:
        add(conn, "stale-1", agent="offline", age_minutes=11)
        add(conn, "fine-1", agent="online", age_minutes=11, server="active")
        # An `up` that failed after its droplet, before its servers row: an orphan otherwise.
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, error) "
            "VALUES ('half-1', 'up', 'failed', 'boom'), ('retried-1', 'up', 'failed', 'boom'), "
            "('retried-1', 'up', 'succeeded', NULL)"
        )
        add(conn, "retried-1", agent="online", age_minutes=11, server="active")

    queued = asyncio.run(check_and_remediate(service_db, tmp_path))

    assert queued == ["half-1", "stale-1"]
    assert rows(
        service_db, "SELECT server_name, kind FROM deployments WHERE state = 'queued' ORDER BY 1"
    ) == [("half-1", "destroy"), ("stale-1", "destroy")]


def _history(conn: psycopg.Connection, name: str, *steps: tuple[str, str, float]) -> None:
    """Finished deployments of `name`, oldest first: (kind, state, minutes ago)."""
    for kind, state, minutes_ago in steps:
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, finished_at) "
            "VALUES (%s, %s, %s, now() - %s * interval '1 minute')",
            (name, kind, state, minutes_ago),
        )


def test_a_destroy_that_keeps_failing_is_retried_less_and_less_often(
    service_db: str, tmp_path: Path
) -> None:
    up = ("up", "succeeded", 600.0)
    with psycopg.connect(service_db) as conn:
        for name in ("once-1m", "once-6m", "thrice-10m", "thrice-21m", "many-5h", "many-7h"):
            add(conn, name, agent="failed", age_minutes=600, server="failed")
        # backoff 5 min: 1 failure -> 5 min, 3 in a row -> 20 min, many -> capped at 6 hours
        _history(conn, "once-1m", up, ("destroy", "failed", 1))
        _history(conn, "once-6m", up, ("destroy", "failed", 6))
        _history(conn, "thrice-10m", up, *[("destroy", "failed", m) for m in (30, 20, 10)])
        _history(conn, "thrice-21m", up, *[("destroy", "failed", m) for m in (40, 30, 21)])
        _history(conn, "many-5h", up, *[("destroy", "failed", 300) for _ in range(40)])
        _history(conn, "many-7h", up, *[("destroy", "failed", 420) for _ in range(40)])
        # Failures before a later successful `up` belong to an earlier life of the name.
        add(conn, "reborn", agent="failed", age_minutes=30, server="failed")
        _history(conn, "reborn", *[("destroy", "failed", 2) for _ in range(5)], up)
        # A failed `up` without its row stays a candidate after its destroy failed.
        _history(conn, "half-1", ("up", "failed", 30), ("destroy", "failed", 6))
        _history(conn, "half-2", ("up", "failed", 30), ("destroy", "failed", 1))
        # ... and is done with once a destroy succeeded.
        _history(conn, "half-3", ("up", "failed", 30), ("destroy", "succeeded", 20))

    queued = asyncio.run(check_and_remediate(service_db, tmp_path, backoff=300))

    assert queued == ["half-1", "many-7h", "once-6m", "reborn", "thrice-21m"]


def test_get_shows_the_flipped_row(service_db: str, client: TestClient) -> None:
    with psycopg.connect(service_db) as conn:
        add(conn, "stale-1", agent="offline", age_minutes=11)
    asyncio.run(run_check(service_db))

    shown = client.get("/admin/servers/stale-1", headers=AUTH).json()

    assert (shown["status"], shown["agent"]["status"]) == ("failed", "failed")
