"""The worker rides out PostgreSQL restarts: short and long outages, then deploys again.

A real `citrus-deploy service worker` process and a PostgreSQL of the test's own that it stops and
starts (loopback only, bounded waits).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from citrus_deploy.standin.pg import PgServer
from citrus_deploy.web.app import create_app
from tests.service.conftest import AUTH, Worker, make_settings, service_env, wait_for

DEPLOY = "/admin/servers/deploy-with-agent"


def succeeded(client: TestClient, name: str) -> bool:
    response = client.get(f"/admin/servers/{name}", headers=AUTH)
    if response.status_code != 200:
        return False
    last = response.json().get("lastDeployment") or {}
    return last.get("state") == "succeeded"


@pytest.mark.parametrize("outage", [1, 20])
def test_the_worker_rides_out_a_database_restart(
    own_pg: PgServer, tmp_path: Path, outage: float
) -> None:
    env = service_env(own_pg.conninfo(), tmp_path / "state")
    worker = Worker(env, tmp_path / "worker.log").start()
    assert worker.proc is not None
    settings = make_settings(own_pg.conninfo(), tmp_path / "state")
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.post(DEPLOY, json={"name": "before-1"}, headers=AUTH).status_code == 202
            wait_for(lambda: succeeded(client, "before-1"), what="the first deployment")

            own_pg.stop()
            time.sleep(outage)
            own_pg.restart()

            posted = wait_for(
                lambda: (
                    (r := client.post(DEPLOY, json={"name": "after-1"}, headers=AUTH)).status_code
                    == 202
                    and r
                ),
                timeout=20,
                what="the web to answer again",
            )
            assert posted
            wait_for(lambda: succeeded(client, "after-1"), timeout=90, what="the deployment after")
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        assert "waiting for the database" in worker.log.read_text()
    finally:
        worker.stop()
    assert worker.proc.returncode == 0  # stopped by our SIGTERM, cleanly
