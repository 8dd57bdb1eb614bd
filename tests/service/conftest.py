"""Fixtures of the service tests: settings, the app, workers. Their database with both schemas,
`service_db`, is tests/conftest.py's, shared with every test folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from citrus_deploy.settings import Settings, load_settings
from citrus_deploy.standin.pg import PgServer, free_port
from citrus_deploy.store.migrate import migrate_all as migrate
from citrus_deploy.web.app import create_app
from tests.conftest import create_database as create_database  # re-exported: modules import it
from tests.paths import REPO

TOKEN = "test-admin-token-0123456789abcdef"
PASSPHRASE = "stand-in-passphrase-0f3c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL of its own, with both schemas: the test may stop or restart it."""
    server = PgServer().start()
    migrate(server.conninfo())
    yield server
    server.destroy()


def service_env(database: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a web or worker process running the engine stand-in."""
    return {
        "DATABASE_URL": database,
        "ADMIN_TOKEN": TOKEN,
        "CITRUS_DEPLOYER": "test-engine",
        "PULUMI_BACKEND_URL": f"file://{state_dir}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "WORKER_HEARTBEAT_INTERVAL": "0.5",
        "WORKER_STALLED_TIMEOUT": "3",
        # A dead worker's deployment is retried once its child had this long to stop.
        "DEPLOY_STOP_GRACE": "5",
        "RETRY_BACKOFF_SECONDS": "0.5",
        "CITRUS_DB_TIMEOUT": "2",
        "CITRUS_WAIT_MAX_SECONDS": "30",
        **extra,
    }


def make_settings(database: str, state_dir: Path, **extra: str) -> Settings:
    return load_settings(**service_env(database, state_dir, **extra))


# Variables the tests set themselves; the machine's own values must not leak in.
_SERVICE_VARS = {"GITHUB_TOKEN", "ENGINE_WS_URL", "DIGITALOCEAN_TOKEN", "DO_API_TOKEN"}


@pytest.fixture
def settings(service_db: str, tmp_path: Path) -> Settings:
    return make_settings(service_db, tmp_path / "state")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


class Worker:
    """`citrus-deploy service worker` in a process of its own (killable like a real one)."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path = REPO) -> None:
        self.env = env
        self.log = log
        self.cwd = cwd  # the checkout (or install) it runs from
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        clean = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citrus_deploy", "service", "worker"],
                cwd=self.cwd,
                env={**clean, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_P = TypeVar("_P", bound=_Stoppable)


def starter(
    launch: Callable[[dict[str, str], Path], _P], kind: str, database: str, tmp_path: Path
) -> Iterator[Callable[..., _P]]:
    """The body of a `start_<kind>` fixture: yields `start(**extra)`, which launches one more
    process on `database` (env from `service_env` plus `extra`, log in tmp_path/<kind>-N.log);
    every process started is stopped after the test. Use it as `yield from starter(...)`."""
    started: list[_P] = []

    def start(**extra: str) -> _P:
        env = service_env(database, tmp_path / "state", **extra)
        process = launch(env, tmp_path / f"{kind}-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def launch_worker(env: dict[str, str], log: Path) -> Worker:
    return Worker(env, log).start()


@pytest.fixture
def start_worker(service_db: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    yield from starter(launch_worker, "worker", service_db, tmp_path)


class Web:
    """`citrus-deploy service web` in a process of its own, on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        clean = {k: v for k, v in os.environ.items() if k not in env}
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citrus_deploy", "service", "web"],
                cwd=REPO,
                env={**clean, **env, "CITRUS_PORT": str(self.port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the web process did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def start_web(service_db: str, tmp_path: Path) -> Iterator[Callable[..., Web]]:
    yield from starter(Web, "web", service_db, tmp_path)


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def rows(conninfo: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(query, params).fetchall()


def fault_trigger(
    conninfo: str, event: str, *, sqlstate: str, times: str, delay: float = 0.0
) -> None:
    """A trigger that raises `sqlstate` on `event` ("INSERT ON servers", ...), after `delay`.

    `times` is "always", "once" (the first time only) or "never" (only the delay).
    """
    condition = {"always": "true", "once": "nextval('fault_once') = 1", "never": "false"}[times]
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE SEQUENCE fault_once")
        conn.execute(
            f"""
            CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_sleep({float(delay)});
                IF {condition} THEN
                    RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}';
                END IF;
                RETURN NEW;
            END $$"""
        )
        conn.execute(f"CREATE TRIGGER fault BEFORE {event} FOR EACH ROW EXECUTE FUNCTION fault()")
