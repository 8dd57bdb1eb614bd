"""POST /boot-reports/{agent_id} through the real app and database: what it records, what it
refuses (with the exact answer, changing nothing), and what GET /admin/servers/{name} and the
stale check make of the steps."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from citrus_deploy.queue import stale
from citrus_deploy.store import boot_reports as store_boot_reports
from citrus_deploy.web.app import create_app
from citrus_deploy.web.boot_reports import MAX_REPORTS_PER_AGENT, MAX_REPORTS_PER_MINUTE, sign
from tests.service.conftest import AUTH, make_settings, rows

KEY = secrets.token_hex(32)
BOOT = str(uuid.uuid4())


@pytest.fixture
def agent(service_db: str) -> str:
    """An agent (offline, as the deploy leaves it) with its server 'web-1'; its id."""
    agent_id = str(uuid.uuid4())
    with psycopg.connect(service_db) as conn:
        conn.execute(
            "INSERT INTO agents (id, key, status, name) VALUES (%s, %s, 'offline', 'agent-web-1')",
            (agent_id, KEY),
        )
        conn.execute(
            "INSERT INTO servers (name, digital_ocean_id, region, size, agent_id) "
            "VALUES ('web-1', '101', 'sfo3', 's-1vcpu-512mb-10gb', %s)",
            (agent_id,),
        )
    return agent_id


def report(seq: int = 1, **fields: Any) -> bytes:
    body = {
        "boot": BOOT,
        "seq": seq,
        "at": int(time.time()),
        "step": "start",
        "label": "start",
        "event": "step",
        "exit": None,
        "tail": "",
        **fields,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def post(
    client: TestClient,
    agent_id: str,
    body: bytes,
    *,
    key: str = KEY,
    timestamp: int | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signed = {
        "Content-Type": "application/json",
        "X-Citrus-Timestamp": ts,
        "X-Citrus-Signature": f"sha256={sign(key, ts, body)}",
    }
    return client.post(
        f"/boot-reports/{agent_id}", content=body, headers=signed if headers is None else headers
    )


def steps(database: str) -> list[tuple[Any, ...]]:
    return rows(database, "SELECT agent_id::text, seq, step, event FROM boot_steps ORDER BY id")


def refusal(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": code, "message": message, "fields": []}


def test_a_signed_report_is_recorded_and_shown(
    client: TestClient, agent: str, service_db: str
) -> None:
    answer = post(client, agent, report())
    failure = post(
        client,
        agent,
        report(
            2,
            step="fetch",
            label="fetch agent https://github.com/x/y.git at main",
            event="failure",
            exit=128,
            tail="fatal: unable to access: The requested URL returned error: 403\n",
        ),
    )

    assert answer.status_code == 201, answer.text
    assert answer.json() == {"success": True, "message": "boot report 1 (start, step) recorded"}
    assert failure.status_code == 201, failure.text
    assert steps(service_db) == [(agent, 1, "start", "step"), (agent, 2, "fetch", "failure")]
    server = client.get("/admin/servers/web-1", headers=AUTH).json()
    shown = [{k: s[k] for k in ("step", "label", "event", "exitCode", "tail")}
             for s in server["bootSteps"]]  # fmt: skip
    assert shown == [
        {"step": "start", "label": "start", "event": "step", "exitCode": None, "tail": None},
        {
            "step": "fetch",
            "label": "fetch agent https://github.com/x/y.git at main",
            "event": "failure",
            "exitCode": 128,
            "tail": "fatal: unable to access: The requested URL returned error: 403\n",
        },
    ]
    assert all(s["at"] and s["receivedAt"] for s in server["bootSteps"])
    assert server["bootStoppedAt"] is None  # the agent has not been failed


def test_a_bad_signature_is_refused_and_changes_nothing(
    client: TestClient, agent: str, service_db: str
) -> None:
    wrong_key = post(client, agent, report(), key=secrets.token_hex(32))
    ts = str(int(time.time()))
    tampered = post(
        client,
        agent,
        report(step="verify"),
        headers={
            "X-Citrus-Timestamp": ts,
            "X-Citrus-Signature": f"sha256={sign(KEY, ts, report())}",
        },
    )
    unsigned = post(client, agent, report(), headers={"Content-Type": "application/json"})

    message = "the signature does not match the agent's key"
    assert (wrong_key.status_code, wrong_key.json()) == (401, refusal("bad_signature", message))
    assert (tampered.status_code, tampered.json()) == (401, refusal("bad_signature", message))
    assert (unsigned.status_code, unsigned.json()) == (
        401,
        refusal(
            "bad_signature",
            "X-Citrus-Timestamp: <unix seconds> and X-Citrus-Signature: sha256=<64 hex> are "
            "required",
        ),
    )
    assert steps(service_db) == []


def test_an_unknown_agent_is_refused(client: TestClient, agent: str, service_db: str) -> None:
    answer = post(client, str(uuid.uuid4()), report())

    assert (answer.status_code, answer.json()) == (
        404,
        refusal("unknown_agent", "no agent with this id"),
    )
    assert steps(service_db) == []


def test_a_replay_is_refused_outside_the_window_and_when_repeated(
    client: TestClient, agent: str, service_db: str
) -> None:
    old = post(client, agent, report(), timestamp=int(time.time()) - 301)
    future = post(client, agent, report(), timestamp=int(time.time()) + 301)
    ts = int(time.time())
    first = post(client, agent, report(), timestamp=ts)
    again = post(client, agent, report(), timestamp=ts)

    stale_answer = refusal(
        "stale_timestamp", "the report was signed more than 300 s from the service's clock"
    )
    assert (old.status_code, old.json()) == (401, stale_answer)
    assert (future.status_code, future.json()) == (401, stale_answer)
    assert first.status_code == 201
    assert (again.status_code, again.json()) == (
        409,
        refusal("duplicate_report", "this report was already recorded"),
    )
    assert steps(service_db) == [(agent, 1, "start", "step")]


def test_an_oversized_body_is_refused_before_it_is_read(
    client: TestClient, agent: str, service_db: str
) -> None:
    answer = post(client, agent, report(tail="x" * 5000, event="failure"))

    # The app's own limit (CITRUS_MAX_BODY_BYTES, 4096 by default) answers first.
    assert (answer.status_code, answer.json()) == (
        413,
        refusal("body_too_large", "the request body is over 4096 bytes"),
    )
    assert steps(service_db) == []


def test_the_reports_own_limit_holds_when_the_app_allows_more(
    service_db: str, tmp_path: Path, agent: str
) -> None:
    settings = make_settings(service_db, tmp_path / "state", CITRUS_MAX_BODY_BYTES="65536")
    with TestClient(create_app(settings)) as client:
        answer = post(client, agent, report(tail="x" * 9000, event="failure"))

    assert (answer.status_code, answer.json()) == (
        413,
        refusal("body_too_large", "a boot report is at most 8192 bytes"),
    )
    assert steps(service_db) == []


def test_a_report_that_breaks_the_schema_is_refused(
    client: TestClient, agent: str, service_db: str
) -> None:
    answer = post(client, agent, report(step="rm -rf /"))

    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_report"
    assert [f["field"] for f in answer.json()["fields"]] == ["step"]
    assert steps(service_db) == []


def raw_report(seq: int = 1, **fields: Any) -> bytes:
    """report(), its JSON as json.dumps writes it (NaN, Infinity, \\u escapes of anything)."""
    body = json.loads(report(seq))
    return json.dumps({**body, **fields}).encode()


DEEP = 1000  # levels of nesting: within the body limits, past any parser's taste


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # These answered 500: PostgreSQL refused the value in the INSERT.
        pytest.param(raw_report(label="start\x00"), "label", id="nul-in-label"),
        pytest.param(raw_report(event="failure", tail="fatal\x00"), "tail", id="nul-in-tail"),
        pytest.param(raw_report(at=10**15), "at", id="at-10e15"),
        pytest.param(raw_report(at=2**63), "at", id="at-2e63"),
        pytest.param(raw_report(at=1e15), "at", id="at-float-10e15"),
        # These were refused already, by the JSON parser: the body, not a field, is named.
        pytest.param(raw_report(at=float("nan")), "at", id="at-nan"),
        pytest.param(raw_report(at=float("inf")), "at", id="at-infinity"),
        pytest.param(
            report(7).replace(b'"seq":7', b'"seq":' + b"9" * 5000), "body", id="seq-5000-digits"
        ),
        pytest.param(raw_report(label="\ud800"), "body", id="lone-surrogate"),
        pytest.param(raw_report(label="\udcff"), "body", id="low-surrogate"),
        pytest.param(
            report(label="\udcff").replace(b"\\udcff", b"\xed\xb3\xbf"),
            "body",
            id="surrogate-as-utf-8",
        ),
        pytest.param(
            report(label="x").replace(b'"x"', b"[" * DEEP + b"]" * DEEP), "body", id="deep-list"
        ),
        pytest.param(
            report().replace(b"}", b',"x":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"),
            "body",
            id="deep-object",
        ),
    ],
)
def test_a_report_the_database_cannot_store_is_refused_as_invalid(
    service_db: str, tmp_path: Path, agent: str, body: bytes, field: str
) -> None:
    roomy = make_settings(service_db, tmp_path / "state", CITRUS_MAX_BODY_BYTES="8192")
    with TestClient(create_app(roomy), raise_server_exceptions=False) as client:
        answer = post(client, agent, body)

    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "invalid_report"
    fields = [f["field"] for f in answer.json()["fields"]]
    assert fields
    assert {f.split(".")[0] for f in fields} == {field}, fields
    assert steps(service_db) == []


# Any character (NUL and lone surrogates too), the awkward ones often.
_ANY_CHARACTER = st.characters(codec=None, categories=None) | st.sampled_from(
    ["\x00", "\ud800", "\udfff", "\x1b", "\n", "\u2028", "\ufeff"]
)
_ANY_TEXT = st.text(_ANY_CHARACTER, max_size=40)
# Any integer, the edges of PostgreSQL's types and of time often.
_ANY_INTEGER = st.integers() | st.sampled_from(
    [-1, 0, 2**31, 2**32, 2**53 + 1, 2**63, 2**64, 10**13, 10**15, 10**30, -(2**63) - 1]
)
_HOSTILE = st.recursive(
    st.none()
    | st.booleans()
    | _ANY_INTEGER
    | st.floats(allow_nan=True, allow_infinity=True)
    | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    """A report of the right shape with hostile values (any text, any integer), up to two of
    its fields replaced by anything JSON carries or left out, perhaps one field more."""
    typed = {
        "boot": st.just(BOOT) | _ANY_TEXT,
        "seq": st.integers(1, 10_000) | _ANY_INTEGER,
        "at": st.integers(0, 2**40) | _ANY_INTEGER | st.floats(),
        "step": st.sampled_from(["start", "fetch", "unit", "other"]),
        "label": _ANY_TEXT,
        "event": st.sampled_from(["step", "success", "failure"]),
        "exit": st.none() | st.integers(0, 255) | _ANY_INTEGER,
        "tail": _ANY_TEXT,
    }
    spoilt = draw(st.sets(st.sampled_from(sorted(typed)), max_size=2))
    body: dict[str, Any] = {}
    for name, strategy in typed.items():
        if name not in spoilt:
            body[name] = draw(strategy)
        elif draw(st.booleans()):
            body[name] = draw(_HOSTILE)
    if draw(st.integers(0, 4)) == 0:
        body[draw(_ANY_TEXT)] = draw(_HOSTILE)
    return body


# The app's threads (psycopg_pool's connection lifetimes) use the random module while
# hypothesis draws; our strategies do not.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_no_report_answers_500(client: TestClient, agent: str, service_db: str) -> None:
    """Fuzzed reports, each signed: recorded, or refused with nothing stored; never a 500."""

    @given(body=reports())
    @hypothesis.settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    def check(body: dict[str, Any]) -> None:
        with psycopg.connect(service_db) as conn:  # the caps would hide what follows them
            conn.execute("DELETE FROM boot_steps")
        answer = post(client, agent, json.dumps(body).encode())
        assert answer.status_code in (201, 409, 413, 422), (answer.status_code, answer.text)
        stored = len(steps(service_db))
        if answer.status_code == 201:
            assert stored == 1
        else:
            assert stored == 0
        if answer.status_code == 422:
            assert answer.json()["error"] == "invalid_report"
            assert answer.json()["fields"]

    assert client.get("/healthz").status_code == 200  # the pool's first connection, before
    check()


def test_a_flood_is_bounded_per_minute(client: TestClient, agent: str, service_db: str) -> None:
    answers = [post(client, agent, report(n)) for n in range(1, MAX_REPORTS_PER_MINUTE + 2)]

    assert [a.status_code for a in answers] == [201] * MAX_REPORTS_PER_MINUTE + [429]
    assert answers[-1].json() == refusal(
        "too_many_reports", "an agent may send at most 20 boot reports a minute"
    )
    assert answers[-1].headers["Retry-After"] == "60"
    assert len(steps(service_db)) == MAX_REPORTS_PER_MINUTE


def test_a_flood_is_bounded_per_agent(client: TestClient, agent: str, service_db: str) -> None:
    with psycopg.connect(service_db) as conn:  # earlier boots' reports, long ago
        conn.execute(
            "INSERT INTO boot_steps (agent_id, boot_id, seq, step, label, event, reported_at, "
            "signed_at, received_at, signature) "
            "SELECT %s, 'old', n, 'start', 'start', 'step', now() - interval '1 day', "
            "now() - interval '1 day', now() - interval '1 day', 'old-' || n "
            "FROM generate_series(1, %s) n",
            (agent, MAX_REPORTS_PER_AGENT),
        )

    answer = post(client, agent, report())

    assert (answer.status_code, answer.json()) == (
        429,
        refusal("too_many_reports", "an agent may send at most 100 boot reports"),
    )
    assert "Retry-After" not in answer.headers
    assert len(steps(service_db)) == MAX_REPORTS_PER_AGENT


def test_concurrent_reports_cannot_pass_the_cap_together(
    client: TestClient, agent: str, service_db: str
) -> None:
    async def flood() -> list[int]:
        async def one(n: int) -> int:
            return await asyncio.to_thread(lambda: post(client, agent, report(n)).status_code)

        return await asyncio.gather(*(one(n) for n in range(1, 31)))

    codes = asyncio.run(flood())

    assert sorted(codes) == [201] * MAX_REPORTS_PER_MINUTE + [429] * 10
    assert len(steps(service_db)) == MAX_REPORTS_PER_MINUTE


# -- the stale check says where the boot stopped ----------------------------------------------


def fail_stale(database: str) -> None:
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE agents SET created_at = now() - interval '11 minutes'")

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await stale.check(conn, 600)

    asyncio.run(run())


def test_the_stale_check_records_the_step_the_boot_stopped_at(
    client: TestClient, agent: str, service_db: str
) -> None:
    post(client, agent, report(1))
    post(client, agent, report(2, step="fetch", label="fetch agent https://x/y.git at main"))
    post(
        client,
        agent,
        report(
            3,
            step="fetch",
            label="fetch agent https://x/y.git at main",
            event="failure",
            exit=128,
            tail="2026-01-01T00:00:00Z citrus-init: step: fetch agent\n"
            "fatal: unable to access 'https://x/y.git/': The requested URL returned error: 403\n"
            "2026-01-01T00:00:03Z citrus-init: FAILURE: step 'fetch agent' failed (exit 128)\n",
        ),
    )

    fail_stale(service_db)
    fail_stale(service_db)  # a second run (or checker) adds nothing

    server = client.get("/admin/servers/web-1", headers=AUTH).json()
    expected = "no agent after 600 s; boot stopped at 'fetch agent': HTTP 403 from the repository"
    assert server["agent"]["status"] == "failed"
    assert server["bootStoppedAt"] == expected
    assert [(s["step"], s["event"]) for s in server["bootSteps"]] == [
        ("start", "step"),
        ("fetch", "step"),
        ("fetch", "failure"),
        ("fetch", "stale"),
    ]
    assert server["bootSteps"][-1]["label"] == expected


def test_without_reports_the_stale_check_says_none_arrived(
    client: TestClient, agent: str, service_db: str
) -> None:
    fail_stale(service_db)

    server = client.get("/admin/servers/web-1", headers=AUTH).json()
    assert server["bootStoppedAt"] == (
        "no agent after 600 s; no boot report arrived (bootReportUrl unset, or the droplet "
        "never reached the service)"
    )


@pytest.mark.parametrize(
    ("last", "said"),
    [
        (
            {"step": "fetch", "label": "fetch agent u at main", "event": "failure",
             "tail": "fatal: could not read Username for 'https://h': terminal prompts disabled"},
            "no agent after 600 s; boot stopped at 'fetch agent': HTTP 401 from the repository "
            "(the token was refused)",
        ),
        (
            {"step": "dependencies", "label": "install agent dependencies", "event": "failure",
             "tail": "npm ERR! code ENOTFOUND\nt citrus-init: FAILURE: step 'x' failed (exit 1)"},
            "no agent after 600 s; boot stopped at 'install agent dependencies': "
            "npm ERR! code ENOTFOUND",
        ),
        (
            {"step": "packages", "label": "install packages", "event": "step", "tail": None},
            "no agent after 600 s; boot stopped at 'install packages' (no outcome reported "
            "after it)",
        ),
        (
            {"step": "verify", "label": "verify x", "event": "success", "tail": None},
            "no agent after 600 s; the boot script succeeded, but the agent never connected to "
            "the hub",
        ),
    ],
)  # fmt: skip
def test_the_verdict_names_the_step_and_the_reason(last: dict[str, Any], said: str) -> None:
    assert store_boot_reports.verdict(600, last) == said


def test_the_scripts_own_reports_are_accepted_by_the_endpoint(
    service_db: str, agent: str, tmp_path: Path
) -> None:
    """The rendered script's report code (bash, sha256sum, curl) against the real route over
    HTTP: its signatures hold; the boot test does the same from a booting machine."""
    from dataclasses import replace

    from tests.boot.standins.reports import ReportService
    from tests.unit.test_render import VALUES, _which, run_report_block

    with ReportService(service_db) as service:
        values = replace(VALUES, agent_id=agent, agent_key=KEY, boot_report_url=service.url)
        _, proc = run_report_block(
            tmp_path,
            values,
            after='STEP="fetch agent x"; report step || true\nreport failure 128 || true\n',
            curl=_which("curl"),
        )

    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "citrus-init.log").exists()  # nothing logged: nothing missed
    assert steps(service_db) == [
        (agent, 1, "start", "step"),
        (agent, 2, "fetch", "step"),
        (agent, 3, "fetch", "failure"),
    ]
