"""The console's GitOps page (web/console/folders.py): each fleet's last apply with its waves
and the servers its last drift check found drifted, over TestClient and real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from citrus_deploy.settings import Settings
from citrus_deploy.web.console import sign_in as console_sign_in
from citrus_deploy.web.console.folders import Step, waves_of
from tests.conftest import insert_server
from tests.service.conftest import TOKEN

ORIGIN = {"Origin": "http://testserver"}
REPO = "limedrop/fleet"
HOSTILE = "<script>alert('x')</script>"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


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


def step(n: int, created: int, finished: int | None, state: str = "succeeded") -> Step:
    at = T0 + timedelta(seconds=created)
    done = None if finished is None else T0 + timedelta(seconds=finished)
    return Step(n, f"web-{n}", "up", state, None, at, done)


def test_waves_are_read_back_by_the_rollouts_rule() -> None:
    # The canary alone, then two queued together once it finished, then the last two.
    steps = [step(1, 0, 10), step(2, 11, 20), step(3, 11, 30), step(4, 31, 40)]
    steps.append(step(5, 31, None, "running"))
    waves = waves_of(steps)
    assert [[s.id for s in w.steps] for w in waves] == [[1], [2, 3], [4, 5]]
    assert [w.state for w in waves] == ["succeeded", "succeeded", "running"]
    # A deployment queued while one of the wave is still running belongs to that wave, even
    # when another of the wave had already finished.
    mixed = waves_of([step(1, 0, 10), step(2, 11, 12), step(3, 11, 30), step(4, 13, 40)])
    assert [[s.id for s in w.steps] for w in mixed] == [[1], [2, 3, 4]]
    assert waves_of([step(1, 0, 5, "failed")])[0].state == "failed"
    assert waves_of([]) == []


def seed(conninfo: str) -> None:
    for name in ("web-1", "web-2", "web-3"):
        insert_server(conninfo, name, "active")
    with psycopg.connect(conninfo) as conn:
        old = conn.execute(
            "INSERT INTO gitops_applies (repository, commit, plan, started_at, finished_at, "
            "outcome) VALUES (%s, %s, '{}', %s, %s, 'succeeded') RETURNING id",
            (REPO, "0" * 40, T0 - timedelta(days=1), T0 - timedelta(days=1)),
        ).fetchone()
        last = conn.execute(
            "INSERT INTO gitops_applies (repository, commit, plan, started_at, finished_at, "
            "outcome) VALUES (%s, %s, '{}', %s, %s, 'failed') RETURNING id",
            (REPO, "c" * 40, T0, T0 + timedelta(minutes=5)),
        ).fetchone()
        assert old
        assert last
        for apply_id, name, created, finished, state, error in (
            (old[0], "web-9", -86400, -86390, "succeeded", None),
            (last[0], "web-1", 0, 60, "succeeded", None),
            (last[0], "web-2", 61, 120, "failed", HOSTILE),
            (last[0], "web-3", 61, 100, "succeeded", None),
        ):
            conn.execute(
                "INSERT INTO deployments (server_name, kind, state, error, source, repository, "
                "commit, apply_id, created_at, finished_at) "
                "VALUES (%s, 'up', %s, %s, 'gitops', %s, %s, %s, %s, %s)",
                (
                    name,
                    state,
                    error,
                    REPO,
                    "c" * 40,
                    apply_id,
                    T0 + timedelta(seconds=created),
                    T0 + timedelta(seconds=finished),
                ),
            )
        deleted = {"steps": [{"urn": "u::web-2-droplet", "type": "d", "op": "delete"}]}
        same = {"steps": [{"urn": "u::web-1", "type": "t", "op": "same"}]}
        for name, state, result, error in (
            ("web-2", "succeeded", same, None),  # an older check: the last one counts
            ("web-1", "succeeded", same, None),
            ("web-2", "succeeded", deleted, None),
            ("web-3", "failed", None, "the engine said no"),
        ):
            conn.execute(
                "INSERT INTO checks (server_name, kind, state, result, error, finished_at) "
                "VALUES (%s, 'refresh', %s, %s, %s, %s)",
                (name, state, Jsonb(result) if result else None, error, T0),
            )


def test_the_page_shows_the_last_apply_its_waves_and_the_drifted_servers(
    signed_in: TestClient, settings: Settings
) -> None:
    seed(settings.database_url.get_secret_value())
    answer = signed_in.get("/console/gitops")
    assert answer.status_code == 200, answer.text
    html = answer.text
    assert f'<h2 id="folder-1">{REPO}</h2>' in html
    assert "Last apply #2 of <code>cccccccccccc</code>" in html
    assert '<span class="badge s-failed">failed</span>' in html
    assert "web-9" not in html  # an older apply's
    # Wave 1 the canary alone, wave 2 the other two (one failed).
    assert html.count('scope="rowgroup"') == 2
    wave_1, wave_2 = html.split('scope="rowgroup"')[1:]
    assert "web-1" in wave_1
    assert "web-2" not in wave_1
    assert "web-2" in wave_2
    assert "web-3" in wave_2
    # Drift: web-2's droplet was deleted; web-3 could not be checked; web-1 is in sync.
    drift = html.split('class="drift"')[1]
    assert "Drifted at the last drift check (2 of 3)" in drift
    assert "web-2" in drift
    assert "drifted" in drift
    assert "web-3" in drift
    assert "could not check" in drift
    assert "the engine said no" in drift
    assert "web-1" not in drift
    # Error texts are escaped.
    assert HOSTILE not in html
    assert "&lt;script&gt;" in html
    assert 'href="/console/gitops"' in html  # in the navigation


def test_the_page_before_any_apply_says_so(signed_in: TestClient) -> None:
    answer = signed_in.get("/console/gitops")
    assert answer.status_code == 200
    assert "No fleet folder has been applied yet" in answer.text
