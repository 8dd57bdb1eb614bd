"""The read-only role a pull request's plan uses (migrations/0020_plan_role.sql), against real
PostgreSQL: a login role granted it, as docs/gitops-pipeline.md says to make one, plans (it
reads server_ownership) and reads nothing else: not agents.key, no other table, no writes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from itertools import count

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.migrate import migrate
from citrus_deploy.store.ownership import load_deployed
from tests.conftest import insert_server
from tests.gitops.conftest import REPO, FleetRepo, gitops, make_fleet

ROLE = "citrus_gitops_plan"
_counter = count()


@pytest.fixture
def plan_url(database: str) -> Iterator[str]:
    """The conninfo of a login role made as the docs say: CREATE ROLE ... LOGIN; GRANT."""
    login = f"plan_ci_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(ROLE), sql.Identifier(login)))
    yield make_conninfo(database, user=login)
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))


def test_the_plan_role_reads_the_ownership_view(database: str, plan_url: str) -> None:
    insert_server(database, "web-1", status="active")
    with psycopg.connect(plan_url) as conn:
        (user,) = conn.execute("SELECT current_user").fetchone() or ("",)
        assert user.startswith("plan_ci_")
        deployed = load_deployed(conn)
    assert [d.name for d in deployed.values()] == ["web-1"]


def test_the_plan_role_cannot_read_an_agent_key(database: str, plan_url: str) -> None:
    insert_server(database, "web-1")
    with psycopg.connect(plan_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT key FROM agents")


def test_the_plan_role_reads_no_table_and_writes_nothing(database: str, plan_url: str) -> None:
    with psycopg.connect(database) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
    assert {"agents", "servers", "deployments", "gitops_applies"} <= set(tables)
    with psycopg.connect(plan_url, autocommit=True) as conn:
        for table in tables:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table)))
        for statement in (
            "CREATE TABLE stolen (x text)",
            "UPDATE agents SET status = 'offline'",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_role_has_only_select_on_the_view(database: str) -> None:
    with psycopg.connect(database) as conn:
        grants = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = %s",
            (ROLE,),
        ).fetchall()
        login = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (ROLE,))
        assert login.fetchone() == (False,)
    assert grants == [("server_ownership", "SELECT")]


def test_plan_runs_as_the_plan_role_end_to_end(
    database: str,
    plan_url: str,
    fleet_repo: FleetRepo,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the pull-request job does: `gitops plan` of a fleet folder with this URL only."""
    insert_server(database, "web-1", status="active")  # made by hand: the plan must see it
    make_fleet(fleet_repo, "web-1", "web-2")
    monkeypatch.setenv("DATABASE_URL", plan_url)
    code, out, err = gitops(
        capsys, "plan", str(fleet_repo.fleet), "--repository", REPO, "--json", "-"
    )
    # web-1, made by hand, is refused: the plan read who manages it through the view.
    actions = {s["name"]: s["action"] for s in json.loads(out)["servers"]}
    assert (code, actions) == (1, {"web-1": "error", "web-2": "create"}), err
    assert "permission denied" not in err


def test_a_migrating_user_that_cannot_create_roles_still_upgrades() -> None:
    """On a cluster of its own (the role is the cluster's): a database owner without CREATEROLE
    gets every migration; the role is left for an administrator, the service still starts."""
    server = PgServer().start()
    try:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE ROLE citrus_owner LOGIN")
            conn.execute("CREATE DATABASE citrus OWNER citrus_owner")
        owner_url = make_conninfo(server.conninfo("citrus"), user="citrus_owner")
        assert "0020_plan_role" in migrate(owner_url)
        with psycopg.connect(owner_url) as conn:
            found = conn.execute("SELECT FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchall()
            assert found == []
            assert conn.execute("SELECT count(*) FROM server_ownership").fetchone() == (0,)
    finally:
        server.destroy()
