"""The seam between the worker and the Pulumi engine: `up` and `destroy` of one stack.

`Deployer` is the interface, with two implementations, chosen by CITRUS_DEPLOYER:
- `service.automation.AutomationDeployer`: the Pulumi Automation API on the project directory
  itself (the same program as `pulumi up`);
- `service.standin_deployer.StandInDeployer`: the same program under `standin.engine`, the
  stand-in for the Pulumi engine and DigitalOcean, for machines without a Pulumi CLI or a cloud
  account.
Each deployment runs in a child process of its own (`service.child`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from citrus.errors import CitrusError

ROOT = Path(__file__).resolve().parent.parent

OnOutput = Callable[[str], None]


@dataclass(frozen=True)
class StackValue:
    value: str
    secret: bool = False


StackConfig = Mapping[str, StackValue]  # fully qualified keys: "citrus-deploy:serverName"


class DeployError(CitrusError):
    """`up` or `destroy` failed.

    `transient`: worth retrying later (lock held by a live update, network). `repair`: the stack
    needs an operator before anything else runs on it (a killed update left its lock or pending
    operations); the text says what to run. A repair error is never retried.
    """

    def __init__(self, message: str, *, transient: bool = False, repair: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient and repair is None
        self.repair = repair


class Deployer(Protocol):
    def up(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        """Creates or updates the stack; returns its outputs."""
        ...

    def destroy(self, stack: str, config: StackConfig, on_output: OnOutput) -> None:
        """Destroys the stack's resources and removes the stack; a missing stack is done."""
        ...

    def cancel(self) -> None:
        """Called from a signal handler: stop the running operation the way Pulumi's CLI stops
        on SIGTERM (in-flight steps finish, the checkpoint is saved, the lock released)."""
        ...


# Messages of the CLI that mean "try again later", not "the program or its config is wrong".
_TRANSIENT_HINTS = (
    "stack is currently locked",
    "connection reset",
    "connection refused",
    "timeout",
    "timed out",
    "temporary failure",
    "too many requests",
    "rate limit",
    "503 service unavailable",
    "502 bad gateway",
    "cannot connect to postgresql",
    "lost the connection",
)


def looks_transient(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _TRANSIENT_HINTS)


def last_lines(text: str, count: int = 12) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def _passphrase(options: Mapping[str, Any]) -> str | None:
    if options.get("passphrase"):
        return str(options["passphrase"])
    if options.get("passphrase_file"):
        return Path(options["passphrase_file"]).read_text().rstrip("\n")
    return None


def make_deployer(options: Mapping[str, Any]) -> Deployer:
    backend = str(options["backend_url"])
    if options["deployer"] == "test-engine":
        from service.standin_deployer import StandInDeployer

        parts = urlsplit(backend)
        base = Path(parts.path) if parts.scheme == "file" else ROOT / ".pulumi"
        return StandInDeployer(
            base / "test-engine",
            step_delay=float(options["step_delay"]),
            passphrase=_passphrase(options),
        )
    from service.automation import AutomationDeployer

    return AutomationDeployer(
        backend_url=backend,
        passphrase=options.get("passphrase"),
        passphrase_file=options.get("passphrase_file"),
    )
