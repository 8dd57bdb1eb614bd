"""GitOps deployments through the service's queue, and who manages a server, as the API shows it.

store.gitops.enqueue writes what the HTTP service writes (tests/gitops/test_state.py covers the
rest of GitOps' records); workers are real `citrus-deploy service worker` processes running the
engine stand-in, PostgreSQL is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from citrus_deploy.engine.fingerprint import program_hash
from citrus_deploy.engine.stack_config import stack_config
from citrus_deploy.settings import PROJECT
from citrus_deploy.standin.engine import Engine
from citrus_deploy.store import gitops as gitops_store
from citrus_deploy.store import ownership
from citrus_deploy.store.deployments import DeploymentConflict, NotFound
from tests.conftest import insert_server
from tests.service.conftest import AUTH, PASSPHRASE, Worker, make_settings, rows, wait_for

REPO = "acme/fleet"
DEPLOY = "/admin/servers/deploy-with-agent"


@pytest.fixture
def conn(service_db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(service_db, autocommit=True) as connection:
        yield connection


def enqueue(
    conn: psycopg.Connection[Any],
    name: str,
    kind: str = "up",
    config: dict[str, Any] | None = None,
    *,
    commit: str = "a1",
    apply_id: int | None = None,
) -> int:
    return gitops_store.enqueue(
        conn,
        apply_id=apply_id,
        name=name,
        kind=kind,
        config=config if config is not None else {"serverName": name},
        repository=REPO,
        commit=commit,
    )


def job_of(conn: psycopg.Connection[Any], deployment_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT queue_name, task_name, priority, lock, queueing_lock, args, status"
        " FROM procrastinate_jobs WHERE (args ->> 'deployment_id')::bigint = %s",
        (deployment_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


# -- enqueue -----------------------------------------------------------------------------------


def test_a_gitops_up_is_queued_as_http_queues_one(
    conn: psycopg.Connection[Any], client: TestClient
) -> None:
    apply_id = gitops_store.start_apply(conn, REPO, "a1", {"version": 1})
    config = {"serverName": "git-1", "size": "s-2vcpu-4gb", "tags": ["web"], "monitoring": True}

    gitops_id = enqueue(conn, "git-1", config=config, apply_id=apply_id)
    assert client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH).status_code == 202
    ((http_id,),) = conn.execute(
        "SELECT id FROM deployments WHERE server_name = 'web-1'"
    ).fetchall()

    assert job_of(conn, gitops_id) == (
        "deployments",
        "citrus.deploy",
        0,
        "git-1",
        "git-1",
        {"deployment_id": gitops_id},
        "todo",
    )
    assert job_of(conn, http_id) == (
        "deployments",
        "citrus.deploy",
        0,
        "web-1",
        "web-1",
        {"deployment_id": http_id},
        "todo",
    )
    found = conn.execute(
        "SELECT server_name, kind, state, config, source, repository, commit, apply_id, job_id"
        " IS NULL FROM deployments ORDER BY id"
    ).fetchall()
    assert found == [
        ("git-1", "up", "queued", config, "gitops", REPO, "a1", apply_id, True),
        ("web-1", "up", "queued", {"serverName": "web-1"}, "http", None, None, None, True),
    ]
    assert gitops_store.apply_deployments(conn, apply_id) == [
        {"id": gitops_id, "server_name": "git-1", "kind": "up", "state": "queued", "error": None}
    ]


def test_a_gitops_up_waits_for_an_http_deployment_of_the_name_in_any_case(
    conn: psycopg.Connection[Any], client: TestClient
) -> None:
    assert client.post(DEPLOY, json={"name": "Web-1"}, headers=AUTH).status_code == 202

    with pytest.raises(DeploymentConflict) as refused:
        enqueue(conn, "web-1")

    assert (refused.value.reason, refused.value.server_name) == ("deployment_in_progress", "Web-1")
    assert str(refused.value) == (
        "a deployment for 'Web-1' is already queued or running "
        "(names are hostnames: 'web-1' is the same name)"
    )
    assert rows_of(conn, "SELECT count(*) FROM deployments") == [(1,)]
    assert rows_of(conn, "SELECT count(*) FROM procrastinate_jobs") == [(1,)]


def test_http_waits_for_a_gitops_deployment_of_the_name(
    conn: psycopg.Connection[Any], client: TestClient
) -> None:
    enqueue(conn, "git-1")

    response = client.post(DEPLOY, json={"name": "GIT-1"}, headers=AUTH)

    assert response.status_code == 409
    assert response.json()["error"] == "deployment_in_progress"
    assert client.delete("/admin/servers/git-1", headers=AUTH).status_code == 409


def test_a_conflict_inside_a_callers_transaction_leaves_it_usable(service_db: str) -> None:
    with psycopg.connect(service_db) as conn:  # not autocommit: one transaction for all
        first = enqueue(conn, "git-1")
        with pytest.raises(DeploymentConflict):
            enqueue(conn, "GIT-1")
        second = enqueue(conn, "git-2")
    assert rows(service_db, "SELECT id FROM deployments ORDER BY id") == [(first,), (second,)]


def test_a_gitops_up_of_an_existing_server_is_an_update(
    conn: psycopg.Connection[Any], service_db: str, client: TestClient
) -> None:
    insert_server(service_db, "web-1")
    # Over HTTP the name is taken ...
    assert client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH).status_code == 409

    # ... GitOps updates it.
    deployment_id = enqueue(conn, "web-1", config={"serverName": "web-1", "size": "s-2vcpu-4gb"})

    assert job_of(conn, deployment_id)[1] == "citrus.deploy"


def test_a_gitops_destroy_uses_the_last_ups_config(conn: psycopg.Connection[Any]) -> None:
    config = {"serverName": "git-1", "agentName": "edge-7", "size": "s-2vcpu-4gb"}
    settle(conn, enqueue(conn, "git-1", config=config), "succeeded")

    destroy = enqueue(conn, "git-1", "destroy", {"serverName": "git-1"}, commit="b2")

    assert job_of(conn, destroy)[:5] == ("deployments", "citrus.destroy", 0, "git-1", "git-1")
    assert rows_of(conn, "SELECT config, commit FROM deployments WHERE id = %s", destroy) == [
        (config, "b2")
    ]


def test_a_gitops_destroy_of_an_unknown_name_is_not_found(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NotFound, match="no server named 'ghost-1'"):
        enqueue(conn, "ghost-1", "destroy")

    assert rows_of(conn, "SELECT count(*) FROM procrastinate_jobs") == [(0,)]


def test_enqueue_refuses_a_bad_name_or_kind(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValueError, match="name: "):
        enqueue(conn, "bad_name!")
    with pytest.raises(ValueError, match="kind 'refresh'"):
        enqueue(conn, "web-1", "refresh")


def rows_of(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params or None).fetchall()


def settle(conn: psycopg.Connection[Any], deployment_id: int, outcome: str) -> None:
    """What a worker leaves: the deployment finished, its job too (its queueing lock freed)."""
    conn.execute("UPDATE deployments SET state = %s WHERE id = %s", (outcome, deployment_id))
    conn.execute(
        "UPDATE procrastinate_jobs SET status = %s WHERE (args ->> 'deployment_id')::bigint = %s",
        ("succeeded" if outcome == "succeeded" else "failed", deployment_id),
    )


# -- the stack config of a record --------------------------------------------------------------


def test_the_records_values_reach_the_stack_config_and_win(service_db: str, tmp_path: Path) -> None:
    settings = make_settings(
        service_db, tmp_path, ENGINE_WS_URL="wss://hub.example.com/ws", GITHUB_TOKEN="ghp_service"
    )
    record = {
        "serverName": "git-1",
        "size": "s-2vcpu-4gb",
        "tags": ["web", "eu"],
        "monitoring": True,
        "replaceOnBootScriptChange": False,
        "engineWsUrl": "wss://gitops.example.com/ws",
        "digitalocean:apiEndpoint": "http://127.0.0.1:9/",
    }

    config = stack_config(settings, record)

    assert config[f"{PROJECT}:size"] == ("s-2vcpu-4gb", False)
    # Typed, as the project declares them: the deployer hands the CLI lists as lists.
    assert config[f"{PROJECT}:tags"] == (["web", "eu"], False)
    assert config[f"{PROJECT}:monitoring"] == (True, False)
    assert config[f"{PROJECT}:replaceOnBootScriptChange"] == (False, False)
    assert config[f"{PROJECT}:engineWsUrl"] == ("wss://gitops.example.com/ws", False)
    assert config["digitalocean:apiEndpoint"] == ("http://127.0.0.1:9/", False)
    assert config[f"{PROJECT}:githubToken"] == ("ghp_service", True)
    assert f"{PROJECT}:digitalocean:apiEndpoint" not in config


@pytest.mark.parametrize(
    ("keys", "tags"),
    [('["12345", "aa:bb"]', '["citrus"]'), ("12345, aa:bb", "citrus")],
    ids=["json", "comma-separated"],
)
def test_the_services_ssh_keys_and_tags_reach_every_stack_that_sets_none(
    service_db: str, tmp_path: Path, keys: str, tags: str
) -> None:
    settings = make_settings(service_db, tmp_path, CITRUS_SSH_KEYS=keys, CITRUS_DROPLET_TAGS=tags)

    http = stack_config(settings, {"serverName": "web-1"})
    gitops = stack_config(settings, {"serverName": "git-1", "tags": ["eu"], "sshKeys": []})

    assert http[f"{PROJECT}:sshKeys"] == (["12345", "aa:bb"], False)
    assert http[f"{PROJECT}:tags"] == (["citrus"], False)
    assert gitops[f"{PROJECT}:tags"] == (["eu"], False)  # a file's own value wins
    assert gitops[f"{PROJECT}:sshKeys"] == ([], False)


def test_secrets_come_from_the_service_never_from_a_record(service_db: str, tmp_path: Path) -> None:
    settings = make_settings(
        service_db, tmp_path, CITRUS_DEPLOYER="automation", GITHUB_TOKEN="ghp_service"
    )
    record = {
        "serverName": "git-1",
        "githubToken": "from-the-record",
        "databaseUrl": "postgresql://record@db/x",
        "digitalocean:token": "from-the-record",
    }

    config = stack_config(settings, record)

    assert config[f"{PROJECT}:githubToken"] == ("ghp_service", True)
    assert config[f"{PROJECT}:databaseUrl"] == (service_db, True)
    assert "digitalocean:token" not in config  # the service has none: not the record's either


def test_an_http_record_gives_the_stack_config_it_always_did(
    service_db: str, tmp_path: Path
) -> None:
    settings = make_settings(service_db, tmp_path, ENGINE_WS_URL="wss://hub.example.com/ws")

    config = stack_config(settings, {"serverName": "web-1", "agentName": "agent-web-1"})

    assert config == {
        f"{PROJECT}:serverName": ("web-1", False),
        f"{PROJECT}:agentName": ("agent-web-1", False),
        f"{PROJECT}:engineWsUrl": ("wss://hub.example.com/ws", False),
        f"{PROJECT}:databaseUrl": (service_db, True),
        f"{PROJECT}:githubToken": ("test-engine-github-token", True),
        "digitalocean:token": ("test-engine-do-token", True),
    }


# -- end to end: worker, rows, API -------------------------------------------------------------


def finished(service_db: str, deployment_id: int) -> tuple[Any, ...] | None:
    ((state_, error, program),) = rows(
        service_db,
        "SELECT state, error, program_hash FROM deployments WHERE id = %s",
        (deployment_id,),
    )
    return (state_, error, program) if state_ not in ("queued", "running") else None


def droplet_inputs(tmp_path: Path, stack: str) -> dict[str, Any]:
    checkpoint = Engine(tmp_path / "state" / "test-engine", passphrase=PASSPHRASE).export(stack)
    (droplet,) = [r for r in checkpoint["resources"] if r["type"].endswith("Droplet")]
    inputs: dict[str, Any] = droplet["inputs"]
    return inputs


def test_a_gitops_server_deployed_by_a_worker_and_shown_by_the_api(
    conn: psycopg.Connection[Any],
    service_db: str,
    client: TestClient,
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    config = {
        "serverName": "git-1",
        "region": "nyc3",
        "size": "s-2vcpu-4gb",
        "tags": ["web"],
        "monitoring": True,
    }
    apply_id = gitops_store.start_apply(conn, REPO, "a1", {"version": 1})
    up = enqueue(conn, "git-1", config=config, apply_id=apply_id)
    start_worker()

    done = wait_for(lambda: finished(service_db, up), timeout=60, what="the gitops up")

    assert done == ("succeeded", None, program_hash())
    assert rows(service_db, "SELECT name, region, size, status FROM servers") == [
        ("git-1", "nyc3", "s-2vcpu-4gb", "provisioning")
    ]
    inputs = droplet_inputs(tmp_path, "git-1")
    assert (inputs["size"], inputs["tags"], inputs["monitoring"]) == ("s-2vcpu-4gb", ["web"], True)

    shown = client.get("/admin/servers/git-1", headers=AUTH).json()
    assert shown["managedBy"] == {"kind": "gitops", "repository": REPO}
    assert shown["gitops"] == {
        "state": "Reconciling",  # the agent has yet to connect
        "lastAppliedCommit": "a1",
        "lastAttemptedCommit": "a1",
    }

    # The agent connects: the hub sets it online, the stale check the server active.
    conn.execute("UPDATE agents SET status = 'online'")
    conn.execute("UPDATE servers SET status = 'active'")
    listed = client.get("/admin/servers", headers=AUTH).json()["servers"]
    assert [(s["name"], s["managedBy"], s["gitops"]) for s in listed] == [
        (
            "git-1",
            {"kind": "gitops", "repository": REPO},
            {"state": "Ready", "lastAppliedCommit": "a1", "lastAttemptedCommit": "a1"},
        )
    ]

    destroy = enqueue(conn, "git-1", "destroy", {}, commit="b2", apply_id=apply_id)
    done = wait_for(lambda: finished(service_db, destroy), timeout=60, what="the gitops destroy")

    assert done == ("succeeded", None, None)
    assert rows(service_db, "SELECT count(*) FROM servers") == [(0,)]
    assert "git-1" not in ownership.load_deployed(conn)
    assert client.get("/admin/servers/git-1", headers=AUTH).status_code == 404
    assert [d["state"] for d in gitops_store.apply_deployments(conn, apply_id)] == [
        "succeeded",
        "succeeded",
    ]


def test_http_and_manual_servers_show_who_manages_them(
    conn: psycopg.Connection[Any], service_db: str, client: TestClient
) -> None:
    client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH)
    insert_server(service_db, "by-hand")

    shown = client.get("/admin/servers/web-1", headers=AUTH).json()
    listed = client.get("/admin/servers", headers=AUTH).json()["servers"]

    assert (shown["managedBy"], shown["gitops"]) == ({"kind": "http", "repository": None}, None)
    assert [(s["name"], s["managedBy"]["kind"], s["gitops"]) for s in listed] == [
        ("by-hand", "manual", None),
        ("web-1", "http", None),
    ]


def test_a_failed_gitops_up_shows_failed_with_the_last_applied_commit(
    conn: psycopg.Connection[Any], service_db: str, client: TestClient
) -> None:
    settle(conn, enqueue(conn, "git-1", commit="a1"), "succeeded")
    insert_server(service_db, "git-1", status="active")
    settle(conn, enqueue(conn, "git-1", commit="b2"), "failed")

    shown = client.get("/admin/servers/git-1", headers=AUTH).json()

    assert shown["gitops"] == {
        "state": "Failed",
        "lastAppliedCommit": "a1",
        "lastAttemptedCommit": "b2",
    }


def test_the_openapi_schema_documents_the_new_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    assert {"managedBy", "gitops"} <= set(schemas["ServerOut"]["properties"])
    assert {"managedBy", "gitops"} <= set(schemas["ServerSummaryOut"]["properties"])
    assert schemas["ManagedByOut"]["properties"]["kind"]["enum"] == ["http", "gitops", "manual"]
    assert json.dumps(schemas["GitOpsOut"]["properties"]["state"]["enum"]) == json.dumps(
        ["Ready", "Reconciling", "Failed", "Stalled"]
    )
