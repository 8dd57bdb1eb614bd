"""`citrus-deploy service all`: web and one worker on this machine, as two child processes."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from citrus_deploy.commands.worker import ready_to_deploy
from citrus_deploy.settings import load_settings

HELP = "web + worker on this machine"


def run(_: argparse.Namespace) -> int:
    """Web and one worker as two child processes; stops both when either ends or on Ctrl-C."""
    settings = load_settings()  # fail here, once, on bad settings
    ready_to_deploy(settings)  # and here on a missing plugin (the worker's is then a no-op)
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
    # uvicorn ends a graceful shutdown by raising the signal it caught again, so a child we
    # stopped with SIGTERM that ends by it stopped as asked.
    failed = [abs(code) for code in codes if code not in (0, -signal.SIGTERM)]
    return max(failed) if failed else 0
