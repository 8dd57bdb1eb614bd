"""The stale-agent check on 1,000,000 agents of which 10,000 are stale, next to the bare SQL.

    .venv/bin/python -m bench.stale_check [--agents 1000000] [--stale 10000] [--runs 3]

Fleet: every agent has a server; `stale` agents are offline for an hour (servers
'provisioning'), 5,000 are offline but young, 1,000 came online (servers still 'provisioning'),
the rest are online with active servers. Each run starts from a fresh copy of that database
(CREATE DATABASE ... TEMPLATE), warmed and checkpointed the same way; the cases take turns,
and the median of each case's runs is reported with their range:
- bare statement: the agents UPDATE alone, as one would type it in psql;
- bare statements: the check's two statements as plain text (stale agents with their
  servers; provisioning servers whose agent is online or failed);
- stale check: queue.stale.check (what the worker's periodic job and the CLI run).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from citrus_deploy.queue import stale
from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store import queries
from citrus_deploy.store.migrate import migrate

BARE_AGENTS = (
    "UPDATE agents SET status = 'failed' "
    "WHERE status = 'offline' AND created_at < now() - interval '10 minutes'"
)
# The check's own statements, with the timeout written in: what one would run in psql.
BARE_CHECK = {
    name: queries.load()[name].replace(
        "make_interval(secs => %(timeout_seconds)s)", "interval '10 minutes'"
    )
    for name in ("fail_stale_agents", "settle_provisioning_servers")
}


YOUNG, CAME_ONLINE = 5_000, 1_000


def build(conninfo: str, agents: int, stale_count: int) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO agents (id, key, status, name, created_at)
            SELECT gen_random_uuid(), repeat('a', 64),
                   CASE WHEN i <= %(stale)s + %(young)s THEN 'offline' ELSE 'online' END,
                   'agent-s' || i,
                   CASE WHEN i <= %(stale)s THEN now() - interval '1 hour'
                        WHEN i <= %(stale)s + %(young)s THEN now()
                        ELSE now() - interval '2 hours' END
            FROM generate_series(1, %(agents)s) AS i
            """,
            {"stale": stale_count, "young": YOUNG, "agents": agents},
        )
        conn.execute(
            """
            INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id)
            SELECT 's' || substr(name, 8), substr(name, 8), 'sfo3', 's-1vcpu-512mb-10gb',
                   CASE WHEN status = 'offline' THEN 'provisioning'
                        WHEN substr(name, 8)::int <= %(limit)s THEN 'provisioning'
                        ELSE 'active' END,
                   id
            FROM agents
            """,
            {"limit": stale_count + YOUNG + CAME_ONLINE},
        )
        conn.execute("VACUUM ANALYZE agents")
        conn.execute("VACUUM ANALYZE servers")


def fresh_copy(server: PgServer, template: str, n: int) -> str:
    name = f"bench_{n}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    conninfo = server.conninfo(name)
    with psycopg.connect(conninfo, autocommit=True) as conn:  # same warm-up for every run
        conn.execute("SELECT count(*) FROM agents WHERE status = 'offline'")
        conn.execute("SELECT count(*) FROM servers WHERE status = 'provisioning'")
        conn.execute("SELECT count(*) FROM agents")
        conn.execute("SELECT count(*) FROM servers")
        # Start each run with nothing dirty left over from the copy for it to compete with.
        conn.execute("CHECKPOINT")
    return conninfo


def timed_sql(statements: list[str]) -> Callable[[str], float]:
    def run(conninfo: str) -> float:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            started = time.perf_counter()
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]
            return time.perf_counter() - started

    return run


def timed_check(stale_count: int) -> Callable[[str], float]:
    """Times queue.stale.check, which must change exactly the rows the fleet was built for."""
    expected = (stale_count, stale_count, CAME_ONLINE)

    async def run(conninfo: str) -> float:
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            started = time.perf_counter()
            result = await stale.check(conn, 600)
            elapsed = time.perf_counter() - started
        changed = (
            len(result.failed_agents),
            len(result.failed_servers),
            len(result.active_servers),
        )
        # A check that changed the wrong rows has no time worth printing.
        assert changed == expected, f"the check changed {changed}, expected {expected}"
        return elapsed

    return lambda conninfo: asyncio.run(run(conninfo))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=1_000_000)
    parser.add_argument("--stale", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    server = PgServer().start()
    try:
        template = "stale_template"
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
        migrate(server.conninfo(template))
        started = time.perf_counter()
        build(server.conninfo(template), args.agents, args.stale)
        print(f"built {args.agents:,} agents and servers in {time.perf_counter() - started:.0f} s")
        with psycopg.connect(server.conninfo(template)) as conn:  # rolled back: plans only
            for label, statement in [("bare statement", BARE_AGENTS), *BARE_CHECK.items()]:
                plan = conn.execute("EXPLAIN " + statement).fetchall()  # type: ignore[operator]
                scans = [
                    p.split("  (")[0].strip(" ->")
                    for (p,) in plan
                    if "Index Scan" in p or "Seq Scan" in p
                ]
                print(f"scans in {label}: {'; '.join(scans)}")
        # Every timed run would log the same 10,000 names.
        logging.getLogger("citrus.stale").setLevel(logging.ERROR)

        cases = {
            "bare statement (agents UPDATE only)": timed_sql([BARE_AGENTS]),
            "bare statements (the check's two, as text)": timed_sql(list(BARE_CHECK.values())),
            "stale check (queue.stale.check)": timed_check(args.stale),
        }
        times: dict[str, list[float]] = {label: [] for label in cases}
        n = 0
        for _ in range(args.runs):  # round robin, so that drift of the machine hits every case
            for label, run in cases.items():
                n += 1
                times[label].append(run(fresh_copy(server, template, n)))
    finally:
        server.destroy()

    base = statistics.median(times["bare statement (agents UPDATE only)"])
    print(f"{args.agents:,} agents, {args.stale:,} stale; median of {args.runs} runs")
    print("| what | ms | range ms | vs bare statement |")
    print("|---|---|---|---|")
    for label, runs in times.items():
        median = statistics.median(runs)
        spread = f"{1000 * min(runs):.0f}-{1000 * max(runs):.0f}"
        print(f"| {label} | {1000 * median:.1f} | {spread} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
