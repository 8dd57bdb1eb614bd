"""The web service's edges (issue 9): waits, odd names, settings that bite, slow clients, caps.

Each test here failed before its fix. The slow-client tests run `citrus-deploy service web` (the
real uvicorn, as cmd_web configures it) on 127.0.0.1 and talk to it over a raw socket, with
bounded timeouts.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from citrus_deploy.settings import SettingsError, load_settings
from citrus_deploy.standin.pg import PgServer, free_port
from citrus_deploy.store import queries
from citrus_deploy.web.app import create_app
from tests.conftest import insert_server
from tests.paths import REPO
from tests.service.conftest import (
    AUTH,
    TOKEN,
    Worker,
    fault_trigger,
    make_settings,
    rows,
    service_env,
    wait_for,
)

DEPLOY = "/admin/servers/deploy-with-agent"
ACCEPTED = re.compile(
    rb'\{"success":true,"message":"Server with agent deployment initiated",'
    rb'"server":\{"id":null,"name":"(server-[0-9a-z-]+)","status":"provisioning",'
    rb'"agent":\{"id":null\}\}\}'
)


# -- ?wait=true: once the deployment is stored, the answer says so ------------------------------


def test_wait_answers_202_when_the_database_restarts_after_the_deployment_is_queued(
    own_pg: PgServer, tmp_path: Path
) -> None:
    settings = make_settings(own_pg.conninfo(), tmp_path / "state")
    answers: list[Any] = []
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        post = threading.Thread(
            target=lambda: answers.append(
                client.post(DEPLOY + "?wait=true&timeout=20", headers=AUTH)
            )
        )
        post.start()
        wait_for(
            lambda: rows(own_pg.conninfo(), "SELECT count(*) FROM deployments") == [(1,)],
            timeout=10,
            what="the deployment row",
        )
        own_pg.stop()  # while the POST waits for the deployment to finish
        time.sleep(1)
        own_pg.restart()
        post.join(30)

    (answer,) = answers
    assert answer.status_code == 202, answer.text
    match = ACCEPTED.fullmatch(answer.content)
    assert match, answer.content
    assert answer.headers["location"] == f"/admin/servers/{match.group(1).decode()}"
    # One deployment: a client told 202 does not retry and queue a second server.
    assert rows(own_pg.conninfo(), "SELECT server_name, state FROM deployments") == [
        (match.group(1).decode(), "queued")
    ]


# -- names and ids that reach PostgreSQL --------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a%00b", id="nul"),
        pytest.param("a%01b", id="control"),
        pytest.param("%ff", id="not-utf8"),
        pytest.param("%ed%a0%80", id="surrogate"),
        pytest.param("bad_name!", id="rule"),
        pytest.param("a" * 64, id="too-long"),
    ],
)
def test_a_server_name_that_breaks_the_rule_is_422_naming_it(
    client: TestClient,
    service_db: str,
    caplog: pytest.LogCaptureFixture,
    method: str,
    name: str,
) -> None:
    with caplog.at_level(logging.ERROR):
        response = client.request(method, f"/admin/servers/{name}", headers=AUTH)

    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["error"] == "invalid_value"
    assert answer["fields"][0]["field"] == "name"
    assert answer["fields"][0]["rule"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_the_name_rule_is_checked_after_the_token(client: TestClient) -> None:
    response = client.get("/admin/servers/a%00b")

    assert response.status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/admin/deployments/1%00",
        "/admin/deployments/0",
        "/admin/deployments/-1",
        "/admin/deployments/9223372036854775808",
        "/admin/deployments/1e3",
        "/admin/servers?limit=1%00",
        "/admin/servers?offset=-1",
        DEPLOY + "?wait=true&timeout=nan",
    ],
)
def test_other_parameters_that_reach_postgresql_are_422(client: TestClient, path: str) -> None:
    method = "POST" if path.startswith(DEPLOY) else "GET"

    response = client.request(method, path, headers=AUTH)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"


# -- ADMIN_TOKEN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(" " * 16, id="spaces"),
        pytest.param(TOKEN + "\n", id="trailing-newline"),
        pytest.param(TOKEN + " ", id="trailing-space"),
        pytest.param("\t" + TOKEN, id="leading-tab"),
        pytest.param("0123456789 abcdef", id="inner-space"),
        pytest.param("0123456789\x00abcdef", id="control"),
        pytest.param("0123456789abcdéf", id="non-ascii"),
    ],
)
@pytest.mark.parametrize("env", ["production", "development"])
def test_an_admin_token_no_client_can_send_is_refused(
    service_db: str, tmp_path: Path, token: str, env: str
) -> None:
    with pytest.raises(SettingsError, match="ADMIN_TOKEN may hold only printable ASCII"):
        load_settings(**service_env(service_db, tmp_path, ADMIN_TOKEN=token, CITRUS_ENV=env))


# -- /docs ---------------------------------------------------------------------------------------


def test_docs_are_off_by_default_in_production(client: TestClient) -> None:
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 404
    # The schema stays: it holds no secret, clients and the contract tests read it.
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "extra",
    [{"CITRUS_DOCS": "true"}, {"CITRUS_ENV": "development"}],
    ids=["CITRUS_DOCS", "development"],
)
def test_docs_when_on_load_nothing_from_another_host(
    service_db: str, tmp_path: Path, extra: dict[str, str]
) -> None:
    settings = make_settings(service_db, tmp_path, **extra)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        page = client.get("/docs")
        assets = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        fetched = {url: client.get(url) for url in assets}

    assert page.status_code == 200
    assert "://" not in page.text  # no absolute URL at all: every asset comes from this service
    assert {a.rsplit("/", 1)[-1] for a in assets} == {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "favicon.png",
    }
    assert all(r.status_code == 200 and r.content for r in fetched.values()), fetched
    assert "SwaggerUIBundle" in fetched["/docs/assets/swagger-ui-bundle.js"].text


def test_docs_can_be_turned_off_in_development(service_db: str, tmp_path: Path) -> None:
    settings = make_settings(service_db, tmp_path, CITRUS_ENV="development", CITRUS_DOCS="false")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/docs").status_code == 404


# -- redirects -----------------------------------------------------------------------------------


def test_a_trailing_slash_is_not_redirected_to_the_requests_host(client: TestClient) -> None:
    response = client.get(
        "/admin/servers/", headers={**AUTH, "Host": "evil.example"}, follow_redirects=False
    )

    assert response.status_code == 404
    assert "location" not in response.headers
    assert "evil.example" not in response.text


# -- answers the README promises -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'"\xff"', id="not-utf8"),
        pytest.param(b'{"name": "\xe9"}', id="latin-1"),
        pytest.param(b"[" * 3000, id="nested-too-deep"),
    ],
)
def test_a_body_that_cannot_be_decoded_is_400_malformed_json(
    client: TestClient, service_db: str, body: bytes
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = client.post(DEPLOY, content=body, headers=headers)

    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/admin/servers/web-1", "DELETE, GET, HEAD"),
        ("POST", "/admin/servers/web-1", "DELETE, GET, HEAD"),
        ("PATCH", "/admin/servers", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/openapi.json", "GET, HEAD"),
        ("GET", "/admin/deployments/1/x", None),
    ],
)
def test_405_lists_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str | None
) -> None:
    response = client.request(method, path, headers=AUTH)

    if allow is None:
        assert response.status_code == 404
        return
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("path", "headers"), [("/healthz", {}), ("/admin/servers", AUTH), ("/openapi.json", {})]
)
def test_head_answers_like_get_without_a_body(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    got = client.get(path, headers=headers)
    head = client.head(path, headers=headers)

    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == str(len(got.content))


def test_head_needs_the_token_like_get(client: TestClient) -> None:
    assert client.head("/admin/servers").status_code == 401


def test_the_list_names_each_agent(client: TestClient, service_db: str) -> None:
    agent = insert_server(service_db, "rowed-1", "active")

    (listed,) = client.get("/admin/servers", headers=AUTH).json()["servers"]

    assert listed["agent"] == {"id": agent, "name": "agent-rowed-1", "status": "offline"}


def test_after_a_destroy_that_failed_half_way_the_agent_still_shows(
    client: TestClient, service_db: str, start_worker: Callable[..., Worker]
) -> None:
    start_worker()
    up = client.post(DEPLOY + "?wait=true", json={"name": "half-1"}, headers=AUTH).json()
    # The destroy removes the servers row and the droplet, then the agents row is refused.
    fault_trigger(service_db, "DELETE ON agents", sqlstate="23514", times="always")
    location = client.delete("/admin/servers/half-1", headers=AUTH).headers["location"]
    wait_for(
        lambda: client.get(location, headers=AUTH).json()["state"] == "failed",
        timeout=60,
        what="the destroy to fail",
    )

    shown = client.get("/admin/servers/half-1", headers=AUTH).json()

    assert rows(service_db, "SELECT count(*) FROM servers") == [(0,)]
    ((agent_id,),) = rows(service_db, "SELECT id::text FROM agents")
    assert up["server"]["agent"]["id"] == agent_id
    assert shown["agent"] == {"id": agent_id, "name": "agent-half-1", "status": "offline"}
    assert (shown["status"], shown["id"], shown["ipv4Address"]) == ("failed", None, None)
    assert shown["lastDeployment"]["kind"] == "destroy"


# -- the queue cap -------------------------------------------------------------------------------


@pytest.fixture
def capped(service_db: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(service_db, tmp_path, CITRUS_MAX_QUEUED="2")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_full_queue_answers_503_queue_full_and_changes_nothing(
    capped: TestClient, service_db: str
) -> None:
    insert_server(service_db, "old-1", "active")
    first = capped.post(DEPLOY, json={"name": "q-1"}, headers=AUTH)
    second = capped.post(DEPLOY, headers=AUTH)

    third = capped.post(DEPLOY, json={"name": "q-3"}, headers=AUTH)
    delete = capped.delete("/admin/servers/old-1", headers=AUTH)

    assert (first.status_code, second.status_code) == (202, 202)
    for refused in (third, delete):
        assert refused.status_code == 503
        assert refused.json()["error"] == "queue_full"
        assert "CITRUS_MAX_QUEUED" in refused.json()["message"]
        assert int(refused.headers["retry-after"]) > 0
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(2,)]
    assert rows(service_db, "SELECT count(*) FROM procrastinate_jobs") == [(2,)]

    # A finished deployment makes room.
    with psycopg.connect(service_db) as conn:
        conn.execute("UPDATE deployments SET state = 'failed' WHERE server_name = 'q-1'")
    assert capped.post(DEPLOY, json={"name": "q-3"}, headers=AUTH).status_code == 202


def test_the_count_uses_the_partial_index(service_db: str) -> None:
    with psycopg.connect(service_db) as conn:
        conn.execute("SET enable_seqscan = off")
        count = queries.load()["count_active_deployments"]
        plan = conn.execute("EXPLAIN " + count, {"cap": 1000}).fetchall()

    assert "deployments_one_active" in "\n".join(line for (line,) in plan)


def test_max_queued_zero_is_no_cap(service_db: str, tmp_path: Path) -> None:
    settings = make_settings(service_db, tmp_path, CITRUS_MAX_QUEUED="0")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answers = [client.post(DEPLOY, headers=AUTH).status_code for _ in range(3)]

    assert answers == [202, 202, 202]


# -- slow clients against the real server --------------------------------------------------------


@contextmanager
def web_process(service_db: str, tmp_path: Path, **extra: str) -> Iterator[int]:
    """`citrus-deploy service web` on 127.0.0.1:<free port>; yields the port once it answers."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CITRUS_", "ADMIN_"))},
        **service_env(service_db, tmp_path / "state", CITRUS_PORT=str(port), **extra),
    }
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citrus_deploy", "service", "web"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=30, what="the web process")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_all(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or `limit` seconds pass)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return data + b"<closed>"
        data += chunk
    return data


HEAD_OF_POST = (
    f"POST {DEPLOY} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
    "Content-Type: application/json\r\n"
).encode()


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(HEAD_OF_POST + b'Content-Length: 40\r\n\r\n{"name": ', id="content-length"),
        pytest.param(
            HEAD_OF_POST + b'Transfer-Encoding: chunked\r\n\r\n9\r\n{"name": \r\n', id="chunked"
        ),
    ],
)
def test_a_body_that_stops_half_way_is_answered_408_and_closed(
    service_db: str, tmp_path: Path, request_bytes: bytes
) -> None:
    with (
        web_process(service_db, tmp_path, CITRUS_BODY_TIMEOUT="1") as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(request_bytes)
        started = time.monotonic()
        answer = _read_all(sock, limit=8)
        took = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"error":"request_timeout"' in answer
    assert answer.endswith(b"<closed>")
    assert 0.8 < took < 5
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_connections_past_the_cap_are_answered_503(service_db: str, tmp_path: Path) -> None:
    def health(port: int) -> int:
        with httpx.Client(timeout=5) as http:
            return http.get(f"http://127.0.0.1:{port}/healthz").status_code

    with web_process(service_db, tmp_path, CITRUS_MAX_CONNECTIONS="3") as port:
        idle: list[socket.socket] = []
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert wait_for(lambda: health(port) == 200, timeout=5, what="200 under the cap")
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            assert wait_for(lambda: health(port) == 503, timeout=5, what="503 at the cap")
        finally:
            for sock in idle:
                sock.close()
        assert wait_for(lambda: health(port) == 200, timeout=5, what="200 once they closed")
