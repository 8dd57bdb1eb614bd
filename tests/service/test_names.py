"""Server names over HTTP: generated names never collide, and a name is one name in any case."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from citrus_deploy.standin.pg import free_port
from citrus_deploy.store.migrate import migrate_all as migrate
from tests.conftest import AN_EARLIER_RELEASE, insert_server
from tests.paths import REPO
from tests.service.conftest import AUTH, rows, service_env

DEPLOY = "/admin/servers/deploy-with-agent"
GENERATED = re.compile(r"server-(\d{13})(?:-([2-9]|[1-9]\d+))?")


def _clean_environ() -> dict[str, str]:
    """This machine's environment without the settings the test gives the service itself."""
    own = {"GITHUB_TOKEN", "ENGINE_WS_URL", "DIGITALOCEAN_TOKEN", "DO_API_TOKEN"}
    return {k: v for k, v in os.environ.items() if k not in own}


@pytest.fixture
def web(service_db: str, tmp_path: Path) -> Iterator[str]:
    """`citrus-deploy service web`: real uvicorn and the real pool, on the loopback."""
    port = free_port()
    env = service_env(
        service_db, tmp_path / "state", CITRUS_HOST="127.0.0.1", CITRUS_PORT=str(port)
    )
    log = tmp_path / "web.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citrus_deploy", "service", "web"],
            cwd=REPO,
            env={**_clean_environ(), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


async def _post_concurrently(base: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, limits=limits) as client:
        start = asyncio.Event()

        async def post() -> httpx.Response:
            await start.wait()  # all at once, not as fast as they happen to be created
            return await client.post(DEPLOY, timeout=60)

        posts = [asyncio.create_task(post()) for _ in range(count)]
        start.set()
        return await asyncio.wait_for(asyncio.gather(*posts), timeout=90)


def test_concurrent_posts_without_a_name_each_get_their_own_server(
    web: str, service_db: str
) -> None:
    answers = asyncio.run(_post_concurrently(web, 100))

    assert [a.status_code for a in answers] == [202] * 100, [
        a.json() for a in answers if a.status_code != 202
    ]
    names = [a.json()["server"]["name"] for a in answers]
    assert len(set(names)) == 100
    for answer, name in zip(answers, names, strict=True):
        assert answer.headers["location"] == f"/admin/servers/{name}"
        assert GENERATED.fullmatch(name), name
    # One queued `up` and one job per answer, the agent named after the same millis and suffix.
    queued = rows(service_db, "SELECT server_name, config FROM deployments")
    assert sorted(n for n, _ in queued) == sorted(names)
    for name, config in queued:
        assert config == {"serverName": name, "agentName": "agent-" + name.removeprefix("server-")}
    assert rows(service_db, "SELECT count(DISTINCT queueing_lock) FROM procrastinate_jobs") == [
        (100,)
    ]


def test_a_taken_generated_name_gets_the_next_suffix(
    client: TestClient, service_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("citrus_deploy.store.deployments.time.time", lambda: 1_700_000_000.123)
    # Taken in other ways: a servers row in another case, and an earlier deployment (finished,
    # no row: its stack may still exist, and a generated name never adopts another's stack).
    insert_server(service_db, "SERVER-1700000000123-2")
    with psycopg.connect(service_db) as conn:
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state) "
            "VALUES ('server-1700000000123-3', 'up', 'failed')"
        )

    answers = [client.post(DEPLOY, headers=AUTH) for _ in range(3)]

    assert [a.status_code for a in answers] == [202] * 3
    names = [a.json()["server"]["name"] for a in answers]
    assert names == ["server-1700000000123", "server-1700000000123-4", "server-1700000000123-5"]
    assert [a.headers["location"] for a in answers] == [f"/admin/servers/{n}" for n in names]
    configs = rows(service_db, "SELECT config FROM deployments WHERE state = 'queued' ORDER BY id")
    assert [c["agentName"] for (c,) in configs] == [
        "agent-1700000000123",
        "agent-1700000000123-4",
        "agent-1700000000123-5",
    ]


# -- one name in any case ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["web-up", "Web-Up"])
def test_a_case_variant_of_a_queued_name_is_409_in_progress(
    client: TestClient, service_db: str, variant: str
) -> None:
    first = client.post(DEPLOY, json={"name": "WEB-UP"}, headers=AUTH)
    second = client.post(DEPLOY, json={"name": variant}, headers=AUTH)

    assert first.status_code == 202
    assert second.status_code == 409
    answer = second.json()
    assert answer["error"] == "deployment_in_progress"
    assert "'WEB-UP'" in answer["message"]
    assert second.headers["location"] == "/admin/servers/WEB-UP"
    assert rows(service_db, "SELECT server_name FROM deployments") == [("WEB-UP",)]
    assert rows(service_db, "SELECT queueing_lock FROM procrastinate_jobs") == [("WEB-UP",)]


@pytest.mark.parametrize("variant", ["web-up", "Web-Up", "WEB-UP"])
def test_a_case_variant_of_an_existing_server_is_409_name_in_use(
    client: TestClient, service_db: str, variant: str
) -> None:
    insert_server(service_db, "WEB-UP")

    response = client.post(DEPLOY, json={"name": variant}, headers=AUTH)

    assert response.status_code == 409
    answer = response.json()
    assert answer["error"] == "name_in_use"
    assert "'WEB-UP'" in answer["message"]
    assert response.headers["location"] == "/admin/servers/WEB-UP"
    assert rows(service_db, "SELECT count(*) FROM deployments") == [(0,)]


def test_the_database_refuses_a_second_active_deployment_in_another_case(service_db: str) -> None:
    """Whoever writes the row (HTTP today, GitOps tomorrow), the index holds the rule."""
    with psycopg.connect(service_db) as conn:
        conn.execute("INSERT INTO deployments (server_name, kind) VALUES ('WEB-UP', 'up')")
    with psycopg.connect(service_db) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO deployments (server_name, kind) VALUES ('web-up', 'destroy')")


# The previous release's generator of names (before it took the region and size).
PREVIOUS_GENERATED_UP = """
CREATE OR REPLACE FUNCTION deployments_insert_generated_up(
    server_base text, agent_base text, tries integer
) RETURNS SETOF deployments LANGUAGE plpgsql AS $$
DECLARE
    candidate text;
    inserted deployments;
BEGIN
    FOR n IN 1..tries LOOP
        candidate := server_base || CASE WHEN n = 1 THEN '' ELSE '-' || n END;
        INSERT INTO deployments (server_name, kind, config)
        SELECT candidate, 'up', jsonb_build_object(
            'serverName', candidate,
            'agentName', agent_base || CASE WHEN n = 1 THEN '' ELSE '-' || n END)
        WHERE NOT EXISTS (SELECT FROM servers WHERE lower(name) = lower(candidate))
          AND NOT EXISTS (SELECT FROM deployments WHERE server_name = candidate)
        ON CONFLICT (lower(server_name)) WHERE state IN ('queued', 'running') DO NOTHING
        RETURNING * INTO inserted;
        IF FOUND THEN
            RETURN NEXT inserted;
            RETURN;
        END IF;
    END LOOP;
END
$$"""


def test_a_database_of_the_previous_release_serves_both_releases_once_migrated(
    service_db: str,
) -> None:
    with psycopg.connect(service_db) as conn:
        # A database made by this release takes the previous release's call too.
        fresh = conn.execute(
            "SELECT config FROM deployments_insert_generated_up('fresh-1', 'agent-f', 1)"
        ).fetchall()
        assert fresh == [({"serverName": "fresh-1", "agentName": "agent-f"},)]
        conn.execute(AN_EARLIER_RELEASE)
        conn.execute("DROP FUNCTION deployments_insert_generated_up(text, text, integer, jsonb)")
        conn.execute(PREVIOUS_GENERATED_UP)
    migrate(service_db)
    migrate(service_db)  # and again: idempotent

    with psycopg.connect(service_db) as conn:
        old = conn.execute(
            "SELECT config FROM deployments_insert_generated_up('server-1', 'agent-1', 3)"
        ).fetchall()
        new = conn.execute(
            "SELECT config FROM deployments_insert_generated_up('server-1', 'agent-1', 3, %s)",
            (Jsonb({"region": "nyc3", "serverName": "not-this"}),),
        ).fetchall()
    assert old == [({"serverName": "server-1", "agentName": "agent-1"},)]
    # The names are the generator's, whatever `chosen` says.
    assert new == [({"serverName": "server-1-2", "agentName": "agent-1-2", "region": "nyc3"},)]
