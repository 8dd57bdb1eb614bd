"""The connection pool of the web and the worker processes."""

from __future__ import annotations

import time
import weakref
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.settings import Settings

# A connection given back this recently is not checked again when it is taken.
IDLE_CHECK_SECONDS = 1.0


class IdleCheck:
    """Checks a connection when it is taken from the pool, unless it was in use moments ago.

    psycopg_pool's `check_connection` costs a round trip on every checkout: about a tenth of the
    web's CPU under load. A connection that sat idle may have been cut meanwhile (a database
    restart, a proxy's idle timeout) and is checked as before; one given back less than
    `seconds` ago has just worked. A connection that broke in use is not given back: the pool
    drops it.
    """

    def __init__(self, seconds: float = IDLE_CHECK_SECONDS) -> None:
        self.seconds = seconds
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned[conn] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        returned = self._returned.pop(conn, None)
        if returned is None or time.monotonic() - returned >= self.seconds:
            await AsyncConnectionPool.check_connection(conn)


def open_pool(
    settings: Settings, *, max_size: int, autocommit: bool = False
) -> AsyncConnectionPool[Any]:
    """A pool that is not open yet (`await pool.open()`), with the settings' timeouts."""
    idle = IdleCheck()
    kwargs: dict[str, Any] = {"connect_timeout": max(1, int(settings.db_timeout_seconds))}
    if autocommit:
        kwargs["autocommit"] = True
    return AsyncConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=settings.db_timeout_seconds,
        check=idle.check,
        reset=idle.reset,
        kwargs=kwargs,
    )
