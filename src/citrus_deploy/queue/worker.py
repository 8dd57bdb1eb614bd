"""The worker: runs deployments from the queue (queue.runner) and the minutely maintenance
(queue.maintenance), and keeps running through a database outage.

Start any number of workers on any number of machines against the same DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from procrastinate import PsycopgConnector
from procrastinate.exceptions import ConnectorException
from psycopg_pool import PoolTimeout

from citrus_deploy import database
from citrus_deploy.errors import first_line
from citrus_deploy.queue import tasks
from citrus_deploy.queue.checks import CheckRunner  # the read-only checks (citrus.check)
from citrus_deploy.queue.maintenance import Maintenance
from citrus_deploy.queue.runner import DeploymentRunner
from citrus_deploy.settings import Settings
from citrus_deploy.store.pool import open_pool

log = logging.getLogger("citrus.worker")


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
            reason = f"{type(exc).__name__}: {first_line(exc)}"
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
