-- Deployments: the one enqueue, what the worker records, what the API reads. `tail` =
-- characters of output to show. Parameters are %(name)s only.

-- name: insert_deployment
-- The one enqueue of an `up` or `destroy`, for the HTTP service and GitOps alike: the row and
-- its queue job in one statement, so an accepted request costs one round trip and one
-- (implicit) transaction, never a row without a job or a job without a row. The job goes
-- through citrus_defer_job, as `Task.defer` would, with lock = queueing lock = the name.
-- An `up` gets no row when a servers row already has this name in any case, unless `update`
-- (a GitOps apply: an `up` of an existing server updates it). A `destroy` runs with the config
-- of the name's last `up` (its agentName, size ...), else the given one, and gets no row when
-- the name has neither a servers row nor any deployment: there is nothing to destroy. The
-- partial unique index deployments_one_active (on lower(server_name)), or the job's queueing
-- lock, refuses a second queued/running one. `source`, `repository`, `commit`, `apply_id` say
-- where it came from ('http' and NULLs for the service).
WITH deployment AS (
    INSERT INTO deployments (server_name, kind, config, source, repository, commit, apply_id)
    SELECT %(server_name)s, %(kind)s,
           CASE WHEN %(kind)s = 'destroy'
                THEN coalesce((SELECT u.config FROM deployments u
                               WHERE u.server_name = %(server_name)s AND u.kind = 'up'
                               ORDER BY u.id DESC LIMIT 1), %(config)s)
                ELSE %(config)s END,
           %(source)s, %(repository)s, %(commit)s, %(apply_id)s
    WHERE CASE WHEN %(kind)s = 'up'
               THEN %(update)s
                    OR NOT EXISTS (SELECT FROM servers WHERE lower(name) = lower(%(server_name)s))
               ELSE EXISTS (SELECT FROM servers WHERE lower(name) = lower(%(server_name)s))
                    OR EXISTS (SELECT FROM deployments
                               WHERE lower(server_name) = lower(%(server_name)s))
          END
    RETURNING id, server_name, kind, state, config, outputs, error, attempts,
              created_at, started_at, updated_at, finished_at
)
SELECT d.*, '' AS output_tail,
       citrus_defer_job(%(queue)s, %(task_name)s, %(priority)s, %(server_name)s,
                        %(server_name)s, jsonb_build_object('deployment_id', d.id)) AS job_id
FROM deployment d;

-- name: name_insert_generated_up
-- A POST without a name: deployments_insert_generated_up (migrations/0002_deployments.sql)
-- inserts the deployment under the first free <server_base>[-n], with the `chosen` config
-- (region, size) besides its names; its job is written here as in insert_deployment, in the same statement. No row: no
-- free name among `tries`.
WITH deployment AS (
    SELECT id, server_name, kind, state, config, outputs, error, attempts,
           created_at, started_at, updated_at, finished_at
    FROM deployments_insert_generated_up(%(server_base)s, %(agent_base)s, %(tries)s, %(chosen)s)
)
SELECT d.*, '' AS output_tail,
       citrus_defer_job(%(queue)s, %(task_name)s, %(priority)s, d.server_name,
                        d.server_name, jsonb_build_object('deployment_id', d.id)) AS job_id
FROM deployment d;

-- name: name_holders
-- Who holds a refused name, in whatever case: its servers row, its queued/running deployment.
SELECT (SELECT name FROM servers WHERE lower(name) = lower(%(server_name)s)) AS server,
       (SELECT server_name FROM deployments
         WHERE lower(server_name) = lower(%(server_name)s) AND state IN ('queued', 'running'))
       AS deployment;

-- name: select_deployment
SELECT id, server_name, kind, state, config, outputs, error, right(output, %(tail)s) AS output_tail,
       job_id, attempts, created_at, started_at, updated_at, finished_at
FROM deployments WHERE id = %(id)s;

-- name: count_active_deployments
-- Deployments queued or running, counted on the partial index deployments_one_active and never
-- past the cap: cheap while the queue is short, bounded when it is full (CITRUS_MAX_QUEUED).
SELECT count(*) FROM (
    SELECT FROM deployments WHERE state IN ('queued', 'running') LIMIT %(cap)s
) AS active;

-- name: select_active_deployment
SELECT id, server_name, kind, state, config, outputs, error, right(output, %(tail)s) AS output_tail,
       job_id, attempts, created_at, started_at, updated_at, finished_at
FROM deployments WHERE server_name = %(server_name)s AND state IN ('queued', 'running');

-- name: select_last_finished_deployment
SELECT id, server_name, kind, state, config, outputs, error, right(output, %(tail)s) AS output_tail,
       job_id, attempts, created_at, started_at, updated_at, finished_at
FROM deployments WHERE server_name = %(server_name)s AND state IN ('succeeded', 'failed', 'needs_operator')
ORDER BY id DESC LIMIT 1;

-- name: select_last_up_outputs
SELECT outputs FROM deployments
WHERE server_name = %(server_name)s AND kind = 'up' AND state = 'succeeded'
ORDER BY id DESC LIMIT 1;

-- name: select_server_with_agent
-- The servers row and its agent. Without a servers row, the agent of the last successful `up`
-- (its agentId output) while that agents row exists: a destroy removes the servers row first,
-- so one that failed half-way leaves the agent, which must not show as gone (name is NULL then).
-- No row when neither exists.
SELECT s.name, s.digital_ocean_id, s.region, s.size, s.status, a.id::text AS agent_id,
       a.name AS agent_name, a.status AS agent_status, s.created_at
FROM (SELECT %(server_name)s::text AS name) wanted
LEFT JOIN servers s ON s.name = wanted.name
LEFT JOIN agents a ON a.id = coalesce(s.agent_id, (
    SELECT CASE WHEN d.outputs ->> 'agentId'
                     ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
                THEN (d.outputs ->> 'agentId')::uuid END
    FROM deployments d
    WHERE d.server_name = wanted.name AND d.kind = 'up' AND d.state = 'succeeded'
    ORDER BY d.id DESC LIMIT 1))
WHERE s.name IS NOT NULL OR a.id IS NOT NULL;

-- name: list_servers
-- Every name with a servers row or a deployment, except names whose last deployment was a
-- successful destroy and that have no row left.
WITH latest AS (
    SELECT DISTINCT ON (server_name) id, server_name, kind, state, error
    FROM deployments ORDER BY server_name, id DESC
)
SELECT coalesce(s.name, l.server_name) AS name, s.digital_ocean_id, s.region, s.size,
       s.status AS server_status, s.agent_id::text AS agent_id, a.name AS agent_name,
       a.status AS agent_status,
       l.id AS deployment_id, l.kind AS deployment_kind, l.state AS deployment_state,
       l.error AS deployment_error,
       (SELECT d.outputs ->> 'ipv4Address' FROM deployments d
         WHERE d.server_name = coalesce(s.name, l.server_name) AND d.kind = 'up'
           AND d.state = 'succeeded' ORDER BY d.id DESC LIMIT 1) AS ipv4_address
FROM servers s
FULL OUTER JOIN latest l ON l.server_name = s.name
LEFT JOIN agents a ON a.id = s.agent_id
WHERE NOT (s.name IS NULL AND l.kind = 'destroy' AND l.state = 'succeeded')
ORDER BY 1
LIMIT %(limit)s OFFSET %(offset)s;

-- name: start_attempt
-- A worker takes the deployment; a row already finished is left alone (no row returned).
UPDATE deployments
SET state = 'running', attempts = attempts + 1, job_id = %(job_id)s,
    started_at = coalesce(started_at, now()), updated_at = now(), heartbeat_at = now()
WHERE id = %(id)s AND state IN ('queued', 'running')
RETURNING id, server_name, kind, state, config, outputs, error, '' AS output_tail, job_id, attempts,
          created_at, started_at, updated_at, finished_at;

-- name: beat_deployment
-- The attempt's own liveness, written by the worker running it (see recover_stalled_jobs).
UPDATE deployments SET heartbeat_at = now() WHERE id = %(id)s AND state = 'running';

-- name: deployment_alive
-- Whether the running attempt beat within the last `seconds`. Just after the database itself
-- restarted every beat is old, and says nothing of the worker: give them time to beat again.
SELECT state = 'running'
       AND (heartbeat_at > now() - make_interval(secs => %(seconds)s)
            OR pg_postmaster_start_time() > now() - make_interval(secs => 2 * %(seconds)s))
       AS alive
FROM deployments WHERE id = %(id)s;

-- name: append_output
-- Keeps the last 1 MiB of output.
UPDATE deployments SET output = right(output || %(text)s, 1048576), updated_at = now()
WHERE id = %(id)s;

-- name: succeed_deployment
-- program_hash: of the program the worker ran (an `up`); NULL keeps what the row holds.
UPDATE deployments
SET state = 'succeeded', outputs = %(outputs)s, error = NULL,
    program_hash = coalesce(%(program_hash)s, program_hash), finished_at = now(), updated_at = now()
WHERE id = %(id)s AND state = 'running';

-- name: fail_deployment
UPDATE deployments SET state = 'failed', error = %(error)s, finished_at = now(), updated_at = now()
WHERE id = %(id)s AND state IN ('queued', 'running')
RETURNING server_name;

-- name: needs_operator_deployment
-- A killed update left its stack locked or with pending operations: not retried, not remediated.
UPDATE deployments SET state = 'needs_operator', error = %(error)s, finished_at = now(), updated_at = now()
WHERE id = %(id)s AND state IN ('queued', 'running')
RETURNING server_name;

-- name: fail_server
-- A failed deployment leaves its server 'failed' (when the droplet got that far).
UPDATE servers SET status = 'failed' WHERE name = %(server_name)s AND status <> 'failed';

-- name: requeue_deployment
-- A transient failure: the job is retried later, the record says why it is waiting.
UPDATE deployments
SET state = 'queued', error = %(error)s, output = right(output || %(text)s, 1048576), updated_at = now()
WHERE id = %(id)s AND state = 'running';

-- name: interrupt_deployment
-- The attempt's worker stopped sending heartbeats; only the attempt that was running is marked.
UPDATE deployments
SET state = 'queued', error = %(error)s, output = right(output || %(text)s, 1048576), updated_at = now()
WHERE id = %(id)s AND state = 'running' AND attempts = %(attempts)s
RETURNING id;

-- name: select_failed_servers_without_deployment
-- Remediation candidates, with nothing queued or running for their name: servers rows marked
-- 'failed' whose agent is not 'online' (a server whose agent is online is never destroyed: a
-- late agent makes the stale check set it 'active'), and names whose last deployment (failed
-- destroys aside) is a failed `up` that never wrote its servers row (its stack may still hold a
-- droplet and an agent row; the API lists it as failed too). A name whose destroy keeps failing
-- backs off: after n failed destroys in a row it waits backoff * 2^(n-1) seconds, at most
-- backoff_max, from the last one. Only a list: remediate_enqueue_destroy decides again for each.
WITH settled AS (
    SELECT DISTINCT ON (server_name) server_name, id, kind, state
    FROM deployments
    WHERE NOT (kind = 'destroy' AND state = 'failed')
    ORDER BY server_name, id DESC
), candidates AS (
    SELECT s.name FROM servers s JOIN agents a ON a.id = s.agent_id
    WHERE s.status = 'failed' AND a.status <> 'online'
    UNION
    SELECT l.server_name FROM settled l
    WHERE l.kind = 'up' AND l.state = 'failed'
      AND NOT EXISTS (SELECT 1 FROM servers s WHERE s.name = l.server_name)
)
SELECT c.name FROM candidates c
CROSS JOIN LATERAL (
    SELECT count(*) AS n, max(d.finished_at) AS last_at
    FROM deployments d
    WHERE d.server_name = c.name AND d.kind = 'destroy' AND d.state = 'failed'
      AND d.id > coalesce((SELECT l.id FROM settled l WHERE l.server_name = c.name), 0)
) failed_destroys
WHERE NOT EXISTS (SELECT 1 FROM deployments d
                  WHERE d.server_name = c.name AND d.state IN ('queued', 'running'))
  AND (failed_destroys.n = 0
       OR failed_destroys.last_at + make_interval(secs => least(
              %(backoff)s * 2 ^ least(failed_destroys.n - 1, 30), %(backoff_max)s)) <= now())
ORDER BY c.name LIMIT %(limit)s;

-- name: remediate_enqueue_destroy
-- Remediation's destroy of one candidate, queued only if, when this statement runs, the name's
-- servers row is still 'failed' and its agent not 'online', or the name has no servers row (a
-- failed `up` that never wrote it). The decision and the enqueue are one statement, and the
-- server's and agent's rows are locked FOR SHARE while it decides: a hub's UPDATE to 'online'
-- (or the stale check making the server 'active') that is in flight is waited for and then
-- seen (the rows are checked again in their new version), and one that comes later waits until
-- the destroy is queued. No row returned: not queued. Otherwise as insert_deployment, with the
-- config of the name's last `up`.
WITH server AS MATERIALIZED (
    SELECT s.id FROM servers s JOIN agents a ON a.id = s.agent_id
    WHERE s.name = %(server_name)s AND s.status = 'failed' AND a.status <> 'online'
    FOR SHARE OF s, a
), deployment AS (
    INSERT INTO deployments (server_name, kind, config)
    SELECT %(server_name)s, 'destroy',
           coalesce((SELECT u.config FROM deployments u
                     WHERE u.server_name = %(server_name)s AND u.kind = 'up'
                     ORDER BY u.id DESC LIMIT 1),
                    jsonb_build_object('serverName', %(server_name)s::text))
    WHERE EXISTS (SELECT FROM server)
       OR NOT EXISTS (SELECT FROM servers WHERE name = %(server_name)s)
    RETURNING id, server_name, kind, state, config, outputs, error, attempts,
              created_at, started_at, updated_at, finished_at
)
SELECT d.*, '' AS output_tail,
       citrus_defer_job(%(queue)s, %(task_name)s, %(priority)s, %(server_name)s,
                        %(server_name)s, jsonb_build_object('deployment_id', d.id)) AS job_id
FROM deployment d;
