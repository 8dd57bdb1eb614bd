-- 0006: metrics: counters kept by triggers.
-- One of the baseline migrations (0001-0007): the schema as it stood when numbered migrations
-- began, written idempotently, so it also brings a database of an earlier release up to date.

-- ---------------------------------------------------------------------------------------------
-- Metrics (web/metrics.py, GET /metrics): counters kept by triggers, so that whichever
-- process makes a transition (a worker finishing a deployment, any stale checker, the hub, the
-- web recording a boot report) counts it, the counts survive restarts, and a scrape reads a few
-- small rows instead of scanning history. Each table only ever grows by a bounded number of
-- rows (labels); a counter only ever goes up.

-- Finished deployments by kind, final state and duration bucket (finished_at - started_at: the
-- first attempt's start to the end, retries included; queued time excluded, or created_at when
-- it never started). The bucket bounds, in seconds, are metrics_duration_bounds(): a row's `le`
-- is the first bound above the duration (width_bucket; a duration exactly on a bound counts in
-- the next bucket up), Infinity past the last. Prometheus' cumulative buckets are summed from
-- these at scrape time.
CREATE OR REPLACE FUNCTION metrics_duration_bounds() RETURNS float8[] LANGUAGE sql IMMUTABLE AS
$$ SELECT ARRAY[5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600]::float8[] $$;

CREATE TABLE IF NOT EXISTS metrics_deployments_finished (
    kind    text   NOT NULL,
    state   text   NOT NULL,
    le      float8 NOT NULL,  -- the bucket's upper bound (Infinity: past the last bound)
    count   bigint NOT NULL DEFAULT 0,
    seconds float8 NOT NULL DEFAULT 0,  -- sum of the durations counted here
    PRIMARY KEY (kind, state, le)
);

CREATE OR REPLACE FUNCTION metrics_count_finished_deployment() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    took float8 := greatest(0, extract(epoch FROM
        coalesce(NEW.finished_at, now()) - coalesce(NEW.started_at, NEW.created_at)));
    bounds float8[] := metrics_duration_bounds();
BEGIN
    INSERT INTO metrics_deployments_finished AS m (kind, state, le, count, seconds)
    VALUES (NEW.kind, NEW.state,
            coalesce(bounds[width_bucket(took, bounds) + 1], 'Infinity'), 1, took)
    ON CONFLICT (kind, state, le)
    DO UPDATE SET count = m.count + 1, seconds = m.seconds + EXCLUDED.seconds;
    RETURN NULL;
END
$$;

-- Created once, with the deployments that finished before it counted in the same transaction
-- (CREATE TRIGGER locks out concurrent updates of deployments until the migration commits).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'metrics_count_finished_deployment') THEN
        INSERT INTO metrics_deployments_finished AS m (kind, state, le, count, seconds)
        SELECT kind, state, coalesce(b.bounds[width_bucket(took, b.bounds) + 1], 'Infinity'),
               count(*), sum(took)
        FROM (SELECT kind, state, greatest(0, extract(epoch FROM
                  finished_at - coalesce(started_at, created_at)))::float8 AS took
              FROM deployments
              WHERE state IN ('succeeded', 'failed', 'needs_operator')
                AND finished_at IS NOT NULL) d,
             (SELECT metrics_duration_bounds() AS bounds) b
        GROUP BY 1, 2, 3
        ON CONFLICT (kind, state, le)
        DO UPDATE SET count = m.count + EXCLUDED.count, seconds = m.seconds + EXCLUDED.seconds;
        CREATE TRIGGER metrics_count_finished_deployment
            AFTER UPDATE OF state ON deployments
            FOR EACH ROW
            WHEN (NEW.state IN ('succeeded', 'failed', 'needs_operator')
                  AND OLD.state IN ('queued', 'running'))
            EXECUTE FUNCTION metrics_count_finished_deployment();
    END IF;
END
$$;

-- Named counters: the stale check's transitions (`stale:agent_failed`: offline -> failed,
-- `stale:agent_recovered`: a failed agent came online after all, `stale:server_recovered`:
-- failed -> active) and failure reports of the boot script by step (`boot_failure:<step>`).
-- The stale ones are counted once per statement, from its transition tables, after all its
-- rows are locked: concurrent checkers cannot deadlock on a counter row.
CREATE TABLE IF NOT EXISTS metrics_counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL DEFAULT 0
);

CREATE OR REPLACE FUNCTION metrics_count(counter text, n bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO metrics_counters AS m (name, value) SELECT counter, n WHERE n > 0
    ON CONFLICT (name) DO UPDATE SET value = m.value + EXCLUDED.value;
$$;

CREATE OR REPLACE FUNCTION metrics_count_agent_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metrics_count('stale:agent_failed', (
        SELECT count(*) FROM old_rows o JOIN new_rows n USING (id)
        WHERE o.status <> 'failed' AND n.status = 'failed'));
    PERFORM metrics_count('stale:agent_recovered', (
        SELECT count(*) FROM old_rows o JOIN new_rows n USING (id)
        WHERE o.status = 'failed' AND n.status = 'online'));
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER metrics_count_agent_transitions
    AFTER UPDATE ON agents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_count_agent_transitions();

CREATE OR REPLACE FUNCTION metrics_count_server_transitions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metrics_count('stale:server_recovered', (
        SELECT count(*) FROM old_rows o JOIN new_rows n USING (id)
        WHERE o.status = 'failed' AND n.status = 'active'));
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER metrics_count_server_transitions
    AFTER UPDATE ON servers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION metrics_count_server_transitions();

CREATE OR REPLACE FUNCTION metrics_count_boot_failure() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM metrics_count('boot_failure:' || NEW.step, 1);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER metrics_count_boot_failure
    AFTER INSERT ON boot_steps
    FOR EACH ROW WHEN (NEW.event = 'failure')
    EXECUTE FUNCTION metrics_count_boot_failure();
-- (end of the metrics block)
