-- Metrics (web/metrics.py). Parameters are %(name)s only.

-- Metrics (web/metrics.py): everything GET /metrics shows, in one statement (one round
-- trip). Deployments still queued or running are counted on their partial index; finished ones
-- and the transitions come from the counters migrations/0006_metrics.sql keeps; agents and
-- servers are counted by status (a scan of each, small rows); the queue's jobs waiting or
-- running on procrastinate's partial index.

-- name: metrics_snapshot
SELECT
    (SELECT coalesce(json_agg(json_build_array(kind, state, n)), '[]')
     FROM (SELECT kind, state, count(*) AS n FROM deployments
           WHERE state IN ('queued', 'running') GROUP BY kind, state) d) AS active_deployments,
    (SELECT coalesce(json_agg(json_build_array(kind, state, le, count, seconds)), '[]')
     FROM metrics_deployments_finished) AS finished_deployments,
    metrics_duration_bounds() AS duration_bounds,
    (SELECT coalesce(json_agg(json_build_array(status, n)), '[]')
     FROM (SELECT status, count(*) AS n FROM agents GROUP BY status) a) AS agents,
    (SELECT coalesce(json_agg(json_build_array(status, n)), '[]')
     FROM (SELECT status, count(*) AS n FROM servers GROUP BY status) s) AS servers,
    (SELECT coalesce(json_agg(json_build_array(queue_name, status, n)), '[]')
     FROM (SELECT queue_name, status::text AS status, count(*) AS n FROM procrastinate_jobs
           WHERE status IN ('todo', 'doing') GROUP BY queue_name, status) j) AS jobs,
    (SELECT coalesce(json_agg(json_build_array(name, value)), '[]')
     FROM metrics_counters) AS counters;
