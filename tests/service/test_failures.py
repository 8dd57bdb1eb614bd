"""The limit on wrong admin tokens (web/failures.py), shared by the console's sign-in and every
bearer-token route (issue 19, 2 and 3). Through real web processes (`citrus-deploy service web`,
uvicorn as cmd_web configures it), because who the client is depends on uvicorn's proxy headers:
it is the connection's peer unless CITRUS_FORWARDED_ALLOW_IPS names the proxy. Each test failed
before its fix: a rotated X-Forwarded-For escaped the sign-in limit, the API had no limit at all,
and behind a proxy that passes no address anyone's ten wrong tries locked every browser out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from citrus_deploy.settings import SettingsError, load_settings
from citrus_deploy.web import failures
from citrus_deploy.web.console import sessions as console_sessions
from tests.paths import REPO
from tests.service.conftest import AUTH, TOKEN, Web, service_env

WRONG = {"Authorization": "Bearer wrong-token-0123456789abcdef"}
BEARER_ROUTES = ["/admin/servers", "/metrics"]


def sign_in(web: Web, token: str, headers: dict[str, str] | None = None, **cookies: str) -> Any:
    with httpx.Client(base_url=web.url, cookies=cookies, timeout=10) as http:
        return http.post(
            "/console/sign-in",
            data={"token": token},
            headers={"Origin": web.url, **(headers or {})},
        )


def forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


def get(web: Web, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{web.url}{path}", headers=headers, timeout=10)


# -- who the client is ----------------------------------------------------------------------


def test_a_rotated_x_forwarded_for_does_not_escape_the_limit(
    start_web: Callable[..., Web],
) -> None:
    web = start_web()  # no CITRUS_FORWARDED_ALLOW_IPS: the header is believed from no one
    answers = [
        sign_in(web, f"guess-{n}", forwarded(f"203.0.113.{n}")).status_code
        for n in range(failures.MAX_FAILURES)
    ]
    assert answers == [401] * failures.MAX_FAILURES
    blocked = sign_in(web, TOKEN, forwarded("203.0.113.200"))
    assert blocked.status_code == 429
    assert "set-cookie" not in blocked.headers
    # The API is the same client, with the same limit (one limit, not one per door).
    for path in BEARER_ROUTES:
        refused = get(web, path, {**AUTH, **forwarded("198.51.100.9")})
        assert refused.status_code == 429, path
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"] == "too_many_failures"


@pytest.mark.parametrize("path", BEARER_ROUTES)
def test_wrong_bearer_tokens_are_limited_per_client_without_checking_the_token(
    start_web: Callable[..., Web], path: str
) -> None:
    web = start_web(CITRUS_FORWARDED_ALLOW_IPS="127.0.0.1")  # a proxy on this machine
    guesser, other = forwarded("203.0.113.7"), forwarded("203.0.113.8")
    answers = [get(web, path, {**WRONG, **guesser}).status_code for _ in range(50)]
    assert answers == [401] * failures.MAX_FAILURES + [429] * (50 - failures.MAX_FAILURES)
    # The right token from that client is not even looked at.
    right = get(web, path, {**AUTH, **guesser})
    assert right.status_code == 429
    assert 0 < int(right.headers["retry-after"]) <= failures.FAILURE_WINDOW
    assert right.json() == {
        "success": False,
        "error": "too_many_failures",
        "message": right.json()["message"],
        "fields": [],
    }
    assert TOKEN not in right.text
    # Another client is not locked out, and its own first wrong token is a 401.
    assert get(web, path, {**AUTH, **other}).status_code == 200
    assert get(web, path, {**WRONG, **other}).status_code == 401
    # The console's sign-in counts the guesser's failures too; the other client signs in.
    assert sign_in(web, TOKEN, guesser).status_code == 429
    assert sign_in(web, TOKEN, other).status_code == 303


def test_a_client_cannot_pose_as_another_in_front_of_the_proxys_address(
    start_web: Callable[..., Web],
) -> None:
    web = start_web(CITRUS_FORWARDED_ALLOW_IPS="127.0.0.1")
    # nginx's $proxy_add_x_forwarded_for appends the peer to what the client sent: the client
    # is the last address the trusted proxy did not add.
    for n in range(failures.MAX_FAILURES):
        sent = forwarded(f"192.0.2.{n}, 203.0.113.7")
        assert get(web, "/admin/servers", {**WRONG, **sent}).status_code == 401
    assert get(web, "/admin/servers", {**AUTH, **forwarded("203.0.113.7")}).status_code == 429
    assert get(web, "/admin/servers", {**AUTH, **forwarded("192.0.2.1")}).status_code == 200


def test_behind_a_proxy_that_passes_no_address_a_known_browser_still_signs_in(
    start_web: Callable[..., Web],
) -> None:
    """Every client is 127.0.0.1 to the service (nginx `proxy_pass` without X-Forwarded-For):
    a browser that signed in before is a client of its own (its device cookie), so the
    guesses of anyone else do not lock it out."""
    web = start_web()
    with httpx.Client(base_url=web.url, timeout=10, follow_redirects=True) as browser:
        first = browser.post("/console/sign-in", data={"token": TOKEN}, headers={"Origin": web.url})
        assert first.status_code == 200  # followed to the fleet, which marks the browser
        device = browser.cookies[console_sessions.DEVICE_COOKIE]
    assert [sign_in(web, "guess").status_code for _ in range(failures.MAX_FAILURES)] == [
        401
    ] * failures.MAX_FAILURES
    assert sign_in(web, TOKEN).status_code == 429  # an unknown browser at that address
    # The known browser: its own wrong token is a 401 (not the others' 429), the right one works.
    assert sign_in(web, "typo", **{console_sessions.DEVICE_COOKIE: device}).status_code == 401
    assert sign_in(web, TOKEN, **{console_sessions.DEVICE_COOKIE: device}).status_code == 303
    # A device cookie that is not ours is no device.
    forged = device.split(".")[0] + ".AAAA"
    assert sign_in(web, TOKEN, **{console_sessions.DEVICE_COOKIE: forged}).status_code == 429


def test_a_request_without_a_token_is_not_a_guess(client: TestClient) -> None:
    for _ in range(3 * failures.MAX_FAILURES):
        assert client.get("/admin/servers").status_code == 401
    assert client.get("/admin/servers", headers=AUTH).status_code == 200


def test_memory_is_bounded_and_the_oldest_client_goes_first() -> None:
    limit = failures.FailureLimit(tracked=3)
    for _ in range(failures.MAX_FAILURES):
        limit.add("a", 0.0)
    assert limit.blocked_for("a", 1.0) == failures.FAILURE_WINDOW - 1.0
    limit.add("b", 2.0)
    limit.add("c", 3.0)
    limit.add("a", 4.0)  # a failure of a blocked client keeps it (it is the newest now)
    limit.add("d", 5.0)  # the room is b's, whose last failure is the oldest
    assert limit.blocked_for("a", 6.0) > 0
    assert sorted(limit._seen) == ["a", "c", "d"]
    assert limit.blocked_for("a", failures.FAILURE_WINDOW + 0.5) == 0


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("testclient", "name testclient"),
    ],
)
def test_an_ipv6_client_is_its_64(address: str, client: str) -> None:
    request = Request({"type": "http", "client": (address, 1234), "headers": []})
    assert failures.client_key(request) == client


# -- the setting ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["*", "127.0.0.1,*", "nginx", "10.0.0.1/8"])
def test_forwarded_allow_ips_must_name_proxies(value: str) -> None:
    env = service_env("postgresql://postgres@127.0.0.1:1/none", REPO / "none")
    with pytest.raises(SettingsError, match="CITRUS_FORWARDED_ALLOW_IPS"):
        load_settings(**env, CITRUS_FORWARDED_ALLOW_IPS=value)


def test_the_web_refuses_to_trust_every_proxy_at_start() -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CITRUS_")},
        **service_env("postgresql://postgres@127.0.0.1:1/none", REPO / "none"),
        "CITRUS_FORWARDED_ALLOW_IPS": "*",
    }
    done = subprocess.run(
        [sys.executable, "-m", "citrus_deploy", "service", "web"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "CITRUS_FORWARDED_ALLOW_IPS=* would believe the X-Forwarded-For" in done.stderr
    assert TOKEN not in done.stderr + done.stdout
