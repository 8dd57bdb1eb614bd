"""The worker's output recorder against the test PostgreSQL: no line of output goes missing.

A destroy with the engine stand-in takes a few milliseconds, so the recorder's last periodic flush
is often still in flight when the deployment ends; CI once showed a finished destroy with an
empty output. These tests hold that race open on purpose.
"""

from __future__ import annotations

import asyncio

import psycopg
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.queue.runner import OutputRecorder
from tests.service.conftest import fault_trigger, rows


def _deployment(conninfo: str, name: str = "rec-1") -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "INSERT INTO deployments (server_name, kind, state) VALUES (%s, 'up', 'running')"
            " RETURNING id",
            [name],
        ).fetchone()
    assert row is not None
    return int(row[0])


def _slow_appends(conninfo: str, *, fail_first: bool = False) -> None:
    """Each append to the output takes 20 ms (and the first one fails, if asked)."""
    times = "once" if fail_first else "never"
    fault_trigger(
        conninfo, "UPDATE OF output ON deployments", sqlstate="08006", times=times, delay=0.02
    )


async def _record(conninfo: str, deployment_id: int, lines: list[str], pause: float) -> None:
    async with (
        AsyncConnectionPool(conninfo, min_size=1, max_size=2, open=False) as pool,
        OutputRecorder(pool, deployment_id, str, interval=0.001) as recorder,
    ):
        for line in lines:
            await recorder.line(line)
            await asyncio.sleep(pause)


def _output(conninfo: str, deployment_id: int) -> str:
    [(output,)] = rows(conninfo, "SELECT output FROM deployments WHERE id = %s", [deployment_id])
    return str(output)


def test_every_line_is_stored_when_the_block_ends_mid_flush(service_db: str) -> None:
    _slow_appends(service_db)
    for attempt in range(10):
        deployment_id = _deployment(service_db, f"rec-{attempt}")
        lines = [f"attempt {attempt} line {i}" for i in range(3)]
        # The last line lands while the flush of the first ones is still running.
        asyncio.run(_record(service_db, deployment_id, lines, pause=0.005))

        assert _output(service_db, deployment_id) == "".join(f"{line}\n" for line in lines)


def test_lines_of_a_failed_flush_are_kept_for_the_next(service_db: str) -> None:
    _slow_appends(service_db, fail_first=True)
    deployment_id = _deployment(service_db)
    lines = ["== attempt 1: up rec-1", " +  AgentRow created", "Update succeeded"]

    asyncio.run(_record(service_db, deployment_id, lines, pause=0.03))

    assert _output(service_db, deployment_id) == "".join(f"{line}\n" for line in lines)
