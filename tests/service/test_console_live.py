"""The console's live fleet view through a real uvicorn under churn (issue 19): dozens of
signed-in streams opened and dropped while the fleet changes, as tabs and reconnects do. Each
test failed before the fix: a dropped stream, cancelled inside its wait, broke the fleet watch
for the whole web process (new streams got their headers and then nothing, not even a
heartbeat; they no longer ended after STREAM_SECONDS nor at sign-out).

uvicorn runs in a thread of the test process, so the stream timings can be patched (a stream's
end after 3 s instead of 10 minutes); the client disconnects are real TCP closes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import uvicorn

from citrus_deploy.settings import Settings
from citrus_deploy.standin.pg import free_port
from citrus_deploy.web.app import create_app
from citrus_deploy.web.console import live as console_live
from citrus_deploy.web.console import sessions as console_sessions
from tests.conftest import insert_server
from tests.service.conftest import TOKEN, wait_for

ROUNDS = 12  # the watch broke within two or three rounds before the fix
PER_ROUND = 40
READ_TIMEOUT = 8.0  # > HEARTBEAT_SECONDS below: a silent stream is a broken one


@dataclass
class Live:
    base: str
    database: str

    def sign_in(self) -> tuple[str, str]:
        """A new session: its cookie and CSRF token."""
        with httpx.Client(base_url=self.base, timeout=10) as http:
            answer = http.post(
                "/console/sign-in", data={"token": TOKEN}, headers={"Origin": self.base}
            )
            assert answer.status_code == 303, answer.text
            page = http.get("/console").text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            return http.cookies[console_sessions.COOKIE], csrf

    def set_status(self, status: str) -> None:
        """What a deployment does to the fleet: a row's status changes."""
        with psycopg.connect(self.database) as conn:
            conn.execute("UPDATE servers SET status = %s WHERE name = 'web-1'", (status,))


@pytest.fixture
def live(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Iterator[Live]:
    monkeypatch.setattr(console_live, "FLEET_INTERVAL", 0.05)
    monkeypatch.setattr(console_live, "HEARTBEAT_SECONDS", 1.0)
    caplog.set_level(logging.WARNING)
    database = settings.database_url.get_secret_value()
    insert_server(database, "web-1", "provisioning")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_config=None,  # uvicorn's records reach caplog (its own config stops them)
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="uvicorn")
    yield Live(f"http://127.0.0.1:{port}", database)
    server.should_exit = True
    thread.join(15)
    # Nothing went wrong inside the web process (the broken watch logged a RuntimeError).
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block]


async def first_fleet(live: Live, cookie: str) -> str:
    """Opens the fleet stream, returns its first `fleet` event and drops the connection."""
    timeout = httpx.Timeout(10, read=READ_TIMEOUT)
    async with (
        httpx.AsyncClient(
            base_url=live.base, cookies={console_sessions.COOKIE: cookie}, timeout=timeout
        ) as http,
        http.stream("GET", "/console/events") as answer,
    ):
        assert answer.status_code == 200
        seen = ""
        async for chunk in answer.aiter_text():
            seen += chunk
            for block in blocks(seen):
                if block.startswith("event: fleet") and seen.endswith("\n\n"):
                    return block
    raise AssertionError(f"the stream ended without a fleet event: {seen!r}")


def churn(live: Live, cookie: str, rounds: int = ROUNDS) -> list[str]:
    """`rounds` times: PER_ROUND streams at once while the fleet changes, each dropped as soon
    as it has its rows. What went wrong with the streams that got no rows (none, since the fix).
    """

    async def run() -> list[str]:
        failed: list[str] = []
        for number in range(rounds):
            streams = [asyncio.create_task(first_fleet(live, cookie)) for _ in range(PER_ROUND)]
            await asyncio.sleep(0.02)
            await asyncio.to_thread(live.set_status, ("active", "failed")[number % 2])
            done = await asyncio.gather(*streams, return_exceptions=True)
            failed += [f"round {number}: {d!r}" for d in done if not isinstance(d, str)]
        return failed

    return asyncio.run(run())


def test_streams_keep_getting_rows_after_churn(live: Live) -> None:
    cookie, _ = live.sign_in()
    failed = churn(live, cookie)
    assert not failed, f"{len(failed)} streams got no rows: {failed[:2]}"

    added: list[str] = []

    async def changes() -> list[str]:
        events: list[str] = []
        timeout = httpx.Timeout(10, read=READ_TIMEOUT)
        async with (
            httpx.AsyncClient(
                base_url=live.base, cookies={console_sessions.COOKIE: cookie}, timeout=timeout
            ) as http,
            http.stream("GET", "/console/events") as answer,
        ):
            seen = ""
            async for chunk in answer.aiter_text():
                seen += chunk
                events = [b for b in blocks(seen) if b.startswith("event: fleet")]
                if len(events) == 1 and not added:
                    added.append(await asyncio.to_thread(insert_server, live.database, "web-2"))
                if len(events) == 2 and seen.endswith("\n\n"):
                    return events
        return events

    first, second = asyncio.run(changes())
    assert "web-2" not in first
    assert "web-2" in second


def read_until_closed(
    live: Live, cookie: str, after_first: Callable[[], None] | None = None
) -> tuple[str, float]:
    """Everything a fresh stream sends until the server ends it, and how long that took from
    its first fleet event. `after_first()` runs once that event is in."""
    timeout = httpx.Timeout(10, read=READ_TIMEOUT)
    with (
        httpx.Client(
            base_url=live.base, cookies={console_sessions.COOKIE: cookie}, timeout=timeout
        ) as http,
        http.stream("GET", "/console/events") as answer,
    ):
        seen, started = "", 0.0
        for chunk in answer.iter_text():
            seen += chunk
            if not started and "event: fleet" in seen:
                started = time.monotonic()
                if after_first is not None:
                    after_first()
        assert started, seen
        return seen, time.monotonic() - started


def test_streams_still_end_after_stream_seconds_after_churn(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    cookie, _ = live.sign_in()
    churn(live, cookie)
    monkeypatch.setattr(console_live, "STREAM_SECONDS", 3.0)  # 10 minutes in production

    seen, took = read_until_closed(live, cookie)

    assert 1.5 < took < 6, seen
    assert ": idle" in seen  # heartbeats while nothing changed


def test_streams_still_end_at_sign_out_after_churn(live: Live) -> None:
    cookie, _ = live.sign_in()
    churn(live, cookie)
    leaving, csrf = live.sign_in()

    def sign_out() -> None:
        with httpx.Client(base_url=live.base, cookies={console_sessions.COOKIE: leaving}) as http:
            answer = http.post(
                "/console/sign-out", data={"csrf": csrf}, headers={"Origin": live.base}
            )
            assert answer.status_code == 303

    seen, took = read_until_closed(live, leaving, after_first=sign_out)

    assert took < 5, seen
    assert seen.count("event: fleet") == 1


def fill_every_slot(live: Live, cookie: str) -> int:
    """MAX_STREAMS streams at once, each held until all have their rows; then the status of one
    more, asked while they are all open."""

    async def run() -> int:
        everyone_in, release = asyncio.Event(), asyncio.Event()
        arrived = 0

        async def hold() -> None:
            nonlocal arrived
            timeout = httpx.Timeout(10, read=READ_TIMEOUT)
            async with (
                httpx.AsyncClient(
                    base_url=live.base, cookies={console_sessions.COOKIE: cookie}, timeout=timeout
                ) as http,
                http.stream("GET", "/console/events") as answer,
            ):
                assert answer.status_code == 200
                # Read by hand: leaving an `async for` would close the connection.
                chunks, seen = answer.aiter_text(), ""
                while "event: fleet" not in seen:
                    seen += await anext(chunks)
                arrived += 1
                if arrived == console_live.MAX_STREAMS:
                    everyone_in.set()
                await release.wait()

        holders = [asyncio.create_task(hold()) for _ in range(console_live.MAX_STREAMS)]
        try:
            await asyncio.wait_for(everyone_in.wait(), 30)
            async with (
                httpx.AsyncClient(
                    base_url=live.base, cookies={console_sessions.COOKIE: cookie}, timeout=10
                ) as http,
                http.stream("GET", "/console/events") as one_more,
            ):
                return one_more.status_code
        finally:
            release.set()
            await asyncio.gather(*holders, return_exceptions=True)

    return asyncio.run(run())


def test_every_stream_slot_is_given_back_after_churn(live: Live) -> None:
    cookie, _ = live.sign_in()
    churn(live, cookie)

    # All MAX_STREAMS slots are free (each stream gets its rows), and one more is refused...
    assert fill_every_slot(live, cookie) == 503
    # ... and again once those were closed: not one slot was kept by a closed stream.
    assert fill_every_slot(live, cookie) == 503
