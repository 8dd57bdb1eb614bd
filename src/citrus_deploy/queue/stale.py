"""The stale-agent check: the old platform's 10-minute 'failed' rule, finally built.

Agents still 'offline' AGENT_CONNECT_TIMEOUT after their row was created become 'failed', and
so do their servers still 'provisioning' (one statement); an agent whose `up` is still queued or
running is left alone, since the provider writes the agent row before the droplet and the server
row. Servers still 'provisioning' whose agent is 'online' become 'active' (another). A server
the check failed becomes 'active' when its agent connects after all (the hub sets it 'online'
whatever it was; a third statement). Each runs in its own transaction; the boot verdicts of the
agents it fails (boot_reports.record_stale, one statement for all) are written in the failing
one's. Servers awaiting their agent are found through the side table servers_awaiting_agent
(store/migrations says why).
Several checkers may run at once (one per worker, or the CLI beside them): a row another
checker changed or removed first no longer matches when its lock is released, so each row
changes, and is reported, exactly once.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from citrus_deploy.errors import InvalidValue
from citrus_deploy.store import boot_reports, queries

log = logging.getLogger("citrus.stale")
_NAMES_IN_LOG = 20
_TIMEOUT_RULE = "must be a finite number of seconds >= 0 (0: every offline agent is stale)"


@dataclass(frozen=True)
class StaleResult:
    failed_agents: list[str] = field(default_factory=list)  # agent names
    failed_servers: list[str] = field(default_factory=list)
    active_servers: list[str] = field(default_factory=list)
    # Those of active_servers that were 'failed' (their agent connected after the timeout).
    recovered_servers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return len(self.failed_agents) + len(self.failed_servers) + len(self.active_servers)


def timeout_argument(text: str) -> float:
    """argparse type of `stale-check --timeout`: a negative timeout would make every offline
    agent stale at once, and nan or inf are no interval PostgreSQL can subtract."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{_TIMEOUT_RULE}, got {text!r}")
    return value


async def check(conn: psycopg.AsyncConnection[Any], timeout_seconds: float) -> StaleResult:
    """Runs the transitions on `conn` (autocommit or not: each is committed).

    InvalidValue (a ValueError) for a timeout that is negative, nan or infinite.
    """
    if not (math.isfinite(timeout_seconds) and timeout_seconds >= 0):
        raise InvalidValue("timeout_seconds", f"{_TIMEOUT_RULE}, got {timeout_seconds!r}")
    started = time.perf_counter()
    sql = queries.load()
    failed_agents: list[str] = []
    failed_servers: list[str] = []
    # Recovery first: a server failed by this very run has no online agent to be recovered by.
    recovered_servers = [
        name for (name,) in await _run(conn, sql["stale_recover_failed_servers"], {})
    ]
    active_servers: list[str] = list(recovered_servers)
    async with conn.transaction():
        cur = await conn.execute(sql["fail_stale_agents"], {"timeout_seconds": timeout_seconds})
        last_reports: list[boot_reports.LastReport] = []
        for kind, name, agent_id, step, label, event, tail in await cur.fetchall():
            if kind == "agent":
                failed_agents.append(name)
                last_reports.append(boot_reports.LastReport(agent_id, step, label, event, tail))
            else:
                failed_servers.append(name)
        # Where each failed agent's boot stopped (GET /admin/servers/{name}), one statement for
        # all of them, committed with the failure itself.
        await boot_reports.record_stale(conn, last_reports, timeout_seconds)
    for name, status in await _run(conn, sql["settle_provisioning_servers"], {}):
        (active_servers if status == "active" else failed_servers).append(name)
    result = StaleResult(
        failed_agents,
        failed_servers,
        active_servers,
        recovered_servers,
        time.perf_counter() - started,
    )
    _log(result, timeout_seconds)
    return result


async def _run(
    conn: psycopg.AsyncConnection[Any], statement: str, params: dict[str, Any]
) -> list[tuple[str, ...]]:
    async with conn.transaction():
        cur = await conn.execute(statement, params)
        return [tuple(row) for row in await cur.fetchall()]


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_IN_LOG])
    more = len(names) - _NAMES_IN_LOG
    return f"{shown} and {more} more" if more > 0 else shown


def _log(result: StaleResult, timeout_seconds: float) -> None:
    if result.failed_agents:
        log.warning(
            "stale check: %d agent(s) still offline after %gs marked failed: %s",
            len(result.failed_agents),
            timeout_seconds,
            _names(result.failed_agents),
        )
        log.debug("all agents marked failed: %s", ", ".join(result.failed_agents))
    if result.failed_servers:
        log.warning(
            "stale check: %d server(s) marked failed (agent never connected): %s",
            len(result.failed_servers),
            _names(result.failed_servers),
        )
    if result.active_servers:
        log.info(
            "stale check: %d server(s) active (agent online): %s",
            len(result.active_servers),
            _names(result.active_servers),
        )
    if result.recovered_servers:
        log.warning(
            "stale check: %d failed server(s) active again (agent connected late): %s",
            len(result.recovered_servers),
            _names(result.recovered_servers),
        )
    if not result.changed:
        log.debug("stale check: nothing to change (%.3fs)", result.seconds)
