"""`citrus-deploy service demo`: web and worker with a throwaway PostgreSQL, deploying through
the engine stand-in: everything on this machine with nothing to set up."""

from __future__ import annotations

import argparse
import os
import secrets

from citrus_deploy.commands import both
from citrus_deploy.standin.pg import PgServer
from citrus_deploy.store.migrate import migrate_all

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


HELP = "web + worker + a throwaway PostgreSQL, deploying through the engine stand-in"


def run(args: argparse.Namespace) -> int:
    """Everything on this machine with nothing to set up: a throwaway PostgreSQL, web, worker."""
    server = PgServer().start()
    try:
        os.environ["DATABASE_URL"] = server.conninfo()
        # The stacks' state lives and dies with the demo's database.
        os.environ.setdefault("PULUMI_BACKEND_URL", f"file://{server.root}/pulumi-state")
        for key, value in DEMO_ENV.items():
            os.environ.setdefault(key, value)
        # Seals the secrets in the stacks' state, which lives and dies with the demo.
        os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", secrets.token_urlsafe(24))
        migrate_all(server.conninfo())
        print(
            f"citrus-deploy demo: DATABASE_URL={server.conninfo()} ADMIN_TOKEN="
            f"{os.environ['ADMIN_TOKEN']} (deployer: {os.environ['CITRUS_DEPLOYER']}); "
            "the database is removed on exit",
            flush=True,
        )
        return both.run(args)
    finally:
        server.destroy()
