"""The operator console over TestClient (and, for a session's reach, two real web processes):
sign-in, session cookie and its key, CSRF, confirmations, escaping."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import psycopg_pool
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from citrus_deploy.settings import Settings
from citrus_deploy.web import console, failures
from citrus_deploy.web.app import create_app
from citrus_deploy.web.console import live as console_live
from citrus_deploy.web.console import render as console_render
from citrus_deploy.web.console import sessions as console_sessions
from citrus_deploy.web.console import sign_in as console_sign_in
from tests.conftest import insert_server
from tests.service.conftest import TOKEN, Web, make_settings, rows

ORIGIN = {"Origin": "http://testserver"}
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture(autouse=True)
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_sign_in, "FAILED_SIGN_IN_DELAY", 0.0)


@pytest.fixture
def signed_in(client: TestClient) -> TestClient:
    answer = client.post(
        "/console/sign-in", data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(client: TestClient, path: str = "/console") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found, path
    return found.group(1)


def database(settings: Settings) -> str:
    return settings.database_url.get_secret_value()


def queued(settings: Settings) -> list[tuple[str, str]]:
    return [
        (name, kind)
        for name, kind in rows(
            database(settings), "SELECT server_name, kind FROM deployments ORDER BY id"
        )
    ]


def jobs(settings: Settings) -> int:
    return int(rows(database(settings), "SELECT count(*) FROM procrastinate_jobs")[0][0])


def add_deployment(
    settings: Settings, name: str, *, state: str = "failed", output: str = "", error: str = ""
) -> int:
    with psycopg.connect(database(settings)) as conn:
        found = conn.execute(
            "INSERT INTO deployments (server_name, kind, state, output, error, finished_at) "
            "VALUES (%s, 'up', %s, %s, %s, now()) RETURNING id",
            (name, state, output, error or None),
        ).fetchone()
    assert found is not None
    return int(found[0])


# -- signed out -----------------------------------------------------------------------------

SIGNED_OUT = [
    ("GET", "/console"),
    ("GET", "/console/"),
    ("GET", "/console?status=failed"),
    ("GET", "/console/events"),
    ("GET", "/console/servers/web-1"),
    ("GET", "/console/servers/not%20a%20name"),
    ("GET", "/console/deployments/1/events"),
    ("GET", "/console/deployments/not-a-number/events"),
    ("GET", "/console/static/console.js"),
    ("GET", "/console/no-such-page"),
    ("GET", "/console/gitops"),
    ("POST", "/console/servers"),
    ("POST", "/console/servers/web-1/retry"),
    ("POST", "/console/servers/web-1/destroy"),
    ("POST", "/console/sign-out"),
    ("DELETE", "/console/servers/web-1"),
]


def test_signed_out_every_console_url_redirects_to_sign_in(
    client: TestClient, settings: Settings
) -> None:
    insert_server(database(settings), "web-1", "active")
    for method, path in SIGNED_OUT:
        answer = client.request(
            method, path, data={"csrf": "x", "confirm": "web-1"}, follow_redirects=False
        )
        assert answer.status_code == 303, (method, path, answer.text)
        assert answer.headers["location"].startswith("/console/sign-in"), (method, path)
        assert "web-1" not in answer.text
    assert queued(settings) == []
    # Every route of the console is in the list above (or public).
    paths = {route.path for route in console.router(settings).routes if isinstance(route, APIRoute)}
    tried = {re.sub(r"\?.*", "", p) for _, p in SIGNED_OUT}
    covered = {
        "/console": "/console",
        "/console/events": "/console/events",
        "/console/servers": "/console/servers",
        "/console/servers/{name}": "/console/servers/web-1",
        "/console/servers/{name}/retry": "/console/servers/web-1/retry",
        "/console/servers/{name}/destroy": "/console/servers/web-1/destroy",
        "/console/deployments/{deployment_id}/events": "/console/deployments/1/events",
        "/console/sign-out": "/console/sign-out",
        "/console/{rest:path}": "/console/no-such-page",
        "/console/static/{name}": "/console/static/console.js",
        "/console/gitops": "/console/gitops",
        "/console/sign-in": None,  # public
    }
    assert paths == set(covered)
    assert {p for p in covered.values() if p} <= tried


def test_signed_out_a_deep_link_comes_back_after_sign_in(client: TestClient) -> None:
    answer = client.get("/console/servers/web-1", follow_redirects=False)
    assert answer.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fservers%2Fweb-1"
    page = client.get(answer.headers["location"])
    assert 'name="next" value="/console/servers/web-1"' in page.text
    signed = client.post(
        "/console/sign-in",
        data={"token": TOKEN, "next": "/console/servers/web-1"},
        follow_redirects=False,
    )
    assert signed.headers["location"] == "/console/servers/web-1"
    elsewhere = client.post(
        "/console/sign-in", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False
    )
    assert elsewhere.headers["location"] == "/console"


def test_the_sign_in_page_and_its_styles_are_all_a_signed_out_client_gets(
    client: TestClient,
) -> None:
    page = client.get("/console/sign-in")
    assert page.status_code == 200
    assert 'type="password"' in page.text
    assert "console.js" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    css = client.get("/console/static/console.css")
    assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
    assert client.get("/console/static/../app.py", follow_redirects=False).status_code in (
        303,
        404,
    )
    # The console is not part of the API's schema.
    assert not [p for p in client.get("/openapi.json").json()["paths"] if "console" in p]


# -- signing in -------------------------------------------------------------------------------


def test_a_wrong_token_is_refused_without_a_cookie(client: TestClient) -> None:
    for token in ("", "wrong", TOKEN + "x", TOKEN[:-1]):
        answer = client.post(
            "/console/sign-in", data={"token": token}, headers=ORIGIN, follow_redirects=False
        )
        assert answer.status_code == 401
        assert "That is not the admin token." in answer.text
        assert "set-cookie" not in answer.headers
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_the_right_token_gives_a_signed_http_only_cookie(client: TestClient) -> None:
    answer = client.post(
        "/console/sign-in", data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console")
    cookie = answer.headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert flags["httponly"] == "HttpOnly"
    assert flags["samesite"].lower() == "samesite=lax"
    assert flags["path"] == "Path=/console"
    assert flags["max-age"] == "Max-Age=28800"
    assert "secure" not in flags  # http here; CITRUS_COOKIE_SECURE decides (next test)
    assert TOKEN not in value
    page = client.get("/console")
    assert page.status_code == 200
    assert "Sign out" in page.text
    # A cookie that was not signed by us is no session.
    forged = value.split(".")[0] + ".AAAA"
    client.cookies.clear()
    for cookie in (forged, value + "x", value.replace(".", "")):
        answer = client.get(
            "/console",
            headers={"Cookie": f"{console_sessions.COOKIE}={cookie}"},
            follow_redirects=False,
        )
        assert answer.status_code == 303


def test_the_cookie_is_secure_when_configured(service_db: str, tmp_path: Path) -> None:
    settings = make_settings(service_db, tmp_path, CITRUS_COOKIE_SECURE="true")
    with TestClient(create_app(settings)) as client:
        answer = client.post("/console/sign-in", data={"token": TOKEN}, follow_redirects=False)
    assert "; secure" in answer.headers["set-cookie"].lower()


def test_sessions_expire_and_are_bound_to_the_admin_token() -> None:
    secret = b"s" * 32  # console_secret's
    sessions = console_sessions.Sessions(console_sessions.signing_key(TOKEN, secret), lifetime=60)
    cookie, session = sessions.issue(now=1000)
    assert sessions.read(cookie, now=1059) == session
    assert sessions.read(cookie, now=1060) is None
    other = console_sessions.Sessions(
        console_sessions.signing_key(TOKEN + "2", secret), lifetime=60
    )
    assert other.read(cookie, now=1001) is None
    assert sessions.read(cookie + "x", now=1001) is None
    assert sessions.read("not.a-cookie", now=1001) is None


def test_a_cookie_does_not_let_the_token_be_guessed_offline(
    client: TestClient, settings: Settings
) -> None:
    """The cookies' key is not a function of the token alone (it was an HMAC of it: one cookie
    let anyone test ~1.5 M guesses a second): it needs the random secret in PostgreSQL too."""
    cookie, _ = sign_in(client)
    payload, signature = cookie.split(".")

    def signs(key: bytes) -> bool:
        mac = hmac.new(key, payload.encode(), hashlib.sha256).digest()
        return console_sessions._b64(mac) == signature

    # What the token alone gave: the old key, and the new key under a guessed secret.
    assert not signs(hmac.new(TOKEN.encode(), b"citrus console session v1", "sha256").digest())
    guessed = console_sessions.Sessions(console_sessions.signing_key(TOKEN, bytes(32)), 60)
    assert guessed.read(cookie) is None
    # With the database's secret (and the token) it is the cookie's key: 32 random bytes.
    [(secret,)] = rows(database(settings), "SELECT secret FROM console_secret")
    assert len(secret) == 32
    assert secret != bytes(32)
    known = console_sessions.Sessions(console_sessions.signing_key(TOKEN, bytes(secret)), 60)
    assert known.read(cookie) is not None


def test_a_new_admin_token_or_secret_signs_everyone_out(
    client: TestClient, settings: Settings, service_db: str, tmp_path: Path
) -> None:
    cookie, _ = sign_in(client)
    assert client.get("/console", follow_redirects=False).status_code == 200
    renewed = make_settings(service_db, tmp_path, ADMIN_TOKEN=TOKEN + "-new")
    with TestClient(create_app(renewed)) as other:
        answer = other.get("/console", headers=as_cookie(cookie), follow_redirects=False)
        assert answer.status_code == 303
    with psycopg.connect(service_db) as conn:
        conn.execute("DELETE FROM console_secret")
    with TestClient(create_app(settings)) as restarted:
        answer = restarted.get("/console", headers=as_cookie(cookie), follow_redirects=False)
        assert answer.status_code == 303
    # The process that read the old secret keeps it until it restarts (read once, cached).
    assert client.get("/console", follow_redirects=False).status_code == 200


def test_web_processes_starting_together_share_one_secret(settings: Settings) -> None:
    async def load() -> list[bytes]:
        pool = psycopg_pool.AsyncConnectionPool(database(settings), min_size=8, open=False)
        async with pool:
            return list(
                await asyncio.gather(
                    *(console_sessions.load_signing_key(pool, TOKEN) for _ in range(8))
                )
            )

    keys = asyncio.run(load())
    assert len(set(keys)) == 1
    assert rows(database(settings), "SELECT count(*) FROM console_secret") == [(1,)]


def test_a_session_holds_across_two_web_processes(
    start_web: Callable[..., Web], settings: Settings
) -> None:
    first, second = start_web(), start_web()
    with httpx.Client(base_url=first.url, timeout=10) as http:
        signed = http.post("/console/sign-in", data={"token": TOKEN}, headers={"Origin": first.url})
        assert signed.status_code == 303
        cookie = http.cookies[console_sessions.COOKIE]
    with httpx.Client(
        base_url=second.url, cookies={console_sessions.COOKIE: cookie}, timeout=10
    ) as http:
        page = http.get("/console")
        assert (page.status_code, "Sign out" in page.text) == (200, True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        origin = {"Origin": second.url}
        deployed = http.post(
            "/console/servers", data={"csrf": csrf.group(1), "name": "web-1"}, headers=origin
        )
        assert (deployed.status_code, deployed.headers["location"]) == (
            303,
            "/console/servers/web-1",
        )
        signed_out = http.post("/console/sign-out", data={"csrf": csrf.group(1)}, headers=origin)
        assert signed_out.status_code == 303
    assert queued(settings) == [("web-1", "up")]
    refused = httpx.get(f"{first.url}/console", cookies={console_sessions.COOKIE: cookie})
    assert (refused.status_code, refused.headers["location"]) == (303, "/console/sign-in")


def test_failed_sign_ins_are_limited(client: TestClient) -> None:
    for _ in range(failures.MAX_FAILURES):
        answer = client.post("/console/sign-in", data={"token": "guess"}, headers=ORIGIN)
        assert answer.status_code == 401
    blocked = client.post(
        "/console/sign-in", data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False
    )
    assert blocked.status_code == 429
    assert "Too many failed sign-ins" in blocked.text
    assert int(blocked.headers["retry-after"]) > 0
    assert "set-cookie" not in blocked.headers


def test_sign_in_from_another_site_is_refused(client: TestClient) -> None:
    answer = client.post(
        "/console/sign-in",
        data={"token": TOKEN},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_sign_out_clears_the_cookie(signed_in: TestClient) -> None:
    token = csrf_of(signed_in)
    refused = signed_in.post("/console/sign-out", headers=ORIGIN, follow_redirects=False)
    assert refused.status_code == 403
    answer = signed_in.post(
        "/console/sign-out", data={"csrf": token}, headers=ORIGIN, follow_redirects=False
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/sign-in")
    assert "max-age=0" in answer.headers["set-cookie"].lower()
    assert signed_in.get("/console", follow_redirects=False).status_code == 303


def sign_in(client: TestClient) -> tuple[str, str]:
    """A new session's cookie and CSRF token; the client holds the cookie."""
    answer = client.post(
        "/console/sign-in", data={"token": TOKEN}, headers=ORIGIN, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return client.cookies[console_sessions.COOKIE], csrf_of(client)


def as_cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{console_sessions.COOKIE}={value}"}


def test_a_signed_out_cookie_is_refused_by_every_web_process(
    client: TestClient, settings: Settings
) -> None:
    insert_server(database(settings), "web-1", "failed")
    copied, copied_csrf = sign_in(client)
    client.cookies.clear()
    other, other_csrf = sign_in(client)
    client.cookies.clear()
    answer = client.post(
        "/console/sign-out",
        data={"csrf": copied_csrf},
        headers={**ORIGIN, **as_cookie(copied)},
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/sign-in")
    # Replayed on another web process (a second app over the same database).
    with TestClient(create_app(settings), raise_server_exceptions=False) as fresh:
        for method, path in SIGNED_OUT:
            answer = fresh.request(
                method,
                path,
                data={"csrf": copied_csrf, "confirm": "web-1", "name": "web-2"},
                headers={**ORIGIN, **as_cookie(copied)},
                follow_redirects=False,
            )
            assert answer.status_code == 303, (method, path, answer.text)
            assert answer.headers["location"].startswith("/console/sign-in"), (method, path)
        # The sign-in page shows its form (no redirect to a page that would send it back).
        form = fresh.get("/console/sign-in", headers=as_cookie(copied), follow_redirects=False)
        assert (form.status_code, 'type="password"' in form.text) == (200, True)
        assert queued(settings) == []
        # The session signed in separately is still one.
        page = fresh.get("/console", headers=as_cookie(other), follow_redirects=False)
        assert (page.status_code, "Sign out" in page.text) == (200, True)
        deployed = fresh.post(
            "/console/servers",
            data={"csrf": other_csrf, "name": "web-2"},
            headers={**ORIGIN, **as_cookie(other)},
            follow_redirects=False,
        )
        assert deployed.status_code == 303
    assert queued(settings) == [("web-2", "up")]


def test_sign_outs_are_kept_until_their_sessions_expire(
    client: TestClient, settings: Settings
) -> None:
    with psycopg.connect(database(settings)) as conn:
        conn.execute(
            "INSERT INTO console_signouts VALUES ('old', now() - interval '1 s'), "
            "('live', now() + interval '1 h')"
        )
    sign_in(client)
    answer = client.post(
        "/console/sign-out", data={"csrf": csrf_of(client)}, headers=ORIGIN, follow_redirects=False
    )
    assert answer.status_code == 303
    # The new row lasts as long as the session (8 h); the expired one was deleted.
    found = dict(
        rows(
            database(settings),
            "SELECT session_id, expires_at > now() + interval '7 h' FROM console_signouts",
        )
    )
    assert found.pop("old", None) is None
    assert found.pop("live") is False
    assert list(found.values()) == [True]


@pytest.mark.parametrize("stream", ["fleet", "output"])
def test_an_open_stream_ends_soon_after_its_session_signs_out(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    monkeypatch.setattr(console_live, "STREAM_SECONDS", 30.0)  # a stream that never ends fails
    insert_server(database(settings), "web-1", "active")
    with psycopg.connect(database(settings)) as conn:
        found = conn.execute(
            "INSERT INTO deployments (server_name, kind, state, output, started_at) "
            "VALUES ('web-1', 'up', 'running', 'one\n', now()) RETURNING id"
        ).fetchone()
    assert found is not None
    path = "/console/events" if stream == "fleet" else f"/console/deployments/{found[0]}/events"
    _, token = sign_in(client)
    with client.stream("GET", path) as answer:
        chunks = answer.iter_text()
        seen = ""
        while f"event: {stream}" not in seen:
            seen += next(chunks)
        signed_out = client.post(
            "/console/sign-out", data={"csrf": token}, headers=ORIGIN, follow_redirects=False
        )
        assert signed_out.status_code == 303
        started = time.monotonic()
        rest = "".join(chunks)
    assert time.monotonic() - started < 5, rest
    assert "event:" not in rest


# -- CSRF and the actions -----------------------------------------------------------------------


def test_actions_without_the_csrf_token_or_from_another_site_change_nothing(
    signed_in: TestClient, settings: Settings
) -> None:
    insert_server(database(settings), "web-2", "failed")
    token = csrf_of(signed_in)
    attempts: list[tuple[str, dict[str, str], dict[str, str], str]] = []
    for path, form in (
        ("/console/servers", {"name": "web-1"}),
        ("/console/servers/web-2/retry", {}),
        ("/console/servers/web-2/destroy", {"confirm": "web-2"}),
    ):
        attempts += [
            (path, form, ORIGIN, "CSRF token is missing or wrong"),
            (path, {**form, "csrf": "wrong"}, ORIGIN, "CSRF token is missing or wrong"),
            (path, {**form, "csrf": token + "x"}, ORIGIN, "CSRF token is missing or wrong"),
            (
                path,
                {**form, "csrf": token},
                {"Origin": "https://evil.example"},
                "the form was sent from another site",
            ),
            (
                path,
                {**form, "csrf": token},
                {"Referer": "http://evil.example/console"},
                "the form was sent from another site",
            ),
        ]
    for path, form, headers, message in attempts:
        answer = signed_in.post(path, data=form, headers=headers, follow_redirects=False)
        assert answer.status_code == 403, (path, form, headers, answer.text)
        assert message in answer.text
    assert queued(settings) == []
    assert jobs(settings) == 0


def test_deploy_from_the_page_queues_an_up(signed_in: TestClient, settings: Settings) -> None:
    token = csrf_of(signed_in)
    answer = signed_in.post(
        "/console/servers",
        data={"csrf": token, "name": "web-1"},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/servers/web-1")
    assert queued(settings) == [("web-1", "up")]
    assert jobs(settings) == 1
    page = signed_in.get("/console/servers/web-1")
    assert "Running now: up" in page.text
    assert 'data-stream="/console/deployments/' in page.text
    # The same errors as the JSON API, as messages.
    again = signed_in.post(
        "/console/servers", data={"csrf": token, "name": "web-1"}, headers=ORIGIN
    )
    assert again.status_code == 409
    assert "a deployment for &#39;web-1&#39; is already queued or running" in again.text
    bad = signed_in.post("/console/servers", data={"csrf": token, "name": "web_1"}, headers=ORIGIN)
    assert bad.status_code == 422
    assert 'value="web_1"' in bad.text
    assert queued(settings) == [("web-1", "up")]


def test_destroy_needs_the_name_typed(signed_in: TestClient, settings: Settings) -> None:
    insert_server(database(settings), "web-1", "active")
    token = csrf_of(signed_in, "/console/servers/web-1")
    for typed in ("", "web-2", "WEB-1", "web-1 "):
        answer = signed_in.post(
            "/console/servers/web-1/destroy",
            data={"csrf": token, "confirm": typed},
            headers=ORIGIN,
        )
        assert answer.status_code == 422, typed
        assert "Type the server&#39;s name, web-1, to confirm; nothing was" in answer.text
    assert queued(settings) == []
    answer = signed_in.post(
        "/console/servers/web-1/destroy",
        data={"csrf": token, "confirm": "web-1"},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/console/servers/web-1")
    assert queued(settings) == [("web-1", "destroy")]
    assert "destroying" in signed_in.get("/console/servers/web-1").text
    missing = signed_in.post(
        "/console/servers/web-9/destroy", data={"csrf": token, "confirm": "web-9"}, headers=ORIGIN
    )
    assert missing.status_code == 404
    assert "no server named &#39;web-9&#39;" in missing.text


def test_retry_queues_an_up_of_a_failed_server(signed_in: TestClient, settings: Settings) -> None:
    add_deployment(settings, "web-3", error="droplet quota reached")
    page = signed_in.get("/console/servers/web-3")
    assert "Retry deployment" in page.text
    assert "droplet quota reached" in page.text
    answer = signed_in.post(
        "/console/servers/web-3/retry",
        data={"csrf": csrf_of(signed_in)},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert queued(settings) == [("web-3", "up"), ("web-3", "up")]


def test_retry_keeps_the_region_and_size_asked_for(
    signed_in: TestClient, settings: Settings
) -> None:
    with psycopg.connect(database(settings)) as conn:
        conn.execute(
            "INSERT INTO deployments (server_name, kind, state, config, finished_at) VALUES "
            "('web-3', 'up', 'failed', %s, now())",
            (Jsonb({"serverName": "web-3", "region": "nyc3", "size": "s-2vcpu-4gb"}),),
        )
    answer = signed_in.post(
        "/console/servers/web-3/retry",
        data={"csrf": csrf_of(signed_in)},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert answer.status_code == 303
    assert rows(database(settings), "SELECT config FROM deployments ORDER BY id")[-1] == (
        {"serverName": "web-3", "region": "nyc3", "size": "s-2vcpu-4gb"},
    )


# -- what the pages show ------------------------------------------------------------------------


def test_the_fleet_filters_by_status(signed_in: TestClient, settings: Settings) -> None:
    insert_server(database(settings), "alpha", "active")
    insert_server(database(settings), "bravo", "failed")
    everything = signed_in.get("/console").text
    for shown in ("alpha", "bravo", "sfo3", "s-1vcpu-512mb-10gb"):
        assert shown in everything
    failed = signed_in.get("/console?status=failed").text
    assert "bravo" in failed
    assert "alpha" not in failed
    assert 'data-stream="/console/events?status=failed"' in failed
    assert "No server is destroying." in signed_in.get("/console?status=destroying").text
    unknown = signed_in.get("/console?status=bogus")
    assert unknown.status_code == 404


def test_hostile_output_and_errors_are_escaped(signed_in: TestClient, settings: Settings) -> None:
    agent = insert_server(database(settings), "web-1", "failed")
    add_deployment(settings, "web-1", output=f"step 1\n{HOSTILE}\n", error=f"boom {HOSTILE}")
    with psycopg.connect(database(settings)) as conn:
        conn.execute(
            "INSERT INTO boot_steps (agent_id, boot_id, seq, step, label, event, exit_code, "
            "tail, reported_at, signed_at, signature) VALUES (%s, 'b', 1, 'fetch', %s, "
            "'failure', 1, %s, now(), now(), 'sig')",
            (agent, f"fetch {HOSTILE}", f"fatal: {HOSTILE}"),
        )
    for path in ("/console", "/console/servers/web-1"):
        page = signed_in.get(path).text
        assert HOSTILE not in page, path
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page, path
    # A server name that is not a name is never looked up, nor echoed unescaped.
    odd = signed_in.get("/console/servers/%3Cscript%3E")
    assert odd.status_code == 404
    assert "<script>" not in odd.text


def test_the_boot_failure_is_explained_by_its_step(
    signed_in: TestClient, settings: Settings
) -> None:
    agent = insert_server(database(settings), "web-1", "failed")
    with psycopg.connect(database(settings)) as conn:
        conn.execute(
            "INSERT INTO boot_steps (agent_id, boot_id, seq, step, label, event, exit_code, "
            "tail, reported_at, signed_at, signature) VALUES (%s, 'b', 1, 'fetch', 'fetch', "
            "'failure', 128, %s, now(), now(), 'sig')",
            (agent, "fatal: unable to access: The requested URL returned error: 403"),
        )
    page = signed_in.get("/console/servers/web-1").text
    assert "Boot failed at 'fetch agent': HTTP 403 from the repository" in page
    assert "Retry deployment" not in page  # its row exists: an up would be refused
    assert "a" * 64 not in page  # the agent key (insert_server's) is never shown


def test_the_output_stream_sends_what_the_page_has_not(
    signed_in: TestClient, settings: Settings
) -> None:
    dep = add_deployment(settings, "web-1", state="succeeded", output=f"one\n{HOSTILE}\n")
    with signed_in.stream("GET", f"/console/deployments/{dep}/events?start=4") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = "".join(answer.iter_text())
    events = [block for block in body.split("\n\n") if block.startswith("event:")]
    assert events[0] == (
        f"event: output\nid: {4 + len(HOSTILE) + 1}\n"
        'data: {"text": "<script>alert(\'x\')</script>\\n"}'
    )
    assert events[1] == 'event: done\ndata: {"state": "succeeded"}'
    # Resumed after a reconnect: from the last event's id.
    headers = {"Last-Event-ID": str(4 + len(HOSTILE) + 1)}
    with signed_in.stream("GET", f"/console/deployments/{dep}/events", headers=headers) as again:
        assert "event: output" not in "".join(again.iter_text())
    gone = signed_in.get("/console/deployments/999/events")
    assert "event: gone" in gone.text


def test_sse_lines_cannot_be_split_by_the_data() -> None:
    event = console_live.sse("fleet", "a\r\nb\rc\nevent: evil").decode()
    assert event == "event: fleet\ndata: a\ndata: b\ndata: c\ndata: event: evil\n\n"


def test_ages_read_like_the_scripts() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    for seconds, text in ((5, "5 s"), (125, "2 min"), (7300, "2 h"), (200_000, "2 d")):
        assert console_render.age(now - timedelta(seconds=seconds), now) == text


def test_a_full_queue_refuses_a_deploy_from_the_page_as_the_api_does(
    service_db: str, tmp_path: Path
) -> None:
    settings = make_settings(service_db, tmp_path / "state", CITRUS_MAX_QUEUED="1")
    with TestClient(create_app(settings)) as client:
        client.post("/console/sign-in", data={"token": TOKEN}, headers=ORIGIN)
        token = csrf_of(client)
        first = client.post(
            "/console/servers", data={"csrf": token, "name": "web-1"}, headers=ORIGIN
        )
        assert first.status_code == 200  # followed to the server page
        full = client.post(
            "/console/servers", data={"csrf": token, "name": "web-2"}, headers=ORIGIN
        )
        assert (full.status_code, full.headers["retry-after"]) == (503, "60")
        assert "1 deployments are queued or running (CITRUS_MAX_QUEUED)" in full.text
    assert queued(settings) == [("web-1", "up")]
