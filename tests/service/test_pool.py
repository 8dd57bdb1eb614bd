"""The web's and the worker's connection pool against a PostgreSQL of its own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.pool import IDLE_CHECK_SECONDS, open_pool
from tests.service.conftest import make_settings


async def _select_one(pool: AsyncConnectionPool[Any]) -> Any:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT 1")
        return await cur.fetchone()


def test_a_connection_idle_through_a_restart_is_replaced(own_pg: PgServer, tmp_path: Path) -> None:
    """The first request after the database came back succeeds: no stale connection is used."""
    pool = open_pool(make_settings(own_pg.conninfo(), tmp_path), max_size=1, autocommit=True)

    async def scenario() -> Any:
        async with pool:
            await _select_one(pool)
            own_pg.stop()
            own_pg.restart()  # starts it again
            await asyncio.sleep(IDLE_CHECK_SECONDS)
            return await _select_one(pool)

    assert asyncio.run(scenario()) == (1,)


def test_a_connection_in_steady_use_is_not_checked_at_every_checkout(
    own_pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check is a round trip: about a tenth of the web's CPU under load (py-spy)."""
    checks = []
    real_check = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        checks.append(conn)
        await real_check(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))
    pool = open_pool(make_settings(own_pg.conninfo(), tmp_path), max_size=1, autocommit=True)

    async def scenario() -> None:
        async with pool:
            for _ in range(50):
                await _select_one(pool)

    asyncio.run(scenario())

    assert len(checks) == 1  # the new connection's first checkout
