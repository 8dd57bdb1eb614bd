"""Makes the console's screenshots (docs/screenshots/*.png) with the browser tests' setup:
a throwaway PostgreSQL, a real web process and worker under the engine stand-in, a few servers
deployed through the API, and one boot failure reported through the signed boot-report endpoint.

Run it with `scripts/screenshots` (it needs the packages scripts/setup installs).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.migrate import migrate_all as migrate
from citrus_deploy.web import boot_reports
from tests.browser.chrome import chrome, missing
from tests.browser.conftest import Web
from tests.paths import REPO
from tests.service.conftest import AUTH, TOKEN, Worker, service_env

OUT = REPO / "docs" / "screenshots"
FETCH_FAILURE = (
    "citrus-init: step: fetch agent https://github.com/citrushost/agent.git at main\n"
    "Cloning into '/opt/citrus-agent'...\n"
    "fatal: unable to access 'https://github.com/citrushost/agent.git/': "
    "The requested URL returned error: 403\n"
    "citrus-init: FAILURE (exit 128) at step: fetch agent"
)


def deploy(web: Web, name: str) -> None:
    answer = httpx.post(
        f"{web.url}/admin/servers/deploy-with-agent?wait=true&timeout=60",
        json={"name": name},
        headers=AUTH,
        timeout=90,
    )
    assert answer.status_code in (200, 202), answer.text


def report_failed_boot(web: Web, database: str, name: str) -> None:
    """The boot of `name` as its script reports it, signed with its agent's key: steps up to
    `fetch agent`, then FAILURE there with the log's last lines."""
    with psycopg.connect(database) as conn:
        found = conn.execute(
            "SELECT a.id::text, a.key FROM servers s JOIN agents a ON a.id = s.agent_id "
            "WHERE s.name = %s",
            (name,),
        ).fetchone()
    assert found is not None, name
    agent_id, key = found
    boot, start = secrets.token_hex(8), int(time.time()) - 95
    steps = [
        ("start", "start", "step", None, "", 0),
        ("packages", "install packages", "step", None, "", 3),
        ("user", "create user citrus", "step", None, "", 71),
        ("fetch", "fetch agent https://github.com/citrushost/agent.git at main", "step", None,
         "", 72),
        ("fetch", "fetch agent https://github.com/citrushost/agent.git at main", "failure", 128,
         FETCH_FAILURE, 74),
    ]  # fmt: skip
    for seq, (step, label, event, code, tail, after) in enumerate(steps, start=1):
        body = json.dumps(
            {
                "boot": boot,
                "seq": seq,
                "at": start + after,
                "step": step,
                "label": label,
                "event": event,
                "exit": code,
                "tail": tail,
            }
        ).encode()
        stamp = str(int(time.time()))
        answer = httpx.post(
            f"{web.url}/boot-reports/{agent_id}",
            content=body,
            headers={
                "Content-Type": "application/json",
                boot_reports.TIMESTAMP_HEADER: stamp,
                boot_reports.SIGNATURE_HEADER: "sha256=" + boot_reports.sign(key, stamp, body),
            },
        )
        assert answer.status_code == 201, answer.text


def shoot(web: Web, pages: dict[str, str], width: int, height: int) -> None:
    browser: Any = chrome(width, height)
    try:
        browser.get(f"{web.url}/console/sign-in")
        browser.find_element("id", "token").send_keys(TOKEN + "\n")
        time.sleep(1)
        for filename, path in pages.items():
            browser.get(web.url + path)
            time.sleep(2)  # the live stream connects and the ages settle
            browser.save_screenshot(str(OUT / filename))
            print(f"wrote {OUT / filename}")
    finally:
        browser.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    if reason := missing():
        print(f"screenshots: {reason}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    pg = PgServer().start()
    web = worker = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            database = pg.conninfo()
            migrate(database)
            env = service_env(database, Path(tmp) / "state", CITRUS_ENV="development")
            web = Web(env, Path(tmp) / "web.log")
            worker = Worker(env, Path(tmp) / "worker.log").start()
            for name in ("web-1", "web-2", "api-1", "db-1"):
                deploy(web, name)
            with psycopg.connect(database) as conn:
                # db-1's droplet booted 11 minutes ago, past AGENT_CONNECT_TIMEOUT (600 s).
                conn.execute(
                    "UPDATE agents SET created_at = now() - interval '11 minutes' "
                    "WHERE name = 'agent-db-1'"
                )
                # The hub marks agents online when they connect: these three did.
                conn.execute(
                    "UPDATE agents SET status = 'online' WHERE name = ANY(%s)",
                    (["agent-web-1", "agent-web-2", "agent-api-1"],),
                )
            report_failed_boot(web, database, "db-1")
            check_env = {**os.environ, "DATABASE_URL": database}
            subprocess.run(
                [sys.executable, "-m", "citrus_deploy", "service", "stale-check"],
                cwd=REPO,
                env=check_env,
                check=True,
                capture_output=True,
            )
            worker.stop()
            worker = None
            # Queued while no worker runs: shows as provisioning, its deployment queued.
            httpx.post(
                f"{web.url}/admin/servers/deploy-with-agent", json={"name": "web-3"}, headers=AUTH
            )
            shoot(
                web,
                {"fleet.png": "/console", "failed-boot.png": "/console/servers/db-1"},
                args.width,
                args.height,
            )
    finally:
        if worker is not None:
            worker.stop()
        if web is not None:
            web.stop()
        pg.destroy()
    for name in ("fleet.png", "failed-boot.png"):
        print(f"{OUT / name}: {(OUT / name).stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
