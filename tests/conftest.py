"""Fixtures shared by every test: a real PostgreSQL with the schema, one fresh database per test
(`database`: our schema; `service_db`: ours plus the queue's)."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from db.__main__ import migrate
from service.migrate import migrate as migrate_service
from standin.pg import PgServer

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
