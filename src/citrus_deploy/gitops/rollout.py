"""The rollout of one apply: its servers in waves through the service's queue, each wave's
deployments polled until each server has its verdict, and the health gate between waves.

A wave goes on only when each of its servers' deployment succeeded and the server is `active`
(its agent came online). The rules that decide (the waves, a server's verdict, when to stop) are
pure functions, tested alone in test_waves.py.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg

from citrus_deploy.errors import first_line
from citrus_deploy.queue import stale
from citrus_deploy.store import gitops as gitops_store
from citrus_deploy.store import ownership
from citrus_deploy.store.deployments import DeploymentConflict
from citrus_deploy.store.states import ApplyOutcome, Kind

CANARY = "canary"
TEN_PERCENT = "10%"
REST = "rest"
DESTROY = "destroy"
BUSY = "busy: a deployment is in progress"
POLL_SECONDS = 0.5
# Outcomes of a server in the table.
SUCCEEDED: ApplyOutcome = "succeeded"
FAILED: ApplyOutcome = "failed"
NOT_STARTED = "not started"  # the rollout stopped before its wave
SKIPPED = "skipped"  # a removed file, without --prune


# -- what to do ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server to deploy: its plan action and the record config of its file."""

    name: str
    action: str  # create | update | replace | destroy | retry
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> Kind:
        return "destroy" if self.action == "destroy" else "up"


@dataclass(frozen=True)
class Wave:
    number: int
    label: str  # canary | 10% | rest | destroy
    targets: tuple[Target, ...]


def plan_waves(ups: Sequence[Target], destroys: Sequence[Target], canary: int = 1) -> list[Wave]:
    """The canary (`canary` servers), then 10% of the rest (at least 1), then the rest; the
    destroys in a wave of their own after every `up`, so nothing is removed before what
    replaces it runs."""
    if canary < 1:
        raise ValueError(f"canary must be at least 1, got {canary}")
    waves: list[Wave] = []
    if ups:
        waves.append(Wave(1, CANARY, tuple(ups[:canary])))
        rest = ups[canary:]
        if rest:
            tenth = max(1, math.ceil(len(rest) * 0.1))
            waves.append(Wave(2, TEN_PERCENT, tuple(rest[:tenth])))
            if rest[tenth:]:
                waves.append(Wave(3, REST, tuple(rest[tenth:])))
    if destroys:
        waves.append(Wave(len(waves) + 1, DESTROY, tuple(destroys)))
    return waves


# -- how it went ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the final table."""

    name: str
    action: str
    wave: int | None = None
    deployment_id: int | None = None
    outcome: str = NOT_STARTED
    error: str | None = None


def verdict(
    kind: str,
    deployment_state: str | None,
    deployment_error: str | None,
    server_status: str | None,
    waited_for_agent: float,
    agent_timeout: float,
) -> tuple[str, str | None] | None:
    """A server's outcome, or None while it is still on its way.

    An `up` succeeds only once its deployment succeeded AND its server is `active` (the agent
    came online); it fails when the deployment failed or needs an operator, when the server is
    `failed`, or when it is not active `agent_timeout` seconds after the deployment succeeded
    (`waited_for_agent` is how long it has been). A `destroy` succeeds with its deployment.
    """
    if deployment_state == "failed":
        return FAILED, deployment_error or "the deployment failed"
    if deployment_state == "needs_operator":
        return FAILED, f"needs an operator: {deployment_error or 'see the deployment'}"
    if deployment_state != "succeeded":
        return None
    if kind == "destroy" or server_status == "active":
        return SUCCEEDED, None
    if server_status == "failed":
        return FAILED, "the agent never came online (server failed)"
    if waited_for_agent >= agent_timeout:
        return FAILED, f"the agent was not online {agent_timeout:g}s after the deployment"
    return None


def stop_reason(wave: Wave, results: Mapping[str, Result]) -> str | None:
    """Why the rollout stops after `wave`: any canary failure, or more than 10% of a wave."""
    failed = [t.name for t in wave.targets if results[t.name].outcome == FAILED]
    if not failed:
        return None
    if wave.label == CANARY:
        return f"the canary failed ({', '.join(failed)})"
    if len(failed) > 0.1 * len(wave.targets):
        return (
            f"{len(failed)} of the {len(wave.targets)} servers of wave {wave.number} "
            f"({wave.label}) failed, more than 10%"
        )
    return None


def error_line(text: str | None, width: int = 120) -> str:
    """An error's first line, cut to `width`, for one line of output ('' for no error)."""
    line = first_line(text) if text and text.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


# -- the rollout ----------------------------------------------------------------------------------


class Rollout:
    """Runs the waves of one apply against the queue, polling the database."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        *,
        apply_id: int,
        repository: str,
        commit: str,
        agent_timeout: float,
        poll: float = POLL_SECONDS,
        settle: Callable[[], None] = lambda: None,
        watch: Callable[[], None] = lambda: None,
        out: IO[str] | None = None,
    ) -> None:
        self.conn = conn
        self.apply_id = apply_id
        self.repository = repository
        self.commit = commit
        self.agent_timeout = agent_timeout
        self.poll = poll
        self.settle = settle  # lets provisioning servers whose agent is online become active
        self.watch = watch  # raises when the workers we started died
        self.out = out or sys.stdout

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def run(self, waves: Sequence[Wave]) -> tuple[dict[str, Result], str | None]:
        """Every wave in turn until one stops the rollout; (results by name, stop reason)."""
        results = {
            t.name: Result(t.name, t.action, wave=w.number) for w in waves for t in w.targets
        }
        for wave in waves:
            names = ", ".join(t.name for t in wave.targets[:10])
            more = f" and {len(wave.targets) - 10} more" if len(wave.targets) > 10 else ""
            self.say(f"wave {wave.number} ({wave.label}, {len(wave.targets)}): {names}{more}")
            self.run_wave(wave, results)
            reason = stop_reason(wave, results)
            if reason is not None:
                left = sum(1 for r in results.values() if r.outcome == NOT_STARTED)
                self.say(f"stopping: {reason}; {left} server(s) not started")
                return results, reason
        return results, None

    def run_wave(self, wave: Wave, results: dict[str, Result]) -> None:

        pending: dict[int, Target] = {}
        for target in wave.targets:
            result = results[target.name]
            try:
                result.deployment_id = gitops_store.enqueue(
                    self.conn,
                    apply_id=self.apply_id,
                    name=target.name,
                    kind=target.kind,
                    config=dict(target.config),
                    repository=self.repository,
                    commit=self.commit,
                )
            except DeploymentConflict as exc:
                result.outcome = FAILED
                busy = exc.reason == "deployment_in_progress"
                result.error = BUSY if busy else str(exc)
                self.say(f"  {target.name}: {result.error}")
                continue
            pending[result.deployment_id] = target
        succeeded_at: dict[int, float] = {}
        while pending:
            self.watch()
            rows = {r["id"]: r for r in gitops_store.apply_deployments(self.conn, self.apply_id)}
            now = time.monotonic()
            awaiting = [d for d in pending if (rows.get(d) or {}).get("state") == "succeeded"]
            servers: dict[str, Any] = {}
            if any(pending[d].kind == "up" for d in awaiting):
                self.settle()
                servers = ownership.load_deployed(self.conn)
            for dep_id in list(pending):
                target = pending[dep_id]
                row = rows.get(dep_id) or {}
                if row.get("state") == "succeeded":
                    succeeded_at.setdefault(dep_id, now)
                deployed = servers.get(target.name.lower())
                found = verdict(
                    target.kind,
                    row.get("state"),
                    row.get("error"),
                    deployed.server_status if deployed is not None else None,
                    now - succeeded_at.get(dep_id, now),
                    self.agent_timeout,
                )
                if found is None:
                    continue
                result = results[target.name]
                result.outcome, result.error = found
                del pending[dep_id]
                tail = f": {error_line(result.error)}" if result.error else ""
                self.say(f"  {target.name}: {result.outcome} (deployment {dep_id}){tail}")
            if pending:
                time.sleep(self.poll)


class Settler:
    """Runs the service's stale check (queue.stale) so that a server whose agent came online
    becomes `active` now, not at the workers' next minutely check. Several checkers may run at
    once; AGENT_CONNECT_TIMEOUT is the service's own rule for 'failed'."""

    def __init__(self, conninfo: str, timeout: float, every: float = 1.0) -> None:
        self.conninfo = conninfo
        self.timeout = timeout
        self.every = every
        self._last = -math.inf
        self._runner = asyncio.Runner()
        self._conn: psycopg.AsyncConnection[Any] | None = None

    def __call__(self) -> None:
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        self._runner.run(self._check())

    async def _check(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        await stale.check(self._conn, self.timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._runner.run(self._conn.close())
        self._runner.close()
