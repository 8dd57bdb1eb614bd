"""Fixtures of the service tests: a database with both schemas, settings, the app, workers."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from service.app import create_app
from service.migrate import migrate
from service.settings import Settings, load_settings
from standin.engine import ROOT
from standin.pg import PgServer

SERVICE_TEMPLATE = "citrus_service_template"
TOKEN = "test-admin-token-0123456789abcdef"
PASSPHRASE = "stand-in-passphrase-0f3c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_counter = itertools.count()


def create_database(server: PgServer, name: str, template: str | None = None) -> str:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return server.conninfo(name)


@pytest.fixture(scope="session")
def service_template(pg_server: PgServer) -> str:
    """Our schema plus procrastinate's, once, in a template database."""
    migrate(create_database(pg_server, SERVICE_TEMPLATE))
    return SERVICE_TEMPLATE


@pytest.fixture
def service_db(pg_server: PgServer, service_template: str) -> Iterator[str]:
    name = f"citrus_svc_{os.getpid()}_{next(_counter)}"
    yield create_database(pg_server, name, service_template)
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


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
    """`python -m service worker` in a process of its own (killable like a real one)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        clean = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "worker"],
                cwd=ROOT,
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


@pytest.fixture
def start_worker(service_db: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(**extra: str) -> Worker:
        env = service_env(service_db, tmp_path / "state", **extra)
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


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
