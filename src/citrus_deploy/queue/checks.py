"""Read-only engine checks: `pulumi preview` and `pulumi refresh --preview-only` of one server.

`gitops plan --preview` queues a 'preview' per changed server (what would the engine do with
this config?), `gitops drift` a 'refresh' per GitOps server (what changed behind our back?).
The queue's workers run them as they run deployments (same deployer, same child process, same
stack config from the record's config), serialised with that server's up and destroy by the job
lock, and store the result. A check changes nothing: no resource, no row, no checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from procrastinate.jobs import Job
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from citrus_deploy.engine.child import run_in_child
from citrus_deploy.engine.deployer import DeployError, StackValue
from citrus_deploy.engine.stack_config import deployer_options, stack_config
from citrus_deploy.errors import CitrusError
from citrus_deploy.queue import tasks
from citrus_deploy.settings import Settings
from citrus_deploy.store import queries

log = logging.getLogger("citrus.checks")

KINDS = ("preview", "refresh")
FINISHED = ("succeeded", "failed")
_FIELDS = ("id", "server_name", "kind", "state", "config", "result", "error", "attempts")


class CheckNotFound(CitrusError):
    """No check with that id."""


def enqueue_check(conn: psycopg.Connection, name: str, kind: str, config: dict[str, Any]) -> int:
    """Queues a check of server `name` with `config` (a record config, as deployments keep
    it); returns its id. The row and its job are one statement: see store/sql insert_check.
    """
    if kind not in KINDS:
        raise ValueError(f"check kind must be one of {', '.join(KINDS)}, not {kind!r}")
    params = {
        "server_name": name,
        "kind": kind,
        "config": Jsonb(config),
        "queue": tasks.check.queue,
        "task_name": tasks.check.name,
        "priority": tasks.check.priority,
    }
    row = conn.execute(queries.load()["insert_check"], params).fetchone()
    assert row is not None  # an INSERT ... RETURNING of one row
    log.info("queued %s check of %s: check %s, job %s", kind, name, row[0], row[-1])
    return int(row[0])


def get_check(conn: psycopg.Connection, check_id: int) -> dict[str, Any]:
    """id, server_name, kind, state, config, result, error, attempts; CheckNotFound."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries.load()["select_check"], {"id": check_id}).fetchone()
    if row is None:
        raise CheckNotFound(f"no check {check_id}")
    return {key: row[key] for key in _FIELDS}


def wait_for_checks(
    conn: psycopg.Connection,
    ids: Sequence[int],
    *,
    timeout: float,
    poll: float = 0.5,
    watch: Callable[[], None] = lambda: None,
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Waits until every check of `ids` has finished, or `timeout` seconds passed, polling with
    one query for all of them; returns (finished checks by id, ids still unfinished).

    `watch` runs before each poll and may raise (e.g. when the workers started for the
    command died). `conn` must be in autocommit, or each poll would read one old snapshot.
    """
    pending = set(ids)
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while pending:
        watch()
        with conn.cursor(row_factory=dict_row) as cur:
            found = cur.execute(
                queries.load()["select_finished_checks"], {"ids": sorted(pending)}
            ).fetchall()
        for row in found:
            done[row["id"]] = {key: row[key] for key in _FIELDS}
            pending.discard(row["id"])
        if pending:
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
    return done, sorted(pending)


class CheckRunner:
    """Runs one check attempt in the worker (task citrus.check) and records its outcome."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any], redact: Any) -> None:
        self.settings = settings
        self.pool = pool
        self.redact = redact  # the worker's redactor: no secret value reaches the record

    async def _execute(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(queries.load()[name], params)
            return await cur.fetchone() if cur.description else None

    async def run(self, check_id: int, job: Job) -> None:
        row = await self._execute("start_check", {"id": check_id})
        if row is None:
            log.info("check %s is already finished: nothing to do", check_id)
            return
        kind, name = row["kind"], row["server_name"]
        config = {
            key: StackValue(value, secret)
            for key, (value, secret) in stack_config(self.settings, dict(row["config"])).items()
        }

        async def output(line: str) -> None:  # a check keeps its result, not its output
            log.debug("check %s: %s", check_id, self.redact(line))

        try:
            result = await run_in_child(kind, name, config, deployer_options(self.settings), output)
        except DeployError as exc:
            error = self.redact(str(exc))
            if exc.transient and job.attempts + 1 < tasks.RETRY.max_attempts:
                await self._execute("requeue_check", {"id": check_id, "error": error})
                log.warning("check %s (%s of %s): %s; retrying", check_id, kind, name, error)
                raise tasks.TransientFailure(error) from None
            await self._finish(check_id, "failed", None, error)
            log.error("check %s (%s of %s) failed: %s", check_id, kind, name, error)
            raise tasks.DeploymentFailed(error) from None
        except tasks.TRANSIENT:  # the database went away under us: the job is retried
            raise
        except Exception as exc:
            log.exception("check %s: unexpected error in the worker", check_id)
            error = f"internal error in the worker ({type(exc).__name__}); see the worker log"
            await self._finish(check_id, "failed", None, error)
            raise tasks.DeploymentFailed(error) from exc
        await self._finish(check_id, "succeeded", result, None)
        log.info("check %s (%s of %s) succeeded", check_id, kind, name)

    async def _finish(
        self, check_id: int, state: str, result: dict[str, Any] | None, error: str | None
    ) -> None:
        params = {
            "id": check_id,
            "state": state,
            "result": Jsonb(result) if result is not None else None,
            "error": error,
        }
        await self._execute("finish_check", params)
