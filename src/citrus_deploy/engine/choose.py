"""The deployer a deployment's child process runs, as CITRUS_DEPLOYER chose it: the Automation
API (`automation`) or the engine stand-in (`test-engine`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from citrus_deploy.engine.automation import AutomationDeployer
from citrus_deploy.engine.deployer import Deployer
from citrus_deploy.engine.standin import StandInDeployer


def _passphrase(options: Mapping[str, Any]) -> str | None:
    if options.get("passphrase"):
        return str(options["passphrase"])
    if options.get("passphrase_file"):
        return Path(options["passphrase_file"]).read_text().rstrip("\n")
    return None


def make_deployer(options: Mapping[str, Any]) -> Deployer:
    backend = str(options["backend_url"])
    if options["deployer"] == "test-engine":
        parts = urlsplit(backend)
        base = Path(parts.path) if parts.scheme == "file" else Path(options["work_dir"]).parent
        return StandInDeployer(
            base / "test-engine",
            step_delay=float(options["step_delay"]),
            passphrase=_passphrase(options),
        )
    return AutomationDeployer(
        backend_url=backend,
        work_dir=Path(options["work_dir"]),
        passphrase=options.get("passphrase"),
        passphrase_file=options.get("passphrase_file"),
    )
