"""`citrus-deploy service <command>`: web, worker, all (both, one machine), demo, stale-check,
migrate.

Settings come from the environment (see service/settings.py); secrets never from argv.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

from citrus_deploy.errors import CitrusError


def _settings() -> Any:
    from citrus_deploy.settings import load_settings

    return load_settings()


def cmd_web(_: argparse.Namespace) -> int:
    import uvicorn

    from citrus_deploy.web.app import create_app

    settings = _settings()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # uvicorn has no deadline for request headers (a reverse proxy in front has one); what
        # it has: idle keep-alive connections closed after 5 s, request heads over 16 KiB
        # refused, and past CITRUS_MAX_CONNECTIONS open connections an immediate 503 instead of
        # running out of file descriptors. Bodies get CITRUS_BODY_TIMEOUT in the app (BodyLimit).
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=settings.max_connections,
        # The client's address is the connection's peer unless it is one of the proxies named
        # in CITRUS_FORWARDED_ALLOW_IPS. (uvicorn's default believes X-Forwarded-For from
        # 127.0.0.1, or from FORWARDED_ALLOW_IPS: a client on this machine, or any client of a
        # local proxy that does not set the header, could pose as any address.)
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies,
    )
    return 0


def cmd_worker(_: argparse.Namespace) -> int:
    from citrus_deploy.queue.worker import run_worker

    settings = _settings()
    settings.check_stack_config()
    settings.check_deployer()
    if settings.deployer == "automation":  # before any job: see install_pinned_plugins
        from citrus_deploy.engine.plugins import install_pinned_plugins

        install_pinned_plugins(settings.work_dir)
    asyncio.run(run_worker(settings))
    return 0


def cmd_all(_: argparse.Namespace) -> int:
    """Web and one worker as two child processes; stops both when either ends or on Ctrl-C."""
    settings = _settings()  # fail here, once, on bad settings
    settings.check_stack_config()
    settings.check_deployer()
    if settings.deployer == "automation":  # and here on a missing plugin (the worker's is a no-op)
        from citrus_deploy.engine.plugins import install_pinned_plugins

        install_pinned_plugins(settings.work_dir)
    children = [
        subprocess.Popen([sys.executable, "-m", "citrus_deploy", "service", "web"]),
        subprocess.Popen([sys.executable, "-m", "citrus_deploy", "service", "worker"]),
    ]
    print(
        f"citrus-deploy: web on http://{settings.host}:{settings.port}"
        f"{' (docs at /docs)' if settings.docs_enabled else ''}, "
        f"worker with concurrency {settings.worker_concurrency}, deployer {settings.deployer}",
        flush=True,
    )

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop()
    codes = []
    for child in children:
        try:
            codes.append(child.wait(timeout=15))
        except subprocess.TimeoutExpired:
            child.kill()
            codes.append(child.wait())
    return max(abs(c) for c in codes) if any(codes) else 0


DEMO_ENV = {
    # The demo runs the real program under the engine stand-in: DigitalOcean and the hub are not
    # contacted, so these placeholders never leave the machine.
    "ADMIN_TOKEN": "dev",
    "CITRUS_ENV": "development",
    "CITRUS_DEPLOYER": "test-engine",
    "ENGINE_WS_URL": "wss://engine.citrushost.io",
    "GITHUB_TOKEN": "ghp_demo_token_not_used",
    "DIGITALOCEAN_TOKEN": "dop_v1_demo_token_not_used",
}


def cmd_demo(args: argparse.Namespace) -> int:
    """Everything on this machine with nothing to set up: a throwaway PostgreSQL, web, worker."""
    from citrus_deploy.standin.pg import PgServer
    from citrus_deploy.store.queue_schema import migrate

    server = PgServer().start()
    try:
        os.environ["DATABASE_URL"] = server.conninfo()
        # The stacks' state lives and dies with the demo's database.
        os.environ.setdefault("PULUMI_BACKEND_URL", f"file://{server.root}/pulumi-state")
        for key, value in DEMO_ENV.items():
            os.environ.setdefault(key, value)
        # Seals the secrets in the stacks' state, which lives and dies with the demo.
        os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", secrets.token_urlsafe(24))
        migrate(server.conninfo())
        print(
            f"citrus-deploy demo: DATABASE_URL={server.conninfo()} ADMIN_TOKEN="
            f"{os.environ['ADMIN_TOKEN']} (deployer: {os.environ['CITRUS_DEPLOYER']}); "
            "the database is removed on exit",
            flush=True,
        )
        return cmd_all(args)
    finally:
        server.destroy()


def cmd_stale_check(args: argparse.Namespace) -> int:
    import psycopg

    from citrus_deploy.queue import stale
    from citrus_deploy.settings import load_settings

    # Only the database and the timeout matter here; no admin token is needed to run it.
    settings = load_settings(
        ADMIN_TOKEN=os.environ.get("ADMIN_TOKEN") or "stale-check-needs-no-admin-token"
    )

    async def run() -> int:
        conninfo = settings.database_url.get_secret_value()
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            result = await stale.check(
                conn, settings.agent_connect_timeout if args.timeout is None else args.timeout
            )
        if args.remediate or settings.remediate_failed_servers:
            from citrus_deploy.queue.worker import remediate
            from citrus_deploy.store.pool import open_pool

            pool = open_pool(settings, max_size=2)
            await pool.open(wait=True, timeout=10)
            try:
                from procrastinate import PsycopgConnector

                from citrus_deploy.queue import tasks

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

    return asyncio.run(run())


def cmd_migrate(_: argparse.Namespace) -> int:
    from citrus_deploy.database import describe
    from citrus_deploy.store.queue_schema import migrate

    conninfo = os.environ.get("DATABASE_URL")
    if not conninfo:
        print("DATABASE_URL is not set: export it (postgresql://user@host/db)", file=sys.stderr)
        return 2
    created = migrate(conninfo)
    queue = "created" if created else "already there"
    print(f"schema applied to {describe(conninfo)}; queue schema {queue}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="citrus-deploy service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("web", help="the HTTP service (uvicorn)").set_defaults(func=cmd_web)
    sub.add_parser("worker", help="a queue worker").set_defaults(func=cmd_worker)
    sub.add_parser("all", help="web + worker on this machine").set_defaults(func=cmd_all)
    sub.add_parser(
        "demo", help="web + worker + a throwaway PostgreSQL, deploying through the engine stand-in"
    ).set_defaults(func=cmd_demo)
    stale_cmd = sub.add_parser("stale-check", help="run the stale-agent check once")
    from citrus_deploy.queue.stale import timeout_argument

    stale_cmd.add_argument(
        "--timeout",
        type=timeout_argument,  # finite and >= 0, or a usage error naming --timeout
        help="seconds, finite and >= 0 (default AGENT_CONNECT_TIMEOUT)",
    )
    stale_cmd.add_argument(
        "--remediate", action="store_true", help="also queue the destroy of failed servers"
    )
    stale_cmd.set_defaults(func=cmd_stale_check)
    sub.add_parser("migrate", help="apply our schema and the queue's").set_defaults(
        func=cmd_migrate
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except CitrusError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
