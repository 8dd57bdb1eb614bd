"""The minutely maintenance: the stale-agent check, the retry of jobs whose worker died, and
the remediation of failed servers."""

from __future__ import annotations

import logging
from typing import Any

from procrastinate.jobs import Job, Status
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.queue import stale, tasks
from citrus_deploy.settings import Settings
from citrus_deploy.store import deployments, records

log = logging.getLogger("citrus.worker")


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
