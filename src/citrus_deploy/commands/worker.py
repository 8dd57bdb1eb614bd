"""`citrus-deploy service worker`: a queue worker; any number, on any number of machines."""

from __future__ import annotations

import argparse
import asyncio

from citrus_deploy.engine.plugins import install_pinned_plugins
from citrus_deploy.engine.stack_config import check_stack_config
from citrus_deploy.queue.worker import run_worker
from citrus_deploy.settings import Settings, load_settings

HELP = "a queue worker"


def ready_to_deploy(settings: Settings) -> None:
    """What a worker checks before its first job, saying what is wrong: the stacks it would
    build, its deployer's needs and, for the real deployer, the Pulumi plugins (a first `up`
    would otherwise download them, and an offline worker fail every deployment)."""
    check_stack_config(settings)
    settings.check_deployer()
    if settings.deployer == "automation":
        install_pinned_plugins(settings.work_dir)


def run(_: argparse.Namespace) -> int:
    settings = load_settings()
    ready_to_deploy(settings)
    asyncio.run(run_worker(settings))
    return 0
