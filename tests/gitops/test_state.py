"""GitOps' records (store.gitops, store.ownership) against real PostgreSQL: ownership, what was
applied, applies, the fleet's load.

Deployments are written as the service leaves them (rows only, no queue: enqueue is tested
with the queue in tests/service/test_ownership.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from citrus_deploy.store import gitops as gitops_store
from citrus_deploy.store import queries
from citrus_deploy.store.deployments import NotFound
from citrus_deploy.store.migrate import migrate
from citrus_deploy.store.ownership import Deployed, gitops_state, load_deployed
from tests.conftest import insert_server

REPO = "acme/fleet"


@pytest.fixture
def conn(database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database, autocommit=True) as connection:
        yield connection


def deployment(
    conn: psycopg.Connection[Any],
    name: str,
    kind: str = "up",
    state: str = "succeeded",
    *,
    source: str = "http",
    commit: str | None = None,
    config: dict[str, Any] | None = None,
    program: str | None = None,
    error: str | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO deployments (server_name, kind, state, source, repository, commit, config,"
        " program_hash, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (
            name,
            kind,
            state,
            source,
            REPO if source == "gitops" else None,
            commit if commit or source != "gitops" else "c0ffee",
            Jsonb(config or {"serverName": name}),
            program,
            error,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def owner(conn: psycopg.Connection[Any], name: str) -> tuple[str | None, str | None] | None:
    found = load_deployed(conn).get(name.lower())
    return (found.managed_by, found.repository) if found else None


# -- ownership ---------------------------------------------------------------------------------


def test_a_server_made_over_http_is_managed_by_http(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "web-1")
    insert_server(database, "web-1")

    assert owner(conn, "web-1") == ("http", None)


def test_a_gitops_server_is_managed_by_its_repository(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "web-1", source="gitops")
    insert_server(database, "web-1")

    assert owner(conn, "web-1") == ("gitops", REPO)


def test_a_servers_row_without_deployments_is_manual(
    conn: psycopg.Connection[Any], database: str
) -> None:
    insert_server(database, "by-hand")

    found = load_deployed(conn)["by-hand"]
    assert (found.managed_by, found.repository, found.server_status) == (
        "manual",
        None,
        "provisioning",
    )
    assert (found.last_kind, found.last_state, found.active) == (None, None, False)


def test_a_successful_destroy_frees_the_name(conn: psycopg.Connection[Any], database: str) -> None:
    deployment(conn, "gone-1", source="gitops")
    deployment(conn, "gone-1", "destroy", source="gitops")
    deployment(conn, "kept-1", source="gitops")
    deployment(conn, "kept-1", "destroy", "failed", source="gitops")
    insert_server(database, "kept-1")

    assert owner(conn, "gone-1") is None
    assert owner(conn, "kept-1") == ("gitops", REPO)  # a failed destroy frees nothing


def test_a_row_made_by_hand_after_a_destroy_is_manual(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "again-1")
    deployment(conn, "again-1", "destroy")
    insert_server(database, "again-1")

    assert owner(conn, "again-1") == ("manual", None)


def test_a_later_gitops_up_adopts_an_http_server(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "web-1")
    insert_server(database, "web-1")
    assert owner(conn, "web-1") == ("http", None)

    deployment(conn, "web-1", source="gitops", state="queued")

    assert owner(conn, "web-1") == ("gitops", REPO)


def test_names_differing_in_case_are_one_server(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "Web-1", source="gitops", commit="a1")
    insert_server(database, "WEB-1")

    found = load_deployed(conn)
    assert list(found) == ["web-1"]
    assert (found["web-1"].name, found["web-1"].managed_by, found["web-1"].applied_commit) == (
        "WEB-1",
        "gitops",
        "a1",
    )


def test_a_failed_up_without_a_row_stays_owned(conn: psycopg.Connection[Any]) -> None:
    deployment(conn, "half-1", state="failed", error="droplet limit", source="gitops")

    found = load_deployed(conn)["half-1"]
    assert (found.name, found.managed_by, found.server_status) == ("half-1", "gitops", None)
    assert (found.last_kind, found.last_state, found.last_error) == (
        "up",
        "failed",
        "droplet limit",
    )


# -- what was applied --------------------------------------------------------------------------


def test_applied_is_the_last_successful_gitops_up(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "web-1", source="gitops", commit="a1", config={"size": "one"}, program="p1")
    deployment(conn, "web-1", source="gitops", commit="b2", config={"size": "two"}, state="failed")
    insert_server(database, "web-1", status="active")

    found = load_deployed(conn)["web-1"]
    assert (found.applied_config, found.applied_commit, found.applied_program) == (
        {"size": "one"},
        "a1",
        "p1",
    )
    assert found.attempted_commit == "b2"
    assert (found.region, found.size, found.agent_status) == (
        "sfo3",
        "s-1vcpu-512mb-10gb",
        "offline",
    )
    assert found.droplet_id is not None


def test_nothing_is_applied_after_a_destroy_or_by_http(
    conn: psycopg.Connection[Any], database: str
) -> None:
    deployment(conn, "web-1", source="gitops", commit="a1")
    deployment(conn, "web-1", "destroy", source="gitops", commit="a2")
    deployment(conn, "web-1")  # made again over HTTP
    insert_server(database, "web-1")

    found = load_deployed(conn)["web-1"]
    assert (found.managed_by, found.applied_config, found.applied_commit) == ("http", None, None)
    assert found.attempted_commit == "a2"


def test_an_active_deployment_shows(conn: psycopg.Connection[Any], database: str) -> None:
    deployment(conn, "web-1", source="gitops")
    insert_server(database, "web-1", status="active")
    deployment(conn, "web-1", "up", "running", source="gitops", commit="d4")

    found = load_deployed(conn)["web-1"]
    assert (found.active, found.last_state, found.attempted_commit) == (True, "running", "d4")


# -- gitops_state ------------------------------------------------------------------------------


def deployed(**changes: Any) -> Deployed:
    ready: dict[str, Any] = {
        "name": "web-1",
        "managed_by": "gitops",
        "repository": REPO,
        "server_status": "active",
        "agent_status": "online",
        "droplet_id": "42",
        "applied_config": {"serverName": "web-1"},
        "applied_commit": "a1",
        "applied_program": "p1",
        "attempted_commit": "a1",
        "last_kind": "up",
        "last_state": "succeeded",
        "last_error": None,
        "active": False,
    }
    return Deployed(**{**ready, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "Ready"),
        ({"active": True, "last_state": "queued"}, "Reconciling"),
        ({"active": True, "last_state": "running", "server_status": None}, "Reconciling"),
        ({"server_status": "provisioning", "agent_status": "offline"}, "Reconciling"),
        ({"last_state": "failed", "last_error": "boom"}, "Failed"),
        ({"server_status": "failed", "agent_status": "failed"}, "Failed"),
        ({"server_status": None, "agent_status": None}, "Failed"),  # row deleted behind our back
        ({"last_kind": "destroy", "last_state": "failed"}, "Failed"),
        ({"last_state": "needs_operator"}, "Stalled"),
    ],
)
def test_gitops_state(changes: dict[str, Any], expected: str) -> None:
    assert gitops_state(deployed(**changes)) == expected


def test_gitops_state_from_the_database(conn: psycopg.Connection[Any], database: str) -> None:
    deployment(conn, "ready-1", source="gitops")
    insert_server(database, "ready-1", status="active")
    deployment(conn, "waiting-1", source="gitops")
    insert_server(database, "waiting-1")
    deployment(conn, "busy-1", "up", "queued", source="gitops")
    deployment(conn, "broken-1", state="failed", source="gitops")
    deployment(conn, "stuck-1", state="needs_operator", source="gitops")

    found = {key: gitops_state(d) for key, d in load_deployed(conn).items()}

    assert found == {
        "ready-1": "Ready",
        "waiting-1": "Reconciling",
        "busy-1": "Reconciling",
        "broken-1": "Failed",
        "stuck-1": "Stalled",
    }


# -- applies -----------------------------------------------------------------------------------


def test_an_apply_is_recorded_with_its_deployments(conn: psycopg.Connection[Any]) -> None:
    first = gitops_store.start_apply(conn, REPO, "a1", {"version": 1, "servers": []})
    second = gitops_store.start_apply(conn, REPO, "a1", {"version": 1, "servers": []})
    other = gitops_store.start_apply(conn, REPO, "b2", {"version": 1})
    web = deployment(conn, "web-1", source="gitops", commit="a1")
    db = deployment(conn, "db-1", "destroy", "failed", source="gitops", commit="a1", error="x")
    conn.execute("UPDATE deployments SET apply_id = %s WHERE id IN (%s, %s)", (second, web, db))
    gitops_store.finish_apply(conn, second, "failed")

    assert gitops_store.last_apply(conn, REPO, "a1") == second
    assert gitops_store.last_apply(conn, REPO, "b2") == other
    assert gitops_store.last_apply(conn, "acme/other", "a1") is None
    assert gitops_store.apply_deployments(conn, second) == [
        {"id": web, "server_name": "web-1", "kind": "up", "state": "succeeded", "error": None},
        {"id": db, "server_name": "db-1", "kind": "destroy", "state": "failed", "error": "x"},
    ]
    assert gitops_store.apply_deployments(conn, first) == []
    rows = conn.execute(
        "SELECT id, outcome, finished_at IS NOT NULL, plan FROM gitops_applies ORDER BY id"
    ).fetchall()
    assert rows == [
        (first, None, False, {"version": 1, "servers": []}),
        (second, "failed", True, {"version": 1, "servers": []}),
        (other, None, False, {"version": 1}),
    ]


def test_finish_apply_refuses_an_unknown_outcome_or_apply(conn: psycopg.Connection[Any]) -> None:
    apply_id = gitops_store.start_apply(conn, REPO, "a1", {})

    with pytest.raises(ValueError, match="outcome 'done': must be one of succeeded"):
        gitops_store.finish_apply(conn, apply_id, "done")
    with pytest.raises(NotFound, match="no GitOps apply"):
        gitops_store.finish_apply(conn, apply_id + 1, "stopped")


def test_the_apply_functions_work_inside_a_callers_transaction(database: str) -> None:
    with psycopg.connect(database) as conn:  # not autocommit: the caller commits
        apply_id = gitops_store.start_apply(conn, REPO, "a1", {})
        gitops_store.finish_apply(conn, apply_id, "succeeded")
        assert gitops_store.last_apply(conn, REPO, "a1") == apply_id


# -- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "repository", "commit", "constraint"),
    [
        ("gitops", None, "a1", "deployments_gitops_origin"),
        ("gitops", REPO, None, "deployments_gitops_origin"),
        ("ftp", None, None, "deployments_source_known"),
    ],
)
def test_the_schema_refuses_a_deployment_of_unknown_origin(
    conn: psycopg.Connection[Any],
    source: str,
    repository: str | None,
    commit: str | None,
    constraint: str,
) -> None:
    with pytest.raises(pg_errors.CheckViolation) as refused:
        conn.execute(
            "INSERT INTO deployments (server_name, kind, source, repository, commit)"
            " VALUES ('web-1', 'up', %s, %s, %s)",
            (source, repository, commit),
        )
    assert refused.value.diag.constraint_name == constraint


def test_an_http_deployment_gets_source_http(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO deployments (server_name, kind) VALUES ('web-1', 'up')")

    assert conn.execute("SELECT source, repository, commit FROM deployments").fetchall() == [
        ("http", None, None)
    ]


def test_the_schema_applies_again_over_itself(conn: psycopg.Connection[Any], database: str) -> None:
    deployment(conn, "web-1", source="gitops")

    migrate(database)
    migrate(database)

    assert owner(conn, "web-1") == ("gitops", REPO)


# -- the whole fleet ---------------------------------------------------------------------------

FLEET = 10_000


def seed_fleet(conn: psycopg.Connection[Any], count: int) -> None:
    """`count` servers, each with three deployments: an http up, a gitops up (adopting it), and
    a later gitops up that failed, for every other one; plus rows the servers need."""
    conn.execute(
        "INSERT INTO agents (id, key, name, status) SELECT gen_random_uuid(), repeat('a', 64),"
        " 'agent-s-' || n, 'online' FROM generate_series(1, %s) n",
        (count,),
    )
    conn.execute(
        "INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id)"
        " SELECT 's-' || n, n::text, 'sfo3', 's-1vcpu-1gb', 'active', a.id"
        " FROM generate_series(1, %s) n JOIN agents a ON a.name = 'agent-s-' || n",
        (count,),
    )
    conn.execute(
        "INSERT INTO deployments (server_name, kind, state, source, repository, commit, config)"
        " SELECT 's-' || n, 'up', step.state, step.source, step.repository, step.commit,"
        "        jsonb_build_object('serverName', 's-' || n, 'size', 's-1vcpu-1gb')"
        " FROM generate_series(1, %s) n, (VALUES"
        "   (1, 'succeeded', 'http', NULL, NULL),"
        "   (2, 'succeeded', 'gitops', 'acme/fleet', 'a1'),"
        "   (3, 'failed', 'gitops', 'acme/fleet', 'b2'))"
        " step (i, state, source, repository, commit)"
        " WHERE step.i < 3 OR n %% 2 = 0"
        " ORDER BY step.i, n",
        (count,),
    )
    conn.execute("ANALYZE")


def test_the_fleet_loads_in_one_query_well_under_a_second(
    conn: psycopg.Connection[Any],
) -> None:
    seed_fleet(conn, FLEET)

    started = time.perf_counter()
    found = load_deployed(conn)
    took = time.perf_counter() - started

    print(f"load_deployed: {FLEET} servers, {FLEET * 5 // 2} deployments: {took * 1000:.0f} ms")
    assert len(found) == FLEET
    assert {d.managed_by for d in found.values()} == {"gitops"}
    assert found["s-2"].attempted_commit == "b2"
    assert found["s-1"].attempted_commit == "a1"
    assert {gitops_state(found["s-1"]), gitops_state(found["s-2"])} == {"Ready", "Failed"}
    assert took < 1.0


def test_one_name_is_looked_up_by_index(conn: psycopg.Connection[Any]) -> None:
    seed_fleet(conn, 2_000)

    plan = conn.execute(
        "EXPLAIN " + queries.load()["select_ownership"], {"keys": ["s-7"]}
    ).fetchall()

    text = "\n".join(line for (line,) in plan)
    assert "Seq Scan on deployments" not in text, text
    assert "Seq Scan on servers" not in text, text
