"""`GET /metrics`: the fleet and the queue in Prometheus' text format, read from the database.

The web process serves it, but workers, stale checkers and the hub make the changes: so every
number comes from PostgreSQL at scrape time, in one statement (`metrics_snapshot`), and the
counters (finished deployments with their durations, stale-check transitions, boot failures)
are kept by triggers (store/migrations, metrics block), whichever process made the change. Behind
the admin token like the /admin routes; not in the OpenAPI schema (it is not JSON).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from citrus_deploy.errors import DatabaseUnreachable
from citrus_deploy.queue import tasks
from citrus_deploy.store import boot_reports, queries
from citrus_deploy.web.dependencies import AppSettings, Pool, authenticated

KINDS = ("up", "destroy")
ACTIVE_STATES = ("queued", "running")
FINISHED_STATES = ("succeeded", "failed", "needs_operator")
AGENT_STATUSES = ("offline", "online", "failed")
SERVER_STATUSES = ("provisioning", "active", "failed")
QUEUES = (tasks.DEPLOY_QUEUE, tasks.MAINTENANCE_QUEUE)
JOB_STATUSES = ("todo", "doing")
STALE_TRANSITIONS = ("agent_failed", "agent_recovered", "server_recovered")
BOOT_STEPS = (*boot_reports.STEP_NAMES, "other")


class _Snapshot(Collector):
    """The families of one scrape, built from one row before the registry asks for them."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def families(row: dict[str, Any]) -> list[Metric]:
    """The metric families of a `metrics_snapshot` row. Every known label value is present
    (0 when nothing has it yet), so a series exists before its first event."""
    deployments = GaugeMetricFamily(
        "citrus_deployments",
        "Deployments by kind and state: queued and running now, finished ever.",
        labels=["kind", "state"],
    )
    counts = {(k, s): 0.0 for k in KINDS for s in ACTIVE_STATES + FINISHED_STATES}
    for kind, state, n in row["active_deployments"]:
        counts[(kind, state)] = float(n)
    buckets: dict[tuple[str, str], dict[float, float]] = {
        (k, s): {} for k in KINDS for s in FINISHED_STATES
    }
    sums = dict.fromkeys(buckets, 0.0)
    for kind, state, le, n, seconds in row["finished_deployments"]:
        le = math.inf if le in ("Infinity", None) else float(le)
        by_le = buckets.setdefault((kind, state), {})
        by_le[le] = by_le.get(le, 0.0) + n
        sums[(kind, state)] = sums.get((kind, state), 0.0) + seconds
        counts[(kind, state)] = counts.get((kind, state), 0.0) + n
    for (kind, state), n in sorted(counts.items()):
        deployments.add_metric([kind, state], n)

    duration = HistogramMetricFamily(
        "citrus_deployment_duration_seconds",
        "Finished deployments by how long they ran (first attempt's start to the end).",
        labels=["kind", "state"],
    )
    bounds = [float(b) for b in row["duration_bounds"]] + [math.inf]
    for (kind, state), by_le in sorted(buckets.items()):
        cumulative, total = [], 0.0
        for bound in bounds:
            total += by_le.get(bound, 0.0)
            # `le` written as prometheus_client writes it: "5.0", "+Inf".
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), total))
        duration.add_metric([kind, state], cumulative, sum_value=sums[(kind, state)])

    return [
        deployments,
        duration,
        _gauge(
            "citrus_queue_jobs",
            "Queue jobs waiting (todo) or running (doing), by queue.",
            ["queue", "status"],
            {(q, s): 0 for q in QUEUES for s in JOB_STATUSES},
            row["jobs"],
        ),
        _gauge(
            "citrus_agents",
            "Agents by status.",
            ["status"],
            {(s,): 0 for s in AGENT_STATUSES},
            row["agents"],
        ),
        _gauge(
            "citrus_servers",
            "Servers by status.",
            ["status"],
            {(s,): 0 for s in SERVER_STATUSES},
            row["servers"],
        ),
        *_counters(row["counters"]),
    ]


def _gauge(
    name: str,
    documentation: str,
    labels: list[str],
    zeros: dict[tuple[str, ...], int],
    found: list[list[Any]],
) -> GaugeMetricFamily:
    values: dict[tuple[str, ...], float] = {k: float(v) for k, v in zeros.items()}
    for item in found:
        values[tuple(item[:-1])] = float(item[-1])
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _counters(found: list[list[Any]]) -> Iterator[Metric]:
    stale = dict.fromkeys(STALE_TRANSITIONS, 0.0)
    boot = dict.fromkeys(BOOT_STEPS, 0.0)
    for name, value in found:
        group, _, label = name.partition(":")
        if group == "stale":
            stale[label] = float(value)
        elif group == "boot_failure":
            boot[label] = float(value)
    transitions = CounterMetricFamily(
        "citrus_stale_transitions",
        "Transitions made by the stale check: agents failed (never connected), failed agents "
        "that connected after all, failed servers made active again.",
        labels=["transition"],
    )
    for label, value in sorted(stale.items()):
        transitions.add_metric([label], value)
    yield transitions
    failures = CounterMetricFamily(
        "citrus_boot_failures",
        "Boot scripts that reported failure, by the step that failed (bootReportUrl).",
        labels=["step"],
    )
    for label, value in sorted(boot.items()):
        failures.add_metric([label], value)
    yield failures


router = APIRouter(dependencies=[Depends(authenticated)])


@router.get("/metrics", include_in_schema=False)
async def metrics(pool: Pool, settings: AppSettings) -> Response:
    """One statement, bounded by CITRUS_DB_TIMEOUT (the wait for a connection and the query;
    past it psycopg cancels the query and the answer is 503)."""
    limit = settings.db_timeout_seconds
    try:
        async with asyncio.timeout(limit), pool.connection(timeout=limit) as conn:
            cur = await conn.execute(queries.load()["metrics_snapshot"])
            names = [column.name for column in cur.description or []]
            values = await cur.fetchone()
    except TimeoutError as exc:
        raise DatabaseUnreachable(f"the metrics query took over {limit:g} s") from exc
    assert values is not None  # a SELECT without FROM returns one row
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families(dict(zip(names, values, strict=True)))))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
