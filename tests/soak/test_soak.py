"""Soak: the web and two workers under a steady POST/DELETE load while the database restarts
three times and a worker is killed once (loopback only, bounded in time and requests).

At the end every deployment is finished (succeeded) or explicitly failed (failed,
needs_operator); none accepted is lost, none duplicated; no row, droplet or checkpoint is left
without its server. CITRUS_SOAK_SECONDS sets the load's length (default 150).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from citrus_deploy.standin.pg import PgServer, free_port
from citrus_deploy.store.migrate import migrate_all as migrate
from tests.paths import REPO
from tests.service.conftest import AUTH, Worker, rows, service_env, wait_for

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("CITRUS_SOAK_SECONDS", "150"))
POST_EVERY = 1.0  # seconds between POSTs
DELETE_AFTER = 8.0  # a server accepted this long ago is deleted
OUTAGE = 2.0  # seconds each database restart keeps it down


@dataclass
class Load:
    """What the clients were told: the contract the end state is checked against."""

    posted: dict[str, float] = field(default_factory=dict)  # name -> when accepted (202)
    deleted: set[str] = field(default_factory=set)  # DELETE answered 202
    busy_until: dict[str, float] = field(default_factory=dict)  # 409: try that one again later
    answers: Counter[str] = field(default_factory=Counter)  # "POST 202", "DELETE 409", ...
    faults: list[str] = field(default_factory=list)


def _request(client: httpx.Client, load: Load, method: str, url: str, **kw: Any) -> int:
    try:
        status = client.request(method, url, headers=AUTH, **kw).status_code
    except httpx.HTTPError as exc:
        load.answers[f"{method} {type(exc).__name__}"] += 1
        return 0
    load.answers[f"{method} {status}"] += 1
    return status


def _drive(base: str, load: Load, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        n = 0
        while not stop.is_set():
            n += 1
            name = f"soak-{n}"
            if (
                _request(
                    client, load, "POST", "/admin/servers/deploy-with-agent", json={"name": name}
                )
                == 202
            ):
                load.posted[name] = time.monotonic()
            now = time.monotonic()
            due = [
                m
                for m, at in load.posted.items()
                if m not in load.deleted
                and now - at > DELETE_AFTER
                and load.busy_until.get(m, 0) < now
            ]
            if due:
                answer = _request(client, load, "DELETE", f"/admin/servers/{due[0]}")
                if answer == 202:
                    load.deleted.add(due[0])
                elif answer == 409:  # its `up` is still queued or running
                    load.busy_until[due[0]] = now + 3
            stop.wait(POST_EVERY)


def _faults(pg: PgServer, workers: list[Worker], load: Load, stop: threading.Event) -> None:
    plan = [(0.2, "restart"), (0.4, "kill"), (0.55, "restart"), (0.8, "restart")]
    started = time.monotonic()
    for at, fault in plan:
        if stop.wait(max(0.0, started + at * SECONDS - time.monotonic())):
            return
        if fault == "restart":
            pg.stop()
            time.sleep(OUTAGE)
            pg.restart()
            load.faults.append(f"database restarted at {at:.0%} ({OUTAGE:g} s down)")
        else:
            workers[0].kill()  # SIGKILL: its deployment is recovered by the other worker
            load.faults.append(f"worker killed at {at:.0%}")
            workers[0].start()


def test_the_service_holds_under_load_through_restarts_and_a_killed_worker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pg = PgServer().start()
    migrate(pg.conninfo())
    state = tmp_path / "state"
    env = service_env(pg.conninfo(), state, CITRUS_TEST_ENGINE_STEP_DELAY="0.2")
    port = free_port()
    web_env = {**os.environ, **env, "CITRUS_PORT": str(port)}
    with (tmp_path / "web.log").open("wb") as web_log:
        web = subprocess.Popen(
            [sys.executable, "-m", "citrus_deploy", "service", "web"],
            cwd=REPO,
            env=web_env,
            stdout=web_log,
            stderr=subprocess.STDOUT,
        )
    workers = [Worker(env, tmp_path / f"worker-{i}.log").start() for i in range(2)]
    base = f"http://127.0.0.1:{port}"
    load, stop = Load(), threading.Event()
    try:
        wait_for(lambda: _up(base), what="the web to start")
        threads = [
            threading.Thread(target=_drive, args=(base, load, stop)),
            threading.Thread(target=_faults, args=(pg, workers, load, stop)),
        ]
        for thread in threads:
            thread.start()
        time.sleep(SECONDS)
        stop.set()
        for thread in threads:
            thread.join(60)
        try:
            wait_for(
                lambda: rows(pg.conninfo(), _ACTIVE) == [(0,)],
                timeout=300,
                what="every deployment to finish",
            )
        except AssertionError:
            stuck = rows(pg.conninfo(), _STUCK)
            raise AssertionError(f"deployments never finished: {stuck}") from None
        alive = [w.proc.poll() is None for w in workers if w.proc] + [web.poll() is None]
        report = _check(pg.conninfo(), state, load)
    finally:
        stop.set()
        for worker in workers:
            worker.stop()
        web.terminate()
        web.wait(15)
        pg.destroy()
    with capsys.disabled():
        print(f"\nsoak: {json.dumps(report, sort_keys=True)}")
    assert alive == [True, True, True], "a process died under the load"
    assert report["problems"] == []


_ACTIVE = "SELECT count(*) FROM deployments WHERE state IN ('queued', 'running')"
_STUCK = """
SELECT d.server_name, d.kind, d.state, d.attempts, d.error, j.status, j.attempts, j.scheduled_at
FROM deployments d LEFT JOIN procrastinate_jobs j ON j.id = d.job_id
WHERE d.state IN ('queued', 'running') ORDER BY d.id LIMIT 10
"""


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _check(conninfo: str, state: Path, load: Load) -> dict[str, Any]:
    """Every name against the rows, the fake cloud and the checkpoints."""
    deployments = rows(
        conninfo, "SELECT server_name, kind, state, attempts FROM deployments ORDER BY id"
    )
    servers = {r[0]: r[1] for r in rows(conninfo, "SELECT name, digital_ocean_id FROM servers")}
    agents = Counter(r[0] for r in rows(conninfo, "SELECT name FROM agents"))
    cloud_file = state / "test-engine" / "digitalocean.json"
    cloud = json.loads(cloud_file.read_text())["droplets"] if cloud_file.exists() else {}
    droplets = Counter(d["name"] for d in cloud.values())
    problems: list[str] = []

    by_name: dict[str, list[tuple[str, str]]] = {}
    for name, kind, dep_state, _attempts in deployments:
        by_name.setdefault(name, []).append((kind, dep_state))
    for name in load.posted:
        kinds = [k for k, _ in by_name.get(name, [])]
        expected = ["up", "destroy"] if name in load.deleted else ["up"]
        if kinds != expected:
            problems.append(f"{name}: deployments {kinds}, expected {expected} (lost or doubled)")
    for name in set(by_name) - set(load.posted):
        problems.append(f"{name}: deployments {by_name[name]} that no client was told of")
    for name, history in by_name.items():
        last_kind, last_state = history[-1]
        gone = (last_kind, last_state) == ("destroy", "succeeded")
        if droplets[name] > 1:
            problems.append(f"{name}: {droplets[name]} droplets")
        if agents[f"agent-{name}"] > 1:
            problems.append(f"{name}: {agents[f'agent-{name}']} agents rows")
        if gone and (name in servers or agents[f"agent-{name}"] or droplets[name]):
            left = {
                "servers row": name in servers,
                "agents rows": agents[f"agent-{name}"],
                "droplets": droplets[name],
            }
            problems.append(
                f"{name}: destroyed, yet rows or a droplet are left: {left}; "
                f"deployments (kind, state, attempts): "
                f"{[(k, st, a) for n, k, st, a in deployments if n == name]}"
            )
        if gone and (state / "test-engine" / f"{name}.json").exists():
            problems.append(f"{name}: destroyed, yet its checkpoint is left")
        if (last_kind, last_state) == ("up", "succeeded"):
            droplet_ids = [i for i, d in cloud.items() if d["name"] == name]
            if servers.get(name) is None or droplet_ids != [servers[name]]:
                problems.append(
                    f"{name}: up succeeded, row {servers.get(name)}, droplets {droplet_ids}"
                )
    for name in servers:
        if name not in by_name:
            problems.append(f"{name}: servers row without a deployment")
    states = Counter(s for _, _, s, _ in deployments)
    return {
        "seconds": SECONDS,
        "answers": dict(load.answers),
        "faults": load.faults,
        "deployments": dict(states),
        "retried": sum(1 for *_, attempts in deployments if attempts > 1),
        "servers_left": len(servers),
        # Why any deployment did not succeed, in its own words (first line of its error).
        "not_succeeded": [
            f"{name} {kind} {dep_state}: {(error or '').splitlines()[0] if error else '-'}"
            for name, kind, dep_state, error in rows(
                conninfo,
                "SELECT server_name, kind, state, error FROM deployments "
                "WHERE state <> 'succeeded' ORDER BY id",
            )
        ],
        "problems": problems,
    }
