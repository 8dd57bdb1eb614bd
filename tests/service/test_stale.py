"""The stale-agent check on rows whose created_at is moved back."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from citrus_deploy.queue import stale, tasks
from citrus_deploy.queue.maintenance import remediate
from citrus_deploy.store import queries
from citrus_deploy.store.migrate import migrate
from citrus_deploy.store.pool import open_pool
from tests.conftest import AN_EARLIER_RELEASE
from tests.paths import REPO
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


def test_only_servers_whose_agent_is_offline_or_failed_by_the_check_stay_awaiting(
    fleet: str,
) -> None:
    asyncio.run(run_check(fleet))

    awaiting = rows(
        fleet,
        "SELECT s.name, w.failed FROM servers_awaiting_agent w "
        "JOIN servers s ON s.id = w.server_id ORDER BY 1",
    )
    # The failed ones wait for an agent that connects late; failed-deploy is not among them.
    assert awaiting == [
        ("late-row", True),
        ("stale-1", True),
        ("stale-2", True),
        ("young-1", False),
    ]


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
    """Every servers update of the check is HOT: no index mentions servers.status; so is the
    marking of servers_awaiting_agent rows (no index mentions `failed`)."""
    sql = queries.load()
    with psycopg.connect(fleet) as conn:  # one transaction, so its own statistics are visible
        conn.execute(sql["stale_recover_failed_servers"])
        conn.execute(sql["fail_stale_agents"], {"timeout_seconds": TIMEOUT})
        conn.execute(sql["settle_provisioning_servers"])
        conn.execute("UPDATE agents SET status = 'online' WHERE name = 'agent-stale-1'")
        conn.execute(sql["stale_recover_failed_servers"])
        updates: dict[str, list[int]] = dict(
            conn.execute(
                "SELECT relname, array[n_tup_upd, n_tup_hot_upd] FROM pg_stat_xact_user_tables "
                "WHERE relname IN ('servers', 'servers_awaiting_agent')"
            ).fetchall()
        )

    # stale-1, stale-2, late-row failed; online-* active; stale-1 active again
    assert updates["servers"] == [6, 6]
    assert updates["servers_awaiting_agent"] == [3, 3]  # stale-1, stale-2, late-row marked


def test_migrate_queues_provisioning_servers_written_before_the_trigger(database: str) -> None:
    with psycopg.connect(database) as conn:
        conn.execute(AN_EARLIER_RELEASE)
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
        [sys.executable, "-m", "citrus_deploy", "service", "stale-check"],
        cwd=REPO,
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


# -- an agent that connects late (after the check failed it) ------------------------------------


def hub_connects(conninfo: str, name: str) -> None:
    """What the Engine Hub does when an agent connects, whatever the row's status was."""
    with psycopg.connect(conninfo) as conn:
        conn.execute("UPDATE agents SET status = 'online' WHERE name = %s", (f"agent-{name}",))


async def run_check_with(conninfo: str, timeout: float) -> stale.StaleResult:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        return await stale.check(conn, timeout)


def test_a_server_failed_for_a_slow_agent_becomes_active_when_the_agent_connects(
    database: str,
) -> None:
    with psycopg.connect(database) as conn:
        add(conn, "slow-1", agent="offline", age_minutes=1)
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state) "
            "VALUES ('slow-1', 'up', 'succeeded')"
        )
    failed = asyncio.run(run_check_with(database, 0))
    assert (failed.failed_agents, failed.failed_servers) == (["agent-slow-1"], ["slow-1"])

    hub_connects(database, "slow-1")
    result = asyncio.run(run_check(database))

    assert states(database)["slow-1"] == ("online", "active")
    assert (result.active_servers, result.recovered_servers) == (["slow-1"], ["slow-1"])
    assert rows(database, "SELECT count(*) FROM servers_awaiting_agent") == [(0,)]
    assert asyncio.run(run_check(database)).changed == 0


def test_a_server_written_after_its_agent_failed_becomes_active_when_the_agent_connects(
    fleet: str,
) -> None:
    asyncio.run(run_check(fleet))
    assert states(fleet)["late-row"] == ("failed", "failed")

    hub_connects(fleet, "late-row")
    result = asyncio.run(run_check(fleet))

    assert result.recovered_servers == ["late-row"]
    assert states(fleet)["late-row"] == ("online", "active")


def test_a_server_failed_by_its_deployment_stays_failed_when_its_late_agent_connects(
    database: str,
) -> None:
    with psycopg.connect(database) as conn:  # as records.fail records it
        add(conn, "deploy-broke", agent="offline", age_minutes=1)
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, error) "
            "VALUES ('deploy-broke', 'up', 'failed', 'boom')"
        )
        conn.execute(queries.load()["fail_server"], {"server_name": "deploy-broke"})
    asyncio.run(run_check_with(database, 0))  # its agent fails too; the server was failed before
    assert states(database)["deploy-broke"] == ("failed", "failed")

    hub_connects(database, "deploy-broke")
    result = asyncio.run(run_check(database))

    assert result.changed == 0
    assert states(database)["deploy-broke"] == ("online", "failed")
    assert rows(database, "SELECT count(*) FROM servers_awaiting_agent") == [(0,)]


def test_a_server_back_to_provisioning_is_awaited_again_not_recovered(database: str) -> None:
    with psycopg.connect(database) as conn:
        add(conn, "again-1", agent="offline", age_minutes=1)
    asyncio.run(run_check_with(database, 0))
    with psycopg.connect(database) as conn:  # by hand, with a fresh agent row
        conn.execute("UPDATE servers SET status = 'provisioning' WHERE name = 'again-1'")
        conn.execute("UPDATE agents SET status = 'offline', created_at = now()")

    asyncio.run(run_check(database))

    assert states(database)["again-1"] == ("offline", "provisioning")
    assert rows(database, "SELECT failed FROM servers_awaiting_agent") == [(False,)]


def test_every_statement_of_the_check_has_an_index_path_to_servers_agents_and_deployments(
    database: str,
) -> None:
    """With sequential scans priced out, one left on these tables means no index could serve it."""
    sql = queries.load()
    plans = []
    with psycopg.connect(database) as conn:
        conn.execute("SET enable_seqscan = off")
        for name in (
            "stale_recover_failed_servers",
            "fail_stale_agents",
            "settle_provisioning_servers",
        ):
            plan = conn.execute("EXPLAIN " + sql[name], {"timeout_seconds": TIMEOUT})
            plans.append("\n".join(line for (line,) in plan.fetchall()))

    for table in ("servers", "agents", "deployments"):
        assert not [p for p in plans if f"Seq Scan on {table} " in p], table


def test_recovery_looks_up_only_the_agents_of_failed_servers(database: str) -> None:
    """Nearly every agent is online: a plain join would hash them all, every minute."""
    with psycopg.connect(database) as conn:
        conn.execute(
            "INSERT INTO agents (id, key, status, name, created_at) "
            "SELECT gen_random_uuid(), repeat('c', 64), "
            "       CASE WHEN i <= 2000 THEN 'offline' ELSE 'online' END, 'agent-bulk-' || i, "
            "       now() - interval '1 hour' FROM generate_series(1, 40000) AS i"
        )
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id) "
            "SELECT 'bulk-' || substr(name, 12), 'd-' || name, 'sfo3', 's', "
            "       CASE WHEN status = 'offline' THEN 'provisioning' ELSE 'active' END, id "
            "FROM agents"
        )
    asyncio.run(run_check(database))  # 2,000 servers failed, marked
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("ANALYZE")
        plan = conn.execute("EXPLAIN " + queries.load()["stale_recover_failed_servers"]).fetchall()
    shown = "\n".join(line for (line,) in plan)

    assert "Seq Scan on agents" not in shown, shown
    assert "agents_pkey" in shown, shown


# -- the boot verdicts of the failed agents ------------------------------------------------------


def counting_cursors(seen: list[str]) -> type[psycopg.AsyncCursor[Any]]:
    """A cursor class that notes each statement it sends (the connection's `cursor_factory`)."""

    class Counting(psycopg.AsyncCursor[Any]):
        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            seen.append(str(query).split("\n")[0][:60])
            return await super().execute(query, params, **kwargs)

    return Counting


def add_stale(conninfo: str, count: int) -> None:
    with psycopg.connect(conninfo) as conn:
        for i in range(count):
            add(conn, f"many-{i}", agent="offline", age_minutes=11)


async def statements_of_a_check(conninfo: str) -> list[str]:
    seen: list[str] = []
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, cursor_factory=counting_cursors(seen)
    ) as conn:
        await stale.check(conn, TIMEOUT)
    return seen


@pytest.mark.parametrize("failed_agents", [1, 2, 60])
def test_the_check_sends_the_same_statements_however_many_agents_fail(
    database: str, failed_agents: int
) -> None:
    """Issue 20: an INSERT per failed agent (its boot verdict) made the check 15x its bare
    UPDATE. Four statements: recovery, failing (with each agent's last report), settling, and
    every verdict at once."""
    add_stale(database, failed_agents)

    sent = asyncio.run(statements_of_a_check(database))

    assert rows(database, "SELECT count(*) FROM boot_steps WHERE event = 'stale'") == [
        (failed_agents,)
    ]
    assert len(sent) == 4, sent


def test_each_failed_agent_gets_the_verdict_of_its_own_last_report(database: str) -> None:
    """Recorded together, each verdict still says where that agent's own boot stopped."""
    reports = {
        "none-1": [],
        "fetch-1": [("step", "fetch", None), ("failure", "fetch", "x returned error: 403")],
        "fetch-2": [("step", "fetch", None), ("failure", "fetch", "y returned error: 404")],
        "ok-1": [("step", "verify", None), ("success", "verify", None)],
        "midway-1": [("step", "packages", None)],
    }
    with psycopg.connect(database) as conn:
        for name, sent in reports.items():
            add(conn, name, agent="offline", age_minutes=11)
            for seq, (event, step, tail) in enumerate(sent, 1):
                conn.execute(
                    "INSERT INTO boot_steps (agent_id, boot_id, seq, step, label, event, tail, "
                    "reported_at, signed_at, signature) SELECT id, 'b', %s, %s, %s, %s, %s, "
                    "now(), now(), md5(random()::text) FROM agents WHERE name = %s",
                    (seq, step, f"{step} as the script says", event, tail, f"agent-{name}"),
                )

    asyncio.run(run_check(database))

    verdicts = dict(
        rows(
            database,
            "SELECT a.name, b.step || ': ' || b.label FROM boot_steps b "
            "JOIN agents a ON a.id = b.agent_id WHERE b.event = 'stale'",
        )
    )
    head = "no agent after 600 s; "
    assert verdicts == {
        "agent-none-1": "other: " + head + "no boot report arrived (bootReportUrl unset, or the "
        "droplet never reached the service)",
        "agent-fetch-1": "fetch: " + head + "boot stopped at 'fetch agent': HTTP 403 from the "
        "repository",
        "agent-fetch-2": "fetch: " + head + "boot stopped at 'fetch agent': HTTP 404 from the "
        "repository",
        "agent-ok-1": "verify: " + head + "the boot script succeeded, but the agent never "
        "connected to the hub",
        "agent-midway-1": "packages: " + head + "boot stopped at 'install packages' (no outcome "
        "reported after it)",
    }


def test_an_agent_failed_again_keeps_its_first_verdict(database: str) -> None:
    """At most one verdict per agent (boot_steps_one_stale): failing it again adds none."""
    add_stale(database, 2)
    asyncio.run(run_check(database))
    with psycopg.connect(database) as conn:  # by hand, as an operator might
        conn.execute("UPDATE agents SET status = 'offline' WHERE name = 'agent-many-0'")

    again = asyncio.run(run_check(database))

    assert again.failed_agents == ["agent-many-0"]
    assert rows(database, "SELECT count(*) FROM boot_steps WHERE event = 'stale'") == [(2,)]


# -- an `up` still in flight --------------------------------------------------------------------


def test_an_agent_whose_up_is_still_running_is_left_alone(database: str) -> None:
    """The agent row is written first and the server row after the droplet: a check between must
    not fail an agent whose `up` will report success. Named as the program names it, by the
    deployment's agentName or agent-<server name>."""
    with psycopg.connect(database) as conn:
        add(conn, "busy-1", agent="offline", age_minutes=60, server=None)
        add(conn, "busy-2", agent="offline", age_minutes=60, server=None)
        add(conn, "queued-1", agent="offline", age_minutes=60, server=None)
        add(conn, "1700000000000", agent="offline", age_minutes=60, server=None)
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, config) VALUES "
            "('busy-1', 'up', 'running', '{}'), "
            "('busy-2', 'up', 'succeeded', '{}'), "
            "('queued-1', 'up', 'queued', '{}'), "
            "('server-1700000000000', 'up', 'running', %s)",
            (Jsonb({"serverName": "server-1700000000000", "agentName": "agent-1700000000000"}),),
        )

    result = asyncio.run(run_check_with(database, 0))

    assert result.failed_agents == ["agent-busy-2"]
    assert states(database)["busy-1"] == ("offline", None)
    assert states(database)["queued-1"] == ("offline", None)
    assert states(database)["1700000000000"] == ("offline", None)


def test_once_the_up_has_finished_the_timeout_counts_from_the_agent_row(database: str) -> None:
    """The chosen rule: in flight, never failed; finished, AGENT_CONNECT_TIMEOUT after the agent
    row as before (the `up` between the two rows takes a minute, not the timeout's ten)."""
    with psycopg.connect(database) as conn:
        add(conn, "busy-1", agent="offline", age_minutes=11, server=None)
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state) VALUES ('busy-1', 'up', 'running')"
        )
    assert asyncio.run(run_check(database)).changed == 0
    with psycopg.connect(database) as conn:  # the provider writes the row, the `up` succeeds
        agent_id = conn.execute("SELECT id FROM agents").fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, agent_id) "
            "VALUES ('busy-1', 'd-busy-1', 'sfo3', 's', %s)",
            (agent_id,),
        )
        conn.execute("UPDATE deployments SET state = 'succeeded'")

    result = asyncio.run(run_check(database))

    assert (result.failed_agents, result.failed_servers) == (["agent-busy-1"], ["busy-1"])


# -- --timeout -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "-0.001", "nan", "inf", "-inf", "1e999", "ten"])
def test_the_cli_refuses_a_timeout_that_is_not_finite_and_non_negative(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from citrus_deploy.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["service", "stale-check", f"--timeout={value}"])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --timeout" in err
    assert "finite number of seconds >= 0" in err
    assert value in err


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -5.0])
def test_the_check_refuses_a_timeout_that_is_not_finite_and_non_negative(
    database: str, value: float
) -> None:
    with pytest.raises(ValueError, match="finite number of seconds >= 0"):
        asyncio.run(run_check_with(database, value))
