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

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from citrus_deploy.errors import CitrusError

OnOutput = Callable[[str], None]


@dataclass(frozen=True)
class StackValue:
    """One stack config value, typed as the project declares it: text, a bool, or a list or map
    (`type: array` keys such as sshKeys and tags). Secrets are always text."""

    value: Any
    secret: bool = False

    @property
    def text(self) -> str:
        """What the program reads: text as it is, anything else JSON (as the CLI hands an
        object value to the program)."""
        return self.value if isinstance(self.value, str) else json.dumps(self.value)


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

    def preview(self, stack: str, config: StackConfig, on_output: OnOutput) -> dict[str, Any]:
        """`pulumi preview`: what an `up` with this config would do, changing nothing.
        A stack that does not exist previews as all creates. Returns `preview_result(...)`."""
        ...

    def preview_refresh(
        self, stack: str, config: StackConfig, on_output: OnOutput
    ) -> dict[str, Any]:
        """`pulumi refresh --preview-only`: what drifted behind the program's back, changing
        nothing, not even the checkpoint. A stack that does not exist is a DeployError.
        Returns `refresh_result(...)`."""
        ...

    def cancel(self) -> None:
        """Called from a signal handler: stop the running operation the way Pulumi's CLI stops
        on SIGTERM (in-flight steps finish, the checkpoint is saved, the lock released)."""
        ...


# Words of the CLI, its backends and DigitalOcean's API that mean "try again later", not "the
# program or its config is wrong": a state backend that cannot be reached (`failed to ping
# PostgreSQL`, pkg/backend/diy/postgres/bucket.go), the network, DigitalOcean's rate limit and
# server errors as its provider reports them, and a lost database connection of our provider.
_TRANSIENT_HINTS = (
    "failed to ping postgresql",
    "unable to open state",
    "connection reset",
    "connection refused",
    "i/o timeout",
    "timeout",
    "timed out",
    "temporary failure",
    "no such host",
    "tls handshake timeout",
    "too many requests",
    "rate limit",
    ": 429 ",
    ": 500 ",
    ": 502 ",
    ": 503 ",
    ": 504 ",
    "503 service unavailable",
    "502 bad gateway",
    "cannot connect to postgresql",
    "lost the connection",
)


# A destroy runs the program first (`--run-program`), so that today's DigitalOcean token is
# used. A destroy stopped half-way (its worker died) leaves resources the program needs out of
# the checkpoint (the agent key): the program then fails, Pulumi's engine answering such
# resources with their inputs only. What is left is destroyed from the checkpoint instead.
PROGRAM_FAILED_FALLBACK = (
    "destroying what the checkpoint still holds without it, as `pulumi destroy` does "
    "(a destroy stopped half-way leaves the program without what it had already deleted)"
)


def looks_transient(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _TRANSIENT_HINTS)


def last_lines(text: str, count: int = 12) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


# -- results of the read-only checks (preview, refresh --preview-only) -----------------------

SECRET_SHOWN = "[secret]"  # noqa: S105 (what the CLI's event log shows for a secret value)
PREVIEW_OPS = ("create", "update", "replace", "delete", "same")
REFRESH_OPS = ("update", "delete", "same")


@dataclass(frozen=True)
class CheckStep:
    """One resource's step as a check reports it: from the stand-in engine's steps or the
    CLI's engine events. `old`/`new` are outputs (refresh only); secrets already masked or
    marked, never shown (`masked`)."""

    urn: str
    type: str
    op: str
    diffs: Sequence[str] = ()
    old: Mapping[str, Any] | None = None
    new: Mapping[str, Any] | None = None


def masked(value: Any) -> Any:
    """The value, or "[secret]" when it is or holds a secret (a wire-form secret marker, or a
    value the CLI already masked)."""
    if value == SECRET_SHOWN:
        return SECRET_SHOWN
    if isinstance(value, dict):
        if value.get(_SECRET_SIG_KEY) == _SECRET_SIG:
            return SECRET_SHOWN
        inner = {k: masked(v) for k, v in value.items()}
        return SECRET_SHOWN if SECRET_SHOWN in inner.values() else inner
    if isinstance(value, list):
        items = [masked(v) for v in value]
        return SECRET_SHOWN if SECRET_SHOWN in items else items
    return value


# Pulumi's wire form of a secret (pulumi.runtime.rpc._special_sig_key / _special_secret_sig).
_SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"  # noqa: S105 (a marker, no secret)
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105


def preview_result(
    steps: Sequence[CheckStep], summary: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """`{"summary": {op: count}, "steps": [{urn, type, op, diffs: [key]}]}`, the steps in the
    engine's order. The summary is the engine's own (its summaryEvent: a replacement counted
    once, default providers not at all) when given, else counted from the steps the same way."""
    shown = [s for s in steps if s.op in PREVIEW_OPS]
    counted = dict.fromkeys(PREVIEW_OPS, 0)
    if summary is None:
        for s in shown:
            counted[s.op] += 1
    else:
        counted |= {op: int(n) for op, n in summary.items() if op in PREVIEW_OPS}
    return {
        "summary": counted,
        "steps": [
            {"urn": s.urn, "type": s.type, "op": s.op, "diffs": sorted(s.diffs)} for s in shown
        ],
    }


def refresh_result(steps: Sequence[CheckStep]) -> dict[str, Any]:
    """`{"summary": {op: count}, "steps": [{urn, type, op, diffs: [{key, old, new}]}]}`; a
    deleted resource's diffs are empty (it is gone as a whole); secrets show as "[secret]"."""
    shown = [s for s in steps if s.op in REFRESH_OPS]
    summary = dict.fromkeys(REFRESH_OPS, 0)
    out = []
    for s in shown:
        summary[s.op] += 1
        old, new = s.old or {}, s.new or {}
        diffs = [
            {"key": key, "old": masked(old.get(key)), "new": masked(new.get(key))}
            for key in sorted(s.diffs)
        ]
        shown_diffs = diffs if s.op == "update" else []
        out.append({"urn": s.urn, "type": s.type, "op": s.op, "diffs": shown_diffs})
    return {"summary": summary, "steps": out}
