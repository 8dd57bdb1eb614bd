"""Stand-in for the Citrus Engine Hub, for the boot tests: the one thing an agent talks to.

It keeps the contract the real hub has with agents and with our database (DESIGN.md section 1):
the agent's first message is `{"type": "auth", "agentId", "agentKey"}`; if `agents` has that id
with that key the hub sets `status='online'` and answers `{"type": "auth_ok"}`, otherwise it
answers `{"type": "auth_failed"}` and closes with 4401. It records who authenticated and when,
and who was refused (agent id only: keys never reach a record or a log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import psycopg
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

AUTH_SQL = "UPDATE agents SET status = 'online' WHERE id = %(id)s AND key = %(key)s RETURNING id"
AUTH_TIMEOUT = 10.0
REFUSED_CODE = 4401


@dataclass(frozen=True)
class AuthEvent:
    """One authentication attempt; `at` is wall-clock time (time.time())."""

    agent_id: str | None
    at: float
    reason: str = ""


class Hub:
    """WebSocket server on 127.0.0.1:<free port>, in a background thread; a context manager."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.authenticated: list[AuthEvent] = []
        self.refused: list[AuthEvent] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hub", daemon=True)
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> Hub:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._stop(self._server), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def is_online(self, agent_id: str) -> bool:
        """Whether an agent with this id has authenticated (a handy `settle` for Machine.boot)."""
        return any(e.agent_id == agent_id for e in self.authenticated)

    async def _start(self) -> Server:
        server = await serve(self._handle, "127.0.0.1", 0)
        self.port = next(iter(server.sockets)).getsockname()[1]
        return server

    async def _stop(self, server: Server) -> None:
        server.close()
        await server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            raw = await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT)
        except ConnectionClosed:
            return
        except TimeoutError:
            await self._refuse(ws, None, "no auth message")
            return
        try:
            msg = json.loads(raw)
            agent_id, key = str(msg["agentId"]), str(msg["agentKey"])
            if msg.get("type") != "auth":
                raise ValueError("first message is not auth")
        except (ValueError, KeyError, TypeError) as exc:
            await self._refuse(ws, None, f"bad first message: {type(exc).__name__}")
            return
        if not await self._authenticate(agent_id, key):
            await self._refuse(ws, agent_id, "unknown id or wrong key")
            return
        self.authenticated.append(AuthEvent(agent_id, time.time()))
        await ws.send(json.dumps({"type": "auth_ok"}))
        # Stay connected like the real hub; the agent's later messages are ignored.
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass

    async def _authenticate(self, agent_id: str, key: str) -> bool:
        try:
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True
            ) as conn:
                cur = await conn.execute(AUTH_SQL, {"id": agent_id, "key": key})
                return await cur.fetchone() is not None
        except psycopg.errors.InvalidTextRepresentation:
            return False  # not a UUID: no such agent

    async def _refuse(self, ws: ServerConnection, agent_id: str | None, reason: str) -> None:
        self.refused.append(AuthEvent(agent_id, time.time(), reason))
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"type": "auth_failed"}))
            await ws.close(REFUSED_CODE, "authentication failed")
