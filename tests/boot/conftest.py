"""Fixtures for the boot tests: PostgreSQL with an `agents` table, the hub and Git stand-ins.

Boot tests (marked `boot`) need root, systemd-nspawn and a Debian image; without them they skip
with the reason, or fail when CITRUS_REQUIRE_BOOT=1 (CI), where a skipped boot test would hide
exactly the failures these tests exist for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from citrus_deploy.standin.pg import PgServer
from tests.boot.image import FLAVOURS, ImageError, image_path
from tests.boot.standins.gitserver import GitServer
from tests.boot.standins.hub import Hub
from tests.conftest import TEMPLATE_DB


@pytest.fixture(autouse=True)
def _boot_requirements(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("boot") is None:
        return
    needed = ["systemd-nspawn", "nsenter"]
    if not all(_image_built(f) for f in FLAVOURS):
        needed.append("debootstrap")  # the first boot test builds the missing image
    missing = [c for c in needed if not shutil.which(c)]
    reasons = [f"missing {', '.join(missing)} (scripts/setup installs them)"] if missing else []
    if os.geteuid() != 0:
        reasons.append("not root (overlay mounts and systemd-nspawn need it)")
    if reasons:
        message = "boot test cannot run: " + "; ".join(reasons)
        if os.environ.get("CITRUS_REQUIRE_BOOT") == "1":
            pytest.fail(message)
        pytest.skip(message)


def _image_built(flavour: str) -> bool:
    try:
        image_path(flavour, build=False)
    except ImageError:
        return False
    return True


@pytest.fixture(scope="session")
def boot_pg_conninfo(pg_server: PgServer) -> str:
    """One database with the project's schema for the boot session; its conninfo."""
    with psycopg.connect(pg_server.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE citrus_boot TEMPLATE {}").format(sql.Identifier(TEMPLATE_DB))
        )
    return pg_server.conninfo("citrus_boot")


@pytest.fixture
def new_agent(boot_pg_conninfo: str) -> Callable[[], tuple[str, str]]:
    """Inserts an `agents` row as the deploy does (status 'offline'); returns (id, key)."""

    def make() -> tuple[str, str]:
        agent_id, key = str(uuid.uuid4()), secrets.token_hex(32)
        with psycopg.connect(boot_pg_conninfo) as conn:
            conn.execute(
                "INSERT INTO agents (id, key, status, name) "
                "VALUES (%(id)s, %(key)s, 'offline', %(name)s)",
                {"id": agent_id, "key": key, "name": f"agent-{agent_id[:8]}"},
            )
        return agent_id, key

    return make


@pytest.fixture
def agent_status(boot_pg_conninfo: str) -> Callable[[str], str | None]:
    def status(agent_id: str) -> str | None:
        with psycopg.connect(boot_pg_conninfo) as conn:
            row = conn.execute(
                "SELECT status FROM agents WHERE id = %(id)s", {"id": agent_id}
            ).fetchone()
        return None if row is None else str(row[0])

    return status


@pytest.fixture
def hub(boot_pg_conninfo: str) -> Iterator[Hub]:
    with Hub(boot_pg_conninfo) as h:
        yield h


@pytest.fixture
def github_token() -> str:
    return "ghp_" + secrets.token_hex(18)


@pytest.fixture
def git_server(github_token: str) -> Iterator[GitServer]:
    """The agent repository over HTTPS (its CA goes into the machine with Machine.trust_ca)."""
    with GitServer(github_token, tls=True) as server:
        yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.boot import timings

    if timings.ROWS:
        terminalreporter.write_sep("-", "boot timings (this machine)")
        terminalreporter.write_line(timings.table())
