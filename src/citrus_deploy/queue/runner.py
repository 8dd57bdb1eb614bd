"""One deployment attempt, run and recorded.

The deployment runs in a child process (engine.child.run_in_child) while this process streams
its output into the deployment record, holds one of the account's droplet-creation slots for an
`up`, and turns the outcome into the record's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from procrastinate.jobs import Job
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from citrus_deploy.engine.child import run_in_child
from citrus_deploy.engine.deployer import DeployError, StackValue
from citrus_deploy.engine.fingerprint import program_hash
from citrus_deploy.engine.stack_config import deployer_options, secret_values, stack_config
from citrus_deploy.queue import tasks
from citrus_deploy.settings import Settings
from citrus_deploy.store import deployments, records

log = logging.getLogger("citrus.worker")

# Advisory-lock namespace of the droplet-creation slots (two-int4 form, apart from migrate's).
_SLOT_NAMESPACE = 0x64726F70  # "drop"
_SLOT_POLL_SECONDS = 1.0
# Lines kept while the database is away; the record keeps only its last 1 MiB anyway.
_BUFFER_LIMIT = 10_000


def redactor(secrets: list[str]) -> Callable[[str], str]:
    def redact(text: str) -> str:
        for secret in secrets:
            if secret and secret in text:
                text = text.replace(secret, "[secret]")
        return text

    return redact


class OutputRecorder:
    """Appends output lines to the deployment record in batches (every `interval` seconds).

    A batch leaves the buffer only once it is stored: a flush that fails keeps its lines for the
    next one, and leaving the block waits for the flush in flight instead of cancelling it (a
    cancelled flush would lose its batch, and with it the output of a short deployment).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        deployment_id: int,
        redact: Callable[[str], str],
        interval: float = 0.5,
    ) -> None:
        self.pool = pool
        self.deployment_id = deployment_id
        self.redact = redact
        self.interval = interval
        self._buffer: list[str] = []
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def line(self, text: str) -> None:
        self._buffer.append(self.redact(text))
        if len(self._buffer) >= 500:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            count = len(self._buffer)  # lines may be added while this batch is stored
            text = "\n".join(self._buffer) + "\n"
            try:
                await records.append_output(self.pool, self.deployment_id, text)
            except BaseException:
                del self._buffer[: max(0, len(self._buffer) - _BUFFER_LIMIT)]
                raise
            del self._buffer[:count]

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
            stopping = self._stop.is_set()  # read before the flush: lines may come during it
            try:
                await self.flush()
            except psycopg.Error:
                log.warning("could not append output of deployment %s", self.deployment_id)
            if stopping:
                return

    async def __aenter__(self) -> OutputRecorder:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._stop.set()
        try:
            await asyncio.shield(self._task)  # its last round flushes what is left
        except asyncio.CancelledError:
            self._task.cancel()
            raise


@contextlib.asynccontextmanager
async def droplet_slot(
    conninfo: str, slots: int, on_wait: Callable[[str], Awaitable[None]]
) -> AsyncIterator[int]:
    """Holds one of `slots` account-wide droplet-creation slots (DigitalOcean allows 10).

    A session advisory lock on a connection of its own: it is released when the `up` ends, or
    by PostgreSQL when the worker dies.
    """
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        waited = False
        while True:
            for slot in range(slots):
                cur = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (_SLOT_NAMESPACE, slot)
                )
                row = await cur.fetchone()
                if row and row[0]:
                    try:
                        yield slot
                    finally:
                        with contextlib.suppress(psycopg.Error):
                            await conn.execute(
                                "SELECT pg_advisory_unlock(%s, %s)", (_SLOT_NAMESPACE, slot)
                            )
                    return
            if not waited:
                await on_wait(f"waiting for a droplet-creation slot (all {slots} in use)")
                waited = True
            await asyncio.sleep(_SLOT_POLL_SECONDS)


class DeploymentRunner:
    """Runs one deployment attempt and records its outcome."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any], name: str) -> None:
        self.settings = settings
        self.pool = pool
        self.name = name
        self.redact = redactor(secret_values(settings))

    async def run(self, deployment_id: int, job: Job, *, kind: str) -> None:
        dep = await records.start_attempt(self.pool, deployment_id, job.id)
        if dep is None:
            log.info("deployment %s is already finished: nothing to do", deployment_id)
            return
        log.info(
            "attempt %d: %s of %s (deployment %s)", dep.attempts, kind, dep.server_name, dep.id
        )
        config = {
            key: StackValue(value, secret)
            for key, (value, secret) in stack_config(self.settings, dict(dep.config)).items()
        }
        options = deployer_options(self.settings)
        recorder = OutputRecorder(self.pool, dep.id, self.redact)

        beating = asyncio.create_task(self._beat(dep.id))

        async def killed(exc: DeployError) -> None:  # the worker stopped us past the grace
            await records.needs_operator(
                self.pool, dep.id, self.redact(str(exc)), self.redact(exc.repair or "")
            )

        try:
            async with recorder:
                await recorder.line(
                    f"== attempt {dep.attempts}: {kind} {dep.server_name} on {self.name} "
                    f"(job {job.id}, deployer {self.settings.deployer})"
                )
                if kind == "up":
                    conninfo = self.settings.database_url.get_secret_value()
                    slots = self.settings.droplet_creation_slots
                    async with droplet_slot(conninfo, slots, recorder.line):
                        outputs = await run_in_child(
                            kind, dep.server_name, config, options, recorder.line, on_killed=killed
                        )
                else:
                    outputs = await run_in_child(
                        kind, dep.server_name, config, options, recorder.line, on_killed=killed
                    )
        except DeployError as exc:
            await self._failed(dep, job, exc)
            raise AssertionError("unreachable") from None  # _failed always raises
        except tasks.TRANSIENT as exc:  # the database went away under us: retry the job
            log.warning("deployment %s: database error %s; retrying", dep.id, type(exc).__name__)
            raise
        except Exception as exc:
            # A bug here must not leave the record 'running' with nobody on it.
            log.exception("deployment %s: unexpected error in the worker", dep.id)
            error = f"internal error in the worker ({type(exc).__name__}); see the worker log"
            await records.fail(self.pool, dep.id, error)
            raise tasks.DeploymentFailed(error) from exc
        finally:
            beating.cancel()
        program = await _program_hash() if kind == "up" else None
        await records.succeed(self.pool, dep.id, outputs, program_hash=program)
        log.info("deployment %s (%s of %s) succeeded", dep.id, kind, dep.server_name)

    async def _beat(self, deployment_id: int) -> None:
        """The attempt's heartbeat, for as long as it runs; a beat lost to an outage is fine."""
        while True:
            await asyncio.sleep(self.settings.worker_heartbeat_interval)
            with contextlib.suppress(psycopg.Error, PoolTimeout, OSError):
                await records.beat(self.pool, deployment_id)

    async def _failed(self, dep: deployments.Deployment, job: Job, exc: DeployError) -> None:
        error = self.redact(str(exc))
        if exc.repair is not None:
            await records.needs_operator(self.pool, dep.id, error, self.redact(exc.repair))
            log.error(
                "deployment %s (%s of %s) needs an operator: %s",
                dep.id,
                dep.kind,
                dep.server_name,
                error,
            )
            raise tasks.DeploymentFailed(error)
        policy = tasks.RETRY
        if exc.transient and job.attempts + 1 < policy.max_attempts:
            delay = policy.base_seconds * 2**job.attempts
            note = f"!! attempt {dep.attempts} failed (transient): {error}; retrying in {delay:g}s"
            await records.requeue(self.pool, dep.id, error, note)
            log.warning("deployment %s: %s", dep.id, note)
            raise tasks.TransientFailure(error)
        await records.fail(self.pool, dep.id, error)
        log.error("deployment %s (%s of %s) failed: %s", dep.id, dep.kind, dep.server_name, error)
        raise tasks.DeploymentFailed(error)


async def _program_hash() -> str | None:
    """The hash of the program an `up` ran, for GitOps to compare with the checkout it plans;
    None (and a warning) when it cannot be read: the deployment succeeded all the same."""
    try:
        return await asyncio.to_thread(program_hash)
    except OSError:
        log.warning("could not hash the program's files", exc_info=True)
        return None
