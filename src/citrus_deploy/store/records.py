"""What the worker records of each deployment attempt, and the deployment as it reads back.

The writers run in the worker (start_attempt ... fail); the readers serve the API, the console
and the waits. Every statement is store/sql/deployments.sql's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.store import queries
from citrus_deploy.store.deployments import Deployment, NotFound


async def one(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(queries.load()[name], params)
    row: dict[str, Any] | None = await cur.fetchone()
    return row


async def get_deployment(
    pool: AsyncConnectionPool[Any], deployment_id: int, *, tail: int = 4000
) -> Deployment:
    async with pool.connection() as conn:
        row = await one(conn, "select_deployment", {"id": deployment_id, "tail": tail})
    if row is None:
        raise NotFound(f"no deployment {deployment_id}")
    return Deployment.from_row(row)


async def wait_until_finished(
    pool: AsyncConnectionPool[Any],
    deployment_id: int,
    timeout: float,
    *,
    interval: float = 0.25,
) -> Deployment:
    """Polls until the deployment finishes or `timeout` passes; returns the last state seen."""
    deadline = time.monotonic() + timeout
    while True:
        found = await get_deployment(pool, deployment_id, tail=0)
        if found.finished or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


async def _execute(pool: AsyncConnectionPool[Any], name: str, params: dict[str, Any]) -> int:
    async with pool.connection() as conn:
        cur = await conn.execute(queries.load()[name], params)
        count: int = cur.rowcount
        return count


async def start_attempt(
    pool: AsyncConnectionPool[Any], deployment_id: int, job_id: int | None
) -> Deployment | None:
    async with pool.connection() as conn:
        row = await one(conn, "start_attempt", {"id": deployment_id, "job_id": job_id})
    return Deployment.from_row(row) if row else None


async def beat(pool: AsyncConnectionPool[Any], deployment_id: int) -> None:
    await _execute(pool, "beat_deployment", {"id": deployment_id})


async def alive(pool: AsyncConnectionPool[Any], deployment_id: int, seconds: float) -> bool:
    """Whether the deployment's running attempt beat within `seconds` (its worker is alive)."""
    async with pool.connection() as conn:
        row = await one(conn, "deployment_alive", {"id": deployment_id, "seconds": seconds})
    return bool(row and row["alive"])


async def append_output(pool: AsyncConnectionPool[Any], deployment_id: int, text: str) -> None:
    await _execute(pool, "append_output", {"id": deployment_id, "text": text})


async def succeed(
    pool: AsyncConnectionPool[Any],
    deployment_id: int,
    outputs: dict[str, Any],
    *,
    program_hash: str | None = None,
) -> None:
    """`program_hash`: citrus.program.program_hash() of the code an `up` ran (GitOps compares
    it with the checkout it plans)."""
    params = {"id": deployment_id, "outputs": Jsonb(outputs), "program_hash": program_hash}
    await _execute(pool, "succeed_deployment", params)


async def fail(pool: AsyncConnectionPool[Any], deployment_id: int, error: str) -> None:
    """The deployment failed for good: it and its server (if it has a row) say so."""
    async with pool.connection() as conn, conn.transaction():
        row = await one(conn, "fail_deployment", {"id": deployment_id, "error": error})
        if row is not None:
            await conn.execute(queries.load()["fail_server"], {"server_name": row["server_name"]})


async def needs_operator(
    pool: AsyncConnectionPool[Any], deployment_id: int, error: str, repair: str
) -> None:
    """A killed update left the stack half done: the record says what to run; no retry."""
    text = f"{error}\nTo repair, an operator runs:\n{repair}"
    await _execute(pool, "needs_operator_deployment", {"id": deployment_id, "error": text})


async def requeue(
    pool: AsyncConnectionPool[Any], deployment_id: int, error: str, note: str
) -> None:
    await _execute(
        pool, "requeue_deployment", {"id": deployment_id, "error": error, "text": note + "\n"}
    )


async def interrupt(
    pool: AsyncConnectionPool[Any], deployment_id: int, attempts: int, error: str
) -> bool:
    """Marks a running attempt whose worker vanished; False when another checker did it."""
    async with pool.connection() as conn:
        row = await one(
            conn,
            "interrupt_deployment",
            {"id": deployment_id, "attempts": attempts, "error": error, "text": f"!! {error}\n"},
        )
    return row is not None


async def failed_servers_without_deployment(
    pool: AsyncConnectionPool[Any],
    *,
    backoff: float,
    backoff_max: float = 6 * 3600,
    limit: int = 100,
) -> Sequence[str]:
    """Failed servers to destroy now (never one whose agent is online); one whose destroy keeps
    failing waits longer each time. A list to act on with enqueue_destroy(only_if_failed=True),
    which decides again."""
    params = {"limit": limit, "backoff": backoff, "backoff_max": backoff_max}
    async with pool.connection() as conn:
        cur = await conn.execute(queries.load()["select_failed_servers_without_deployment"], params)
        return [r[0] for r in await cur.fetchall()]
