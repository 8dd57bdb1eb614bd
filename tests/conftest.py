"""Fixtures shared by every test: a real PostgreSQL with the schema, one fresh database per test
(`database`: our schema; `service_db`: ours plus the queue's)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from citrus_deploy.standin.cli import install_launcher
from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.migrate import migrate
from citrus_deploy.store.migrate import migrate_all as migrate_service

TEMPLATE_DB = "citrus_template"
SERVICE_TEMPLATE = "citrus_service_template"
_counter = itertools.count()


def create_database(server: PgServer, name: str, template: str | None = None) -> str:
    """Creates database `name`, a copy of `template` when given; returns its conninfo."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return server.conninfo(name)


def _drop_database(server: PgServer, name: str) -> None:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One server for the session; the schema is applied once, to a template database."""
    server = PgServer().start()
    migrate(create_database(server, TEMPLATE_DB))
    yield server
    server.destroy()


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    """A fresh database copied from the schema template; yields its conninfo."""
    name = f"citrus_test_{os.getpid()}_{next(_counter)}"
    yield create_database(pg_server, name, TEMPLATE_DB)
    _drop_database(pg_server, name)


# Defined here, once, for every test folder: pytest runs a session fixture once per place that
# defines it, and a template made twice fails on the second CREATE DATABASE.
@pytest.fixture(scope="session")
def service_template(pg_server: PgServer) -> str:
    """Our schema plus procrastinate's, once, in a template database."""
    migrate_service(create_database(pg_server, SERVICE_TEMPLATE))
    return SERVICE_TEMPLATE


@pytest.fixture
def service_db(pg_server: PgServer, service_template: str) -> Iterator[str]:
    """A fresh database with both schemas, copied from the service template; yields its conninfo."""
    name = f"citrus_svc_{os.getpid()}_{next(_counter)}"
    yield create_database(pg_server, name, service_template)
    _drop_database(pg_server, name)


# What makes a test's database one of a release before numbered migrations, whose next migrate
# runs every baseline migration (0001-0007) again: no record of the ones applied.
AN_EARLIER_RELEASE = "DROP TABLE citrus_migrations"


def insert_server(conninfo: str, name: str, status: str = "provisioning") -> str:
    """A servers row and its agents row, as a finished `up` leaves them; returns the agent id."""
    agent = str(uuid.uuid4())
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            "INSERT INTO agents (id, key, name) VALUES (%s, %s, %s)",
            (agent, "a" * 64, f"agent-{name}"),
        )
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id) "
            "VALUES (%s, %s, 'sfo3', 's-1vcpu-512mb-10gb', %s, %s)",
            (name, str(uuid.uuid4().int % 10**9), status, agent),
        )
    return agent


# -- the pulumi CLI stand-in (standin.cli), first on PATH -------------------------------------


@dataclass
class Cli:
    """The stand-in `pulumi` on PATH; `calls()` is every call it got, in order."""

    bindir: Path
    record: Path  # where it records its calls (FAKE_PULUMI_DIR)

    def calls(self) -> list[dict[str, Any]]:
        """Each call's argv, cwd and watched environment; "words" = its arguments without the
        global --non-interactive."""
        path = self.record / "calls.jsonl"
        if not path.exists():
            return []
        made = [json.loads(line) for line in path.read_text().splitlines()]
        for call in made:
            call["words"] = [arg for arg in call["argv"] if arg != "--non-interactive"]
        return made

    def words(self) -> list[list[str]]:
        return [call["words"] for call in self.calls()]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Puts the stand-in `pulumi` first on PATH, with none of the machine's Pulumi settings."""
    bindir, record = tmp_path / "bin", tmp_path / "pulumi-calls"
    install_launcher(bindir)
    record.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}:{os.path.dirname(sys.executable)}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_PULUMI_DIR", str(record))
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))
    for name in (
        "GITHUB_TOKEN",
        "DATABASE_URL",
        "DIGITALOCEAN_TOKEN",
        "DO_API_TOKEN",
        "PULUMI_BACKEND_URL",
        "PULUMI_CONFIG_PASSPHRASE",
        "PULUMI_CONFIG_PASSPHRASE_FILE",
        "PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER",
        "FAKE_PULUMI_FAIL",
        "CITRUS_STANDIN_DELAY",
        "CITRUS_STANDIN_STEP_DELAY",
    ):
        monkeypatch.delenv(name, raising=False)
    return Cli(bindir, record)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`live` tests need a Pulumi CLI and a DigitalOcean token; without them they skip, with why."""
    missing = []
    if not shutil.which("pulumi"):
        missing.append("no `pulumi` CLI on PATH")
    if not (os.environ.get("DIGITALOCEAN_TOKEN") or os.environ.get("DO_API_TOKEN")):
        missing.append("no DIGITALOCEAN_TOKEN")
    if missing:
        skip = pytest.mark.skip(reason="live test: " + " and ".join(missing))
        for item in items:
            if "live" in item.keywords:
                item.add_marker(skip)
