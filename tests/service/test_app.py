"""The HTTP contract: the old answer byte for byte, every error, auth on every admin route."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from citrus_deploy.settings import SettingsError, load_settings
from citrus_deploy.store import servers
from citrus_deploy.web.app import create_app
from tests.conftest import insert_server
from tests.service.conftest import AUTH, TOKEN, make_settings, rows, service_env

DEPLOY = "/admin/servers/deploy-with-agent"


def test_accepted_answer_is_the_old_shape_byte_for_byte(
    client: TestClient, service_db: str
) -> None:
    response = client.post(DEPLOY, json={"name": "web-1"}, headers=AUTH)

    assert response.status_code == 202
    assert response.content == (
        b'{"success":true,"message":"Server with agent deployment initiated",'
        b'"server":{"id":null,"name":"web-1","status":"provisioning","agent":{"id":null}}}'
    )
    assert response.headers["location"] == "/admin/servers/web-1"
    ((state, kind, config, job),) = rows(
        service_db, "SELECT state, kind, config, job_id FROM deployments"
    )
    assert (state, kind, config) == ("queued", "up", {"serverName": "web-1"})
    # The job the statement writes is the one Task.defer would write.
    ((dep_id,),) = rows(service_db, "SELECT id FROM deployments")
    assert rows(
        service_db,
        "SELECT queue_name, task_name, priority, lock, queueing_lock, args, status, scheduled_at "
        "FROM procrastinate_jobs",
    ) == [
        (
            "deployments",
            "citrus.deploy",
            0,
            "web-1",
            "web-1",
            {"deployment_id": dep_id},
            "todo",
            None,
        )
    ]
    assert rows(service_db, "SELECT type FROM procrastinate_events") == [("deferred",)]
    assert job is None  # the worker records its job id when it starts


@pytest.mark.parametrize("body", [None, {}, {"name": None}, {"name": ""}])
def test_no_name_follows_the_old_rule(client: TestClient, service_db: str, body: Any) -> None:
    response = client.post(DEPLOY, json=body, headers=AUTH)

    assert response.status_code == 202
    name = response.json()["server"]["name"]
    millis = re.fullmatch(r"server-(\d{13})", name)
    assert millis
    ((config,),) = rows(service_db, "SELECT config FROM deployments")
    assert config == {"serverName": name, "agentName": f"agent-{millis.group(1)}"}


def test_region_and_size_go_into_the_deployments_config(
    client: TestClient, service_db: str
) -> None:
    named = client.post(
        DEPLOY, json={"name": "web-1", "region": "nyc3", "size": "s-2vcpu-4gb"}, headers=AUTH
    )
    generated = client.post(DEPLOY, json={"size": "c-4"}, headers=AUTH)

    assert (named.status_code, generated.status_code) == (202, 202), named.text
    name = generated.json()["server"]["name"]
    configs = [
        config for (config,) in rows(service_db, "SELECT config FROM deployments ORDER BY id")
    ]
    assert configs == [
        {"serverName": "web-1", "region": "nyc3", "size": "s-2vcpu-4gb"},
        {"serverName": name, "agentName": "agent-" + name.removeprefix("server-"), "size": "c-4"},
    ]


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"name": "web-1", "region": "SFO3"}, "invalid_value", "region"),
        ({"name": "web-1", "region": "sfo3; reboot"}, "invalid_value", "region"),
        ({"name": "web-1", "size": "s 1"}, "invalid_value", "size"),
        ({"name": "web-1", "size": "x" * 65}, "invalid_value", "size"),
        ({"name": "web-1", "region": ""}, "invalid_value", "region"),
        ({"name": "web-1", "region": 3}, "invalid_request", "region"),
        ({"name": "web-1", "regoin": "nyc3"}, "invalid_request", "regoin"),
        ({"name": "web-1", "image": "debian-12-x64"}, "invalid_request", "image"),
        ({"githubToken": "ghp_x"}, "invalid_request", "githubToken"),
    ],
)
def test_a_bad_or_unknown_field_is_422_naming_it(
    client: TestClient, service_db: str, body: dict[str, Any], error: str, field: str
) -> None:
    """An unknown field was ignored silently (a typo deployed sfo3): now it is refused."""
    response = client.post(DEPLOY, json=body, headers=AUTH)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == error
    assert [f["field"] for f in response.json()["fields"]] == [field]
    assert response.json()["fields"][0]["rule"]
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_the_schema_lists_region_and_size_and_no_other_field(client: TestClient) -> None:
    request = client.get("/openapi.json").json()["components"]["schemas"]["DeployRequest"]

    assert request["additionalProperties"] is False
    assert sorted(request["properties"]) == ["name", "region", "size"]
    for field in ("region", "size"):
        described = request["properties"][field]
        assert described["pattern"].startswith("^")
        assert "Pulumi.yaml" in described["description"]


def test_the_root_leads_to_the_console(client: TestClient) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, "/", follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/console")
    signed_out = client.get("/")
    assert signed_out.url.path == "/console/sign-in"


def test_generated_names_never_collide(client: TestClient, service_db: str) -> None:
    names = {client.post(DEPLOY, headers=AUTH).json()["server"]["name"] for _ in range(5)}

    assert len(names) == 5


def test_wait_without_a_worker_answers_202_after_the_bounded_wait(
    client: TestClient,
) -> None:
    response = client.post(DEPLOY + "?wait=true&timeout=0.3", json={"name": "w-1"}, headers=AUTH)

    assert response.status_code == 202
    assert response.json()["server"]["status"] == "provisioning"


@pytest.mark.parametrize(
    ("body", "status", "error", "field"),
    [
        ({"name": "bad_name!"}, 422, "invalid_value", "name"),
        ({"name": "a" * 64}, 422, "invalid_value", "name"),
        ({"name": "-leading"}, 422, "invalid_value", "name"),
        ({"name": 42}, 422, "invalid_request", "name"),
        ([1, 2], 422, "invalid_request", "body"),
    ],
)
def test_bad_input_is_refused_with_the_field_and_nothing_queued(
    client: TestClient, service_db: str, body: Any, status: int, error: str, field: str
) -> None:
    response = client.post(DEPLOY, json=body, headers=AUTH)

    assert response.status_code == status
    answer = response.json()
    assert (answer["success"], answer["error"]) == (False, error)
    assert answer["fields"][0]["field"] == field
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_malformed_json_is_400(client: TestClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = client.post(DEPLOY, content=b'{"name": ', headers=headers)

    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


def test_oversized_body_is_413(client: TestClient, service_db: str) -> None:
    big = json.dumps({"name": "x", "pad": "a" * 10_000}).encode()
    announced = client.post(
        DEPLOY, content=big, headers={**AUTH, "Content-Type": "application/json"}
    )

    def chunks() -> Any:
        yield big[:3000]
        yield big[3000:]

    streamed = client.post(
        DEPLOY, content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )

    assert announced.status_code == 413
    assert streamed.status_code == 413
    assert announced.json()["error"] == "body_too_large"
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_second_post_for_a_running_name_is_409(client: TestClient, service_db: str) -> None:
    first = client.post(DEPLOY, json={"name": "dup-1"}, headers=AUTH)
    second = client.post(DEPLOY, json={"name": "dup-1"}, headers=AUTH)

    assert first.status_code == 202
    assert second.status_code == 409
    assert second.json()["error"] == "deployment_in_progress"
    assert second.headers["location"] == "/admin/servers/dup-1"
    assert rows(service_db, "SELECT count(*) FROM procrastinate_jobs") == [(1,)]


def test_post_for_an_existing_server_is_409_name_in_use(
    client: TestClient, service_db: str
) -> None:
    insert_server(service_db, "taken-1")

    response = client.post(DEPLOY, json={"name": "taken-1"}, headers=AUTH)

    assert response.status_code == 409
    assert response.json()["error"] == "name_in_use"
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_post_after_a_failed_up_without_droplet_retries_that_stack(
    client: TestClient, service_db: str
) -> None:
    client.post(DEPLOY, json={"name": "again-1"}, headers=AUTH)
    with __import__("psycopg").connect(service_db) as conn:
        conn.execute("UPDATE deployments SET state = 'failed', error = 'boom'")
        conn.execute("DELETE FROM procrastinate_jobs")
    failed = client.get("/admin/servers/again-1", headers=AUTH).json()

    retried = client.post(DEPLOY, json={"name": "again-1"}, headers=AUTH)

    assert failed["status"] == "failed"
    assert failed["lastDeployment"]["error"] == "boom"
    assert retried.status_code == 202


def test_unknown_server_and_deployment_are_404(client: TestClient) -> None:
    for method, path in [
        ("GET", "/admin/servers/nope-1"),
        ("DELETE", "/admin/servers/nope-1"),
        ("GET", "/admin/deployments/999"),
        ("GET", "/admin/nothing-here"),
    ]:
        response = client.request(method, path, headers=AUTH)
        assert response.status_code == 404, path
        assert response.json()["success"] is False


def test_delete_while_deploying_is_409(client: TestClient) -> None:
    client.post(DEPLOY, json={"name": "busy-1"}, headers=AUTH)

    response = client.delete("/admin/servers/busy-1", headers=AUTH)

    assert response.status_code == 409
    assert response.json()["error"] == "deployment_in_progress"


def test_delete_queues_a_destroy_and_shows_destroying(client: TestClient, service_db: str) -> None:
    insert_server(service_db, "old-1", status="active")

    response = client.delete("/admin/servers/old-1", headers=AUTH)
    shown = client.get("/admin/servers/old-1", headers=AUTH).json()

    assert response.status_code == 202
    dep = response.json()["deployment"]
    assert response.headers["location"] == f"/admin/deployments/{dep['id']}"
    assert (dep["kind"], dep["state"]) == ("destroy", "queued")
    assert shown["status"] == "destroying"
    assert rows(service_db, "SELECT task_name, lock FROM procrastinate_jobs") == [
        ("citrus.destroy", "old-1")
    ]


def test_list_and_get_show_rows_and_deployments(client: TestClient, service_db: str) -> None:
    insert_server(service_db, "rowed-1", status="active")
    client.post(DEPLOY, json={"name": "queued-1"}, headers=AUTH)

    listed = client.get("/admin/servers", headers=AUTH).json()["servers"]
    queued = client.get("/admin/servers/queued-1", headers=AUTH).json()

    assert [(s["name"], s["status"]) for s in listed] == [
        ("queued-1", "provisioning"),
        ("rowed-1", "active"),
    ]
    assert queued["id"] is None
    assert queued["currentDeployment"]["state"] == "queued"
    assert queued["lastDeployment"] is None


def test_database_down_is_503_without_detail(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    settings = make_settings(
        f"postgresql://postgres@127.0.0.1:{port}/nothing", tmp_path, CITRUS_DB_TIMEOUT="0.5"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        post = client.post(DEPLOY, json={"name": "x-1"}, headers=AUTH)
        health = client.get("/healthz")

    assert post.status_code == 503
    assert post.json()["error"] == "database_unavailable"
    assert str(port) not in post.text
    assert health.status_code == 503
    assert health.json() == {"status": "degraded", "database": "unreachable"}


def test_unexpected_errors_are_500_without_their_text(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("internal detail with secret-ish text")

    monkeypatch.setattr(servers, "list_servers", broken)

    response = client.get("/admin/servers", headers=AUTH)

    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "secret-ish" not in response.text


def test_healthz_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}


def test_openapi_documents_the_nulls(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]

    assert "null until the droplet exists" in schema["ServerRef"]["properties"]["id"]["description"]
    assert "null until" in schema["AgentRef"]["properties"]["id"]["description"]
    # Swagger UI is off in production unless CITRUS_DOCS=true (test_web_hardening.py).
    assert client.get("/docs").status_code == 404


# -- authentication on every admin route -------------------------------------------------------

BAD_AUTH = [
    pytest.param({}, id="missing"),
    pytest.param({"Authorization": "Bearer wrong-token-0123456789abcdef"}, id="wrong"),
    pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong-scheme"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="longer"),
    pytest.param({"Authorization": "Bearer "}, id="empty"),
]


def admin_routes() -> list[tuple[str, str]]:
    """Every /admin route of the app, so a new route is covered without editing this test."""
    app = create_app(
        load_settings(**service_env("postgresql://postgres@127.0.0.1:1/none", Path("/nonexistent")))
    )
    found = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/admin"):
            concrete = path.replace("{name}", "web-1").replace("{deployment_id}", "1")
            found += [(method.upper(), concrete) for method in sorted(operations)]
    return found


ADMIN_ROUTES = admin_routes()


def test_the_route_table_is_complete() -> None:
    assert sorted(ADMIN_ROUTES) == [
        ("DELETE", "/admin/servers/web-1"),
        ("GET", "/admin/deployments/1"),
        ("GET", "/admin/servers"),
        ("GET", "/admin/servers/web-1"),
        ("POST", "/admin/servers/deploy-with-agent"),
    ]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
@pytest.mark.parametrize("headers", BAD_AUTH)
def test_every_admin_route_needs_the_token(
    client: TestClient, service_db: str, method: str, path: str, headers: dict[str, str]
) -> None:
    insert_server(service_db, "web-1")

    response = client.request(method, path, headers=headers, json={"name": "new-1"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]
    assert rows(service_db, "SELECT count(*) FROM procrastinate_jobs") == [(0,)]


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["changeme", "secret", "short-token"])
def test_placeholder_admin_tokens_are_refused_outside_development(
    service_db: str, tmp_path: Path, token: str
) -> None:
    env = service_env(service_db, tmp_path, ADMIN_TOKEN=token)

    with pytest.raises(SettingsError, match="ADMIN_TOKEN must be a real secret"):
        load_settings(**env)
    assert load_settings(**{**env, "CITRUS_ENV": "development"}).admin_token


def test_required_secrets_have_no_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DATABASE_URL", "ADMIN_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert "DATABASE_URL" in str(raised.value)
    assert "ADMIN_TOKEN" in str(raised.value)


@pytest.mark.parametrize("deployer", ["automation", "test-engine"])
def test_workers_need_a_passphrase(service_db: str, tmp_path: Path, deployer: str) -> None:
    env = service_env(service_db, tmp_path, CITRUS_DEPLOYER=deployer)
    env.pop("PULUMI_CONFIG_PASSPHRASE", None)

    with pytest.raises(SettingsError, match="PULUMI_CONFIG_PASSPHRASE"):
        load_settings(**env).check_deployer()


def test_a_service_that_cannot_build_valid_stacks_refuses_to_start(
    service_db: str, tmp_path: Path
) -> None:
    settings = make_settings(service_db, tmp_path, ENGINE_WS_URL="https://not-a-websocket")

    with pytest.raises(SettingsError, match="engineWsUrl"):
        create_app(settings)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_durations_must_be_finite_and_positive(service_db: str, tmp_path: Path, value: str) -> None:
    """AGENT_CONNECT_TIMEOUT=inf used to pass, then failed every minutely check."""
    with pytest.raises(SettingsError, match="AGENT_CONNECT_TIMEOUT"):
        make_settings(service_db, tmp_path, AGENT_CONNECT_TIMEOUT=value)
