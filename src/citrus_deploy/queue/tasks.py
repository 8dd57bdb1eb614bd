"""The job queue: procrastinate tasks on PostgreSQL, shared by any number of workers.

`deploy` and `destroy` run one deployment each, deferred with `lock` = `queueing_lock` = the stack
name, so one stack never has two operations at once. `stale_check` runs every minute on one
worker (procrastinate defers a periodic job once per tick across all workers) and also retries
jobs whose worker died. Retries use exponential backoff and happen for transient errors only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import procrastinate
import psycopg
import psycopg_pool
from procrastinate import JobContext, RetryDecision
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy

from citrus_deploy.errors import DatabaseUnreachable

log = logging.getLogger("citrus.tasks")

DEPLOY_QUEUE = "deployments"
MAINTENANCE_QUEUE = "maintenance"
QUEUES = (DEPLOY_QUEUE, MAINTENANCE_QUEUE)

# The connector is replaced at run time (App.with_connector / open_async(pool)).
app = procrastinate.App(connector=procrastinate.PsycopgConnector())


class TransientFailure(Exception):
    """An attempt failed in a way worth retrying; the deployment record says why."""


class DeploymentFailed(Exception):
    """A deployment failed for good; the record holds the error. The job fails, no retry."""


TRANSIENT: tuple[type[Exception], ...] = (
    TransientFailure,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    DatabaseUnreachable,
)


@dataclass
class RetryPolicy:
    """Exponential backoff: base, 2*base, 4*base ... for TRANSIENT errors, max_attempts in all."""

    max_attempts: int = 4
    base_seconds: float = 5.0


class BackoffRetry(BaseRetryStrategy):
    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if not isinstance(exception, TRANSIENT):
            return None
        if job.attempts + 1 >= self.policy.max_attempts:
            return None
        delay = self.policy.base_seconds * 2**job.attempts
        return RetryDecision(retry_in={"seconds": delay})


# The worker sets these from its settings before it starts (queue.worker).
RETRY = RetryPolicy()


@dataclass
class Runtime:
    """What the tasks need, handed over as the worker's additional context."""

    runner: Any  # queue.runner.DeploymentRunner
    checker: Any  # queue.maintenance.Maintenance
    checks: Any = None  # queue.checks.CheckRunner: the read-only engine checks
    extra: dict[str, Any] = field(default_factory=dict)


def _runtime(context: JobContext) -> Runtime:
    runtime: Runtime = context.additional_context["runtime"]
    return runtime


@app.task(
    name="citrus.deploy",
    queue=DEPLOY_QUEUE,
    pass_context=True,
    retry=BackoffRetry(RETRY),
)
async def deploy(context: JobContext, deployment_id: int) -> None:
    assert context.job is not None
    await _runtime(context).runner.run(deployment_id, context.job, kind="up")


@app.task(
    name="citrus.destroy",
    queue=DEPLOY_QUEUE,
    pass_context=True,
    retry=BackoffRetry(RETRY),
)
async def destroy(context: JobContext, deployment_id: int) -> None:
    assert context.job is not None
    await _runtime(context).runner.run(deployment_id, context.job, kind="destroy")


@app.task(
    name="citrus.check",
    queue=DEPLOY_QUEUE,
    pass_context=True,
    retry=BackoffRetry(RETRY),
)
async def check(context: JobContext, check_id: int) -> None:
    """A read-only check (queue/checks.py), deferred with lock = the server name and no
    queueing lock: it waits for that server's up/destroy and never refuses one."""
    assert context.job is not None
    await _runtime(context).checks.run(check_id, context.job)


@app.periodic(cron="* * * * *", periodic_id="stale-check")
@app.task(
    name="citrus.stale_check",
    queue=MAINTENANCE_QUEUE,
    queueing_lock="citrus.stale_check",
    pass_context=True,
)
async def stale_check(context: JobContext, timestamp: int) -> None:
    await _runtime(context).checker.run()
