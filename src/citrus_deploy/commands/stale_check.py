"""`citrus-deploy service stale-check`: the stale-agent check once (and the remediation)."""

from __future__ import annotations

import argparse
import asyncio
import os

import psycopg
from procrastinate import PsycopgConnector

from citrus_deploy.queue import stale, tasks
from citrus_deploy.queue.maintenance import remediate
from citrus_deploy.settings import Settings, load_settings
from citrus_deploy.store.pool import open_pool

HELP = "run the stale-agent check once"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=stale.timeout_argument,  # finite and >= 0, or a usage error naming --timeout
        help="seconds, finite and >= 0 (default AGENT_CONNECT_TIMEOUT)",
    )
    parser.add_argument(
        "--remediate", action="store_true", help="also queue the destroy of failed servers"
    )


def run(args: argparse.Namespace) -> int:
    # Only the database and the timeout matter here; no admin token is needed to run it.
    token = os.environ.get("ADMIN_TOKEN") or "stale-check-needs-no-admin-token"
    return asyncio.run(_check(load_settings(ADMIN_TOKEN=token), args))


async def _check(settings: Settings, args: argparse.Namespace) -> int:
    conninfo = settings.database_url.get_secret_value()
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        result = await stale.check(
            conn, settings.agent_connect_timeout if args.timeout is None else args.timeout
        )
    if args.remediate or settings.remediate_failed_servers:
        pool = open_pool(settings, max_size=2)
        await pool.open(wait=True, timeout=10)
        try:
            with tasks.app.replace_connector(PsycopgConnector()) as queue:
                async with queue.open_async(pool):
                    queued = await remediate(pool, backoff=settings.remediate_backoff_seconds)
        finally:
            await pool.close()
        print(f"remediation: destroy queued for {len(queued)} failed server(s)")
    print(
        f"stale check: {len(result.failed_agents)} agent(s) failed, "
        f"{len(result.failed_servers)} server(s) failed, "
        f"{len(result.active_servers)} server(s) active ({result.seconds:.3f}s)"
    )
    return 0
