"""The console's live views, by server-sent events: the fleet, read by one poller per web process
and pushed to each open page when its rows change, and a deployment's output, read per stream
from where the stream left off. Neither holds a database connection while idle."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg_pool
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from psycopg.rows import dict_row

from citrus_deploy.settings import Settings
from citrus_deploy.store import states
from citrus_deploy.web.console.fleet import FleetRow, load_fleet, only
from citrus_deploy.web.console.guard import DB_DOWN, Guard, Refused, SignedOut
from citrus_deploy.web.console.pages import status_filter
from citrus_deploy.web.console.queries import sql
from citrus_deploy.web.console.render import SECURITY_HEADERS, templates
from citrus_deploy.web.console.sessions import signed_out, signed_out_among
from citrus_deploy.web.dependencies import Pool

log = logging.getLogger("citrus.console")

# A stream ends after STREAM_SECONDS (or when its session expires) and the browser's
# EventSource reconnects by itself, so an expired session stops getting rows within that time;
# a signed-out one within a poll (each poll of the database checks the session). At most
# MAX_STREAMS are open per web process (the rest get 503), far under CITRUS_MAX_CONNECTIONS,
# which every open stream counts against.
FLEET_INTERVAL = 1.0
OUTPUT_INTERVAL = 1.0
HEARTBEAT_SECONDS = 15.0
STREAM_SECONDS = 600.0
MAX_STREAMS = 64
RECONNECT_MS = 2000
OUTPUT_CHUNK = 64 * 1024
OUTPUT_CAP = 1048576  # append_output keeps the last 1 MiB (store/sql/deployments.sql)


def sse(event: str, data: str, event_id: str | None = None) -> bytes:
    """One server-sent event; each line of `data` becomes a `data:` line."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in re.split(r"\r\n|\r|\n", data)]
    return ("\n".join(lines) + "\n\n").encode()


@dataclass
class FleetWatch:
    """One poller per web process: reads the fleet every FLEET_INTERVAL while a page listens,
    and wakes the listeners when it changed. With it, it reads which of the listening sessions
    were signed out, so their streams end within a poll. The connection is the pool's for one
    read only.

    The listeners wait on an asyncio.Event that the poller replaces at each change, never on a
    lock: a stream is cancelled whenever its client goes away, and a cancelled wait on a
    Condition (inside asyncio.wait_for) can leave its lock released by the wrong waiter, after
    which every stream and the poller block for good.
    """

    pool: psycopg_pool.AsyncConnectionPool[Any]
    rows: tuple[FleetRow, ...] | None = None
    version: int = 0
    listeners: dict[str, int] = field(default_factory=dict)  # session id -> open streams
    signed_out: frozenset[str] = frozenset()
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def join(self, session_id: str) -> None:
        self.listeners[session_id] = self.listeners.get(session_id, 0) + 1

    def leave(self, session_id: str) -> None:
        self.listeners[session_id] -= 1
        if self.listeners[session_id] <= 0:
            del self.listeners[session_id]

    def _publish(self, rows: tuple[FleetRow, ...], gone: frozenset[str]) -> None:
        """The new state, then every waiter woken (a new event for the next change)."""
        if rows != self.rows:
            self.rows, self.version = rows, self.version + 1
        self.signed_out = gone
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        try:
            while self.listeners:
                try:
                    rows = await load_fleet(self.pool)
                    gone = await signed_out_among(self.pool, self.listeners)
                except DB_DOWN as exc:
                    log.warning("console: fleet not read, database unreachable (%s)", type(exc))
                except Exception:
                    log.exception("console: fleet not read")
                else:
                    if rows != self.rows or gone != self.signed_out:
                        self._publish(rows, gone)
                await asyncio.sleep(FLEET_INTERVAL)
        finally:
            # However it ends, the next listener starts a new poller.
            self.rows, self.signed_out, self._task = None, frozenset(), None

    async def next(
        self, session_id: str, seen: int, timeout: float
    ) -> tuple[int, tuple[FleetRow, ...] | None]:
        """The rows once their version is past `seen`, or (seen, None) after `timeout` or once
        the session is in `signed_out`. Cancelling it (the client went away) leaves nothing
        behind: the only thing awaited is an Event."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if session_id in self.signed_out:
                        return seen, None
                    if self.version > seen and self.rows is not None:
                        return self.version, self.rows
                    await self._changed.wait()
        except TimeoutError:
            return seen, None


class Live:
    """The live views of one web process: its open streams (at most MAX_STREAMS) and its
    FleetWatch."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        self.settings = settings
        self.guard = guard
        self.streams = 0
        self._watch: FleetWatch | None = None

    def stream(self, chunks: AsyncIterator[bytes]) -> StreamingResponse:
        if self.streams >= MAX_STREAMS:
            raise Refused(
                503, "Too many live views are open; reload in a minute.", {"Retry-After": "60"}
            )
        self.streams += 1

        async def counted() -> AsyncIterator[bytes]:
            try:
                yield f"retry: {RECONNECT_MS}\n\n".encode()
                async for chunk in chunks:
                    yield chunk
            finally:
                self.streams -= 1

        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(counted(), media_type="text/event-stream", headers=headers)

    async def fleet_events(
        self, request: Request, pool: Pool, status: str | None = None
    ) -> Response:
        session = await self.guard.session(request)
        wanted = status_filter(status)
        if self._watch is None:
            self._watch = FleetWatch(pool)
        watch = self._watch
        rows_template = templates().get_template("_fleet_rows.html")

        async def events() -> AsyncIterator[bytes]:
            watch.join(session.id)
            try:
                seen, sent = 0, None
                end = time.monotonic() + min(STREAM_SECONDS, session.expires - time.time())
                while (left := end - time.monotonic()) > 0:
                    seen, rows = await watch.next(session.id, seen, min(HEARTBEAT_SECONDS, left))
                    if session.id in watch.signed_out:
                        return
                    if rows is None:
                        yield b": idle\n\n"
                        continue
                    mine = only(rows, wanted)
                    if mine != sent:
                        sent = mine
                        html = rows_template.render(rows=mine, shown=wanted)
                        yield sse("fleet", html)
            finally:
                watch.leave(session.id)

        return self.stream(events())

    async def output_events(
        self, request: Request, deployment_id: int, pool: Pool, start: int = 0
    ) -> Response:
        session = await self.guard.session(request)
        resume = request.headers.get("last-event-id", "")
        offset = int(resume) if resume.isdigit() and len(resume) < 12 else max(0, start)
        tail = self.settings.output_tail_chars

        async def read(query: str, params: dict[str, Any]) -> dict[str, Any] | None:
            async with pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)
                row: dict[str, Any] | None = await cur.fetchone()
                return row

        async def tick() -> dict[str, Any] | None:
            """The output not sent yet, or None if the deployment is gone; raises SignedOut
            once the session was signed out (checked on the same connection, every poll)."""
            async with pool.connection() as conn:
                if await signed_out(conn, session.id):
                    raise SignedOut
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(
                    sql()["console_output_since"],
                    {"id": deployment_id, "from": offset, "max": OUTPUT_CHUNK},
                )
                row: dict[str, Any] | None = await cur.fetchone()
                return row

        async def events() -> AsyncIterator[bytes]:
            nonlocal offset
            last_change: datetime | None = None
            idle_since = time.monotonic()
            end = time.monotonic() + min(STREAM_SECONDS, session.expires - time.time())
            while time.monotonic() < end:
                try:
                    row = await tick()
                except SignedOut:
                    return
                except DB_DOWN:
                    row = {}  # try again at the next tick
                if row is None:
                    yield sse("gone", "{}")
                    return
                if row:
                    capped = row["length"] >= OUTPUT_CAP and row["updated_at"] != last_change
                    if row["length"] < offset or (not row["more"] and capped and last_change):
                        # The output was cut to its last 1 MiB: start again from its tail.
                        found = await read(
                            sql()["console_output_start"], {"id": deployment_id, "tail": tail}
                        )
                        text = (found or {}).get("tail", "")
                        offset = row["length"]
                        yield sse("reset", json.dumps({"text": text}), str(offset))
                    elif row["more"]:
                        offset += len(row["more"])
                        yield sse("output", json.dumps({"text": row["more"]}), str(offset))
                        idle_since = time.monotonic()
                    last_change = row["updated_at"]
                    if row["state"] in states.FINISHED and offset >= row["length"]:
                        yield sse("done", json.dumps({"state": row["state"]}))
                        return
                if time.monotonic() - idle_since >= HEARTBEAT_SECONDS:
                    yield b": idle\n\n"
                    idle_since = time.monotonic()
                await asyncio.sleep(OUTPUT_INTERVAL)

        return self.stream(events())
