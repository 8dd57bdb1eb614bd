"""Fixtures shared by every test: a real PostgreSQL with the schema, one fresh database per test."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from db.__main__ import migrate
from standin.pg import PgServer

TEMPLATE_DB = "citrus_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One server for the session; the schema is applied once, to a template database."""
    server = PgServer().start()
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    migrate(server.conninfo(TEMPLATE_DB))
    yield server
    server.destroy()


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    """A fresh database copied from the schema template; yields its conninfo."""
    name = f"citrus_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    yield pg_server.conninfo(name)
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


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
