"""The worker: runs deployments from the queue and the minutely maintenance.

Each deployment runs in a child process (service.child.run_in_child) while this process
streams its output into the deployment record, holds one of the account's droplet-creation
slots for an `up`, and turns the outcome into the record's final state. Start any number of
workers on any number of machines against the same DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from procrastinate import PsycopgConnector
from procrastinate.exceptions import ConnectorException
from procrastinate.jobs import Job, Status
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from citrus_deploy import database
from citrus_deploy.engine.child import run_in_child
from citrus_deploy.engine.deployer import DeployError, StackValue
from citrus_deploy.engine.fingerprint import program_hash
from citrus_deploy.engine.stack_config import deployer_options, secret_values, stack_config
from citrus_deploy.queue import stale, tasks
from citrus_deploy.settings import Settings
from citrus_deploy.store import deployments, records
from citrus_deploy.store.pool import open_pool

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


class Maintenance:
    """The minutely job: stale-agent check, retry of jobs whose worker died, remediation."""

    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool[Any], job_manager: Any
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.job_manager = job_manager

    async def run(self) -> None:
        async with self.pool.connection() as conn:
            await stale.check(conn, self.settings.agent_connect_timeout)
        await self.recover_stalled_jobs()
        if self.settings.remediate_failed_servers:
            await remediate(self.pool, backoff=self.settings.remediate_backoff_seconds)

    async def recover_stalled_jobs(self) -> int:
        """Jobs still 'doing' on a worker that stopped its heartbeat: record it, then retry."""
        found = await self.job_manager.get_stalled_jobs(
            seconds_since_heartbeat=self.settings.worker_stalled_timeout
        )
        recovered = 0
        for job in found:
            if job.task_name not in (tasks.deploy.name, tasks.destroy.name):
                await self._retry(job)
                continue
            dep_id = int(job.task_kwargs["deployment_id"])
            # The attempt must have been quiet for DEPLOY_STOP_GRACE longer than a stalled
            # worker: when its worker died, its deployer child stops by itself, finishing the
            # step in flight, and is gone within that grace (killed past it, leaving what an
            # operator must see). A retry sooner could meet the child's lock or half-made step.
            quiet = self.settings.worker_stalled_timeout + self.settings.deploy_stop_grace_seconds
            if await records.alive(self.pool, dep_id, quiet):
                # Its procrastinate worker went quiet (a database outage stops its heartbeat,
                # and a restart gives it a new id), but the attempt itself still beats, or
                # has not been quiet long enough for its child to be gone.
                continue
            dep = await records.get_deployment(self.pool, dep_id, tail=0)
            what = (
                f"attempt {dep.attempts} interrupted: worker {job.worker_id} stopped sending "
                "heartbeats (killed, or cut off from the database)"
            )
            if job.attempts + 1 >= self.settings.deploy_max_attempts:
                await records.fail(self.pool, dep_id, what + "; no attempts left")
                await self.job_manager.finish_job(job, status=Status.FAILED, delete_job=False)
                log.error("deployment %s: %s; no attempts left", dep_id, what)
                continue
            if await records.interrupt(self.pool, dep_id, dep.attempts, what + "; retrying"):
                log.warning("deployment %s: %s; retrying", dep_id, what)
            recovered += await self._retry(job)
        return recovered

    async def _retry(self, job: Job) -> int:
        try:
            await self.job_manager.retry_job(job)
        except Exception:  # another checker retried it first
            log.info("job %s was already retried", job.id)
            return 0
        return 1


async def remediate(pool: AsyncConnectionPool[Any], *, backoff: float) -> list[str]:
    """Enqueues the destroy of every failed server with nothing queued or running.

    A failed server is a servers row marked 'failed' whose agent is not 'online', or a failed
    `up` that never wrote its row (store/sql, select_failed_servers_without_deployment).
    After n failed destroys in a row a server waits backoff * 2^(n-1) seconds (at most 6 hours)
    before the next one. The list is only a list: each destroy is queued by a statement that
    decides again, on locked rows, so an agent that connects meanwhile keeps its server.
    """
    queued = []
    for name in await records.failed_servers_without_deployment(pool, backoff=backoff):
        try:
            dep = await deployments.enqueue_remediation(pool, name)
        except deployments.DeploymentConflict as exc:
            log.info("remediation: %s", exc)
            continue
        log.warning("remediation: queued destroy of failed server %s (deployment %s)", name, dep.id)
        queued.append(name)
    return queued


async def _recover_every(maintenance: Maintenance, seconds: float) -> None:
    while True:
        try:
            await maintenance.recover_stalled_jobs()
        except Exception:  # the database may be away for a while; try again next time
            log.warning("stalled-job recovery failed; retrying in %gs", seconds, exc_info=True)
        await asyncio.sleep(seconds)


async def run_worker(settings: Settings, *, install_signal_handlers: bool = True) -> None:
    """Runs until SIGTERM or SIGINT (when it installs the handlers), then stops gracefully.

    The handlers are installed first thing, not when procrastinate's worker loop starts, so a
    signal while the pool opens or the worker registers still means a clean stop (exit 0).
    The first signal lets running deployments finish; a second one kills the process.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signums = (signal.SIGTERM, signal.SIGINT) if install_signal_handlers else ()

    def first_signal() -> None:
        log.info("worker: stopping after the running jobs (signal again to kill)")
        for signum in signums:
            loop.remove_signal_handler(signum)  # back to the default: the next one kills
        stop.set()

    for signum in signums:
        loop.add_signal_handler(signum, first_signal)
    try:
        await _run_worker(settings, stop)
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)


async def _unless_stopped(task: asyncio.Future[Any], stop: asyncio.Event) -> None:
    """Awaits `task`; when `stop` is set first, cancels it and waits for it to wind down."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()  # procrastinate's worker then finishes its running jobs, takes no more
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _run_worker(settings: Settings, stop: asyncio.Event) -> None:
    tasks.RETRY.max_attempts = settings.deploy_max_attempts
    tasks.RETRY.base_seconds = settings.retry_backoff_seconds
    name = f"{socket.gethostname()}-{id(settings) % 10000}-{int(time.time()) % 100000}"
    pool = open_pool(settings, max_size=settings.worker_concurrency + 4)
    target = database.describe(settings.database_url.get_secret_value())
    log.info("worker %s: connecting to %s", name, target)
    try:
        await _unless_stopped(asyncio.ensure_future(pool.open(wait=True, timeout=60)), stop)
        if stop.is_set():
            return
        with tasks.app.replace_connector(PsycopgConnector()) as app:
            async with app.open_async(pool):
                maintenance = Maintenance(settings, pool, app.job_manager)
                from citrus_deploy.queue.checks import (
                    CheckRunner,  # the read-only checks (citrus.check)
                )

                runner = DeploymentRunner(settings, pool, name)
                runtime = tasks.Runtime(
                    runner=runner,
                    checker=maintenance,
                    checks=CheckRunner(settings, pool, runner.redact),
                )
                # A worker (re)starting after a crash picks up what its predecessor left, and
                # keeps looking every stalled-timeout, not only at the minutely maintenance.
                recovery = asyncio.create_task(
                    _recover_every(maintenance, settings.worker_stalled_timeout)
                )
                log.info(
                    "worker %s: concurrency %d, deployer %s",
                    name,
                    settings.worker_concurrency,
                    settings.deployer,
                )
                try:
                    await _supervise(
                        settings,
                        stop,
                        name,
                        lambda: app.run_worker_async(
                            queues=list(tasks.QUEUES),
                            name=name,
                            concurrency=settings.worker_concurrency,
                            additional_context={"runtime": runtime},
                            update_heartbeat_interval=settings.worker_heartbeat_interval,
                            stalled_worker_timeout=settings.worker_stalled_timeout,
                            install_signal_handlers=False,  # run_worker's, from the start
                        ),
                    )
                finally:
                    recovery.cancel()
    finally:
        await pool.close()


# What losing the database looks like from procrastinate's worker and our pool.
_DATABASE_LOST = (ConnectorException, psycopg.Error, PoolTimeout, OSError)
_RECONNECT_MAX_SECONDS = 30.0
_STEADY_SECONDS = 60.0  # a queue worker that ran this long resets the backoff


async def _supervise(
    settings: Settings,
    stop: asyncio.Event,
    name: str,
    make_worker: Callable[[], Awaitable[None]],
) -> None:
    """Runs procrastinate's worker until `stop`, and again whenever it ends on its own.

    procrastinate stops its whole worker when a side task (the LISTEN connection, the
    heartbeat) loses the database, and returns as if asked to stop: without this loop a
    PostgreSQL restart of any length ended the worker with exit code 0. Running deployments
    live in child processes and go on meanwhile; jobs stay in the queue. The loop waits for the
    database with a capped exponential backoff, saying so in the log, and never gives up by
    itself; anything else than a lost database propagates (the worker then exits non-zero).
    """
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        reason = "the queue worker stopped on its own"
        try:
            await _unless_stopped(asyncio.ensure_future(make_worker()), stop)
        except _DATABASE_LOST as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            reason = f"{type(exc).__name__}: {first_line}"
        if stop.is_set():
            return
        failures = 1 if time.monotonic() - started > _STEADY_SECONDS else failures + 1
        await _wait_for_database(settings, stop, name, reason, failures)


async def _wait_for_database(
    settings: Settings, stop: asyncio.Event, name: str, reason: str, failures: int
) -> None:
    conninfo = settings.database_url.get_secret_value()
    target = database.describe(conninfo)
    delay = min(_RECONNECT_MAX_SECONDS, 0.5 * 2 ** (failures - 1))
    waited = 0.0
    while not stop.is_set():
        log.warning(
            "worker %s: lost the database at %s (%s); waiting for the database, next try in "
            "%gs (%gs so far)",
            name,
            target,
            reason,
            delay,
            waited,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return
        waited += delay
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo, connect_timeout=5, autocommit=True
            ) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.Error, OSError) as exc:
            reason = type(exc).__name__
            delay = min(_RECONNECT_MAX_SECONDS, delay * 2)
            continue
        log.info(
            "worker %s: the database is back after %gs; restarting the queue worker", name, waited
        )
        return
