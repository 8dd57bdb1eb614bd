-- The service's, GitOps' and the metrics' statements. Parameters are %(name)s only.

-- ---------------------------------------------------------------------------------------------
-- The HTTP service: deployments (service/deployments.py). `tail` = characters of output to show.

-- name: insert_deployment
-- The deployment row and its queue job in one statement, so an accepted POST costs one round
-- trip and one (implicit) transaction: never a row without a job or a job without a row.
-- An 'up' gets no row when a servers row already has this name in any case; the partial
-- unique index deployments_one_active (on lower(server_name)), or the job's queueing lock,
-- refuses a second queued/running one. The job goes through procrastinate's own defer
-- function, as `Task.defer` would.
WITH deployment AS (
    INSERT INTO deployments (server_name, kind, config)
    SELECT %(server_name)s, %(kind)s, %(config)s
    WHERE %(kind)s = 'destroy'
       OR NOT EXISTS (SELECT 1 FROM servers WHERE lower(name) = lower(%(server_name)s))
    RETURNING id, server_name, kind, state, config, outputs, error, attempts,
              created_at, started_at, updated_at, finished_at
)
SELECT d.*, '' AS output_tail,
       (procrastinate_defer_jobs_v1(ARRAY[ROW(
           %(queue)s, %(task_name)s, %(priority)s, %(server_name)s, %(server_name)s,
           jsonb_build_object('deployment_id', d.id), NULL
       )::procrastinate_job_to_defer_v1]))[1] AS job_id
FROM deployment d;

-- name: name_insert_generated_up
-- A POST without a name: deployments_insert_generated_up (db/schema.sql) inserts the deployment
-- under the first free <server_base>[-n], with the `chosen` config (region, size) besides its
-- names; its job is written here as in insert_deployment, in the same statement. No row: no
-- free name among `tries`.
WITH deployment AS (
    SELECT id, server_name, kind, state, config, outputs, error, attempts,
           created_at, started_at, updated_at, finished_at
    FROM deployments_insert_generated_up(%(server_base)s, %(agent_base)s, %(tries)s, %(chosen)s)
)
SELECT d.*, '' AS output_tail,
       (procrastinate_defer_jobs_v1(ARRAY[ROW(
           %(queue)s, %(task_name)s, %(priority)s, d.server_name, d.server_name,
           jsonb_build_object('deployment_id', d.id), NULL
       )::procrastinate_job_to_defer_v1]))[1] AS job_id
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
       (procrastinate_defer_jobs_v1(ARRAY[ROW(
           %(queue)s, %(task_name)s, %(priority)s, %(server_name)s, %(server_name)s,
           jsonb_build_object('deployment_id', d.id), NULL
       )::procrastinate_job_to_defer_v1]))[1] AS job_id
FROM deployment d;

-- ---------------------------------------------------------------------------------------------
-- GitOps (gitops/state.py): applies, their deployments, and who manages each server (the view
-- server_ownership in db/schema.sql).

-- name: insert_gitops_deployment
-- A GitOps apply's `up` or `destroy`, enqueued as insert_deployment does (the row and its job in
-- one statement, the job through procrastinate's defer function with lock = queueing_lock =
-- the name), so a worker cannot tell the difference; the row also records where it came from.
-- Unlike HTTP, an `up` of a name whose servers row exists is accepted: it is an update of that
-- server. deployments_one_active and the queueing lock still refuse a second queued/running
-- deployment of the name in any case. A `destroy` runs with the config of the name's last `up`
-- (its agentName, size ...), else the given one, and gets no row when the name has neither a
-- servers row nor any deployment: there is nothing to destroy.
WITH deployment AS (
    INSERT INTO deployments (server_name, kind, config, source, repository, commit, apply_id)
    SELECT %(server_name)s, %(kind)s,
           CASE WHEN %(kind)s = 'destroy'
                THEN coalesce((SELECT u.config FROM deployments u
                               WHERE u.server_name = %(server_name)s AND u.kind = 'up'
                               ORDER BY u.id DESC LIMIT 1), %(config)s)
                ELSE %(config)s END,
           'gitops', %(repository)s, %(commit)s, %(apply_id)s
    WHERE %(kind)s = 'up'
       OR EXISTS (SELECT FROM servers WHERE lower(name) = lower(%(server_name)s))
       OR EXISTS (SELECT FROM deployments WHERE lower(server_name) = lower(%(server_name)s))
    RETURNING id, server_name, kind, state, config, outputs, error, attempts,
              created_at, started_at, updated_at, finished_at
)
SELECT d.*, '' AS output_tail,
       (procrastinate_defer_jobs_v1(ARRAY[ROW(
           %(queue)s, %(task_name)s, %(priority)s, %(server_name)s, %(server_name)s,
           jsonb_build_object('deployment_id', d.id), NULL
       )::procrastinate_job_to_defer_v1]))[1] AS job_id
FROM deployment d;

-- name: select_deployed
-- Every name someone manages, or with a deployment queued or running; free names (destroyed,
-- no servers row) are left out. One pass over the whole fleet. The columns are in the order of
-- gitops.state.Deployed's fields, which is built from each row as it comes.
SELECT name, managed_by, repository, server_status, agent_status, droplet_id, applied_config,
       applied_commit, applied_program, attempted_commit, last_kind, last_state, last_error, active,
       region, size
FROM server_ownership
WHERE managed_by IS NOT NULL OR active;

-- name: select_ownership
-- The same for the given names (lowercase keys): the filter reaches the view's index scans.
SELECT key, name, managed_by, repository, server_status, agent_status, droplet_id,
       applied_config, applied_commit, applied_program, attempted_commit, last_kind, last_state,
       last_error, active, region, size
FROM server_ownership
WHERE key = ANY (%(keys)s::text[]);

-- name: insert_gitops_apply
INSERT INTO gitops_applies (repository, commit, plan)
VALUES (%(repository)s, %(commit)s, %(plan)s)
RETURNING id;

-- name: finish_gitops_apply
UPDATE gitops_applies SET outcome = %(outcome)s, finished_at = now()
WHERE id = %(id)s
RETURNING id;

-- name: select_apply_deployments
SELECT id, server_name, kind, state, error
FROM deployments WHERE apply_id = %(apply_id)s
ORDER BY id;

-- name: select_last_apply
SELECT id FROM gitops_applies
WHERE repository = %(repository)s AND commit = %(commit)s
ORDER BY id DESC LIMIT 1;

-- ---------------------------------------------------------------------------------------------
-- The stale-agent check (service/stale.py). One statement per transition; each is safe when
-- several run at once: a row already changed no longer matches and is skipped.

-- name: stale_recover_failed_servers
-- Servers awaiting an agent the check failed (servers_awaiting_agent rows marked `failed`)
-- whose agent has connected since: the hub set it 'online', so the server becomes 'active' and
-- stops being awaited; unless its last deployment failed (the deployment, not the agent, made
-- it 'failed': it stays so, and is no longer awaited). The marked rows are the failed servers
-- not yet destroyed, few next to the fleet; their agents are looked up by primary key, all in
-- one index scan (`= ANY (ARRAY(...))`): a join would let the planner hash every agent, nearly
-- all 'online', and a subquery per row would be costed high enough to be JIT-compiled.
WITH marked AS MATERIALIZED (
    SELECT server_id, agent_id FROM servers_awaiting_agent WHERE failed
), connected AS (
    SELECT m.server_id
    FROM marked m
    JOIN (SELECT a.id FROM agents a
          WHERE a.id = ANY (ARRAY(SELECT agent_id FROM marked)) AND a.status = 'online'
          OFFSET 0) online
      ON online.id = m.agent_id
), recovered AS (
    DELETE FROM servers_awaiting_agent w
    WHERE w.server_id = ANY (ARRAY(SELECT server_id FROM connected)) AND w.failed
    RETURNING w.server_id
)
UPDATE servers s SET status = 'active'
WHERE s.id = ANY (ARRAY(SELECT server_id FROM recovered)) AND s.status = 'failed'
  AND coalesce((SELECT d.state FROM deployments d
                WHERE d.server_name = s.name AND d.state IN ('succeeded', 'failed', 'needs_operator')
                ORDER BY d.id DESC LIMIT 1), 'succeeded') = 'succeeded'
RETURNING s.name;

-- name: fail_stale_agents
-- Agents still 'offline' after the timeout become 'failed', and their servers still
-- 'provisioning' with them, in one statement (never one without the other). The agents side
-- uses the partial index agents_offline_created_at; the servers are found through
-- servers_awaiting_agent, whose rows stay, marked `failed` for stale_recover_failed_servers
-- (found and marked in one pass; marking is HOT, no index mentions the column), and changed by
-- primary key, HOT: no index mentions servers.status. `= ANY (ARRAY(...))` keeps each side an
-- index scan whatever the planner guesses of the CTE's size.
-- An agent whose `up` is queued or running is left alone: the provider writes the agent row
-- first and the server row only once the droplet exists, and an `up` retried after a transient
-- failure keeps the agent row of its first attempt. The agent is named as the program names it
-- (agentName, else agent-<server name>); the few names in flight come from the partial unique
-- index deployments_one_active. Once the `up` has finished, the timeout counts from the agent
-- row as before.
-- Each failed agent comes with its last boot report (NULLs: none arrived), for the verdict the
-- check records in the same transaction (insert_stale_boot_steps), instead of looking the
-- agents up again by name (agents.name has no index) afterwards. The last row's id of each
-- agent comes from an index-only scan of boot_steps_agent_id, and only those rows are read:
-- a LATERAL probe per agent is costed high enough to be JIT-compiled (30 ms more for the
-- 10,000 agents of bench/stale_check.py), and sorting every report of each would sort their
-- log tails. That last row may be the agent's verdict from an earlier failure (set offline by
-- hand since): then the new verdict is dropped anyway (boot_steps_one_stale).
WITH failed AS (
    UPDATE agents SET status = 'failed'
    WHERE status = 'offline' AND created_at < now() - make_interval(secs => %(timeout_seconds)s)
      AND name <> ALL (ARRAY(
          SELECT coalesce(d.config ->> 'agentName', 'agent-' || d.server_name)
          FROM deployments d WHERE d.state IN ('queued', 'running')))
    RETURNING id, name
), marked AS (
    UPDATE servers_awaiting_agent SET failed = true
    WHERE agent_id = ANY (ARRAY(SELECT id FROM failed)) AND NOT failed
    RETURNING server_id
), failed_servers AS (
    UPDATE servers SET status = 'failed'
    WHERE id = ANY (ARRAY(SELECT server_id FROM marked)) AND status = 'provisioning'
    RETURNING name
), last_reports AS (
    SELECT b.agent_id, b.step, b.label, b.event, b.tail FROM boot_steps b
    WHERE b.id = ANY (ARRAY(
        SELECT max(l.id) FROM boot_steps l
        WHERE l.agent_id = ANY (ARRAY(SELECT id FROM failed)) GROUP BY l.agent_id))
)
SELECT 'agent' AS kind, f.name, f.id AS agent_id, r.step, r.label, r.event, r.tail
FROM failed f LEFT JOIN last_reports r ON r.agent_id = f.id
UNION ALL
SELECT 'server', name, NULL, NULL, NULL, NULL, NULL FROM failed_servers;

-- name: settle_provisioning_servers
-- Servers awaiting an agent that is no longer 'offline': 'online' -> 'active', 'failed' ->
-- 'failed' (a server row written after its agent had already failed; its awaiting row stays,
-- marked, in case the agent connects after all). Which agents are still offline comes from the
-- partial index agents_offline_created_at, so no agent is looked up until its server is known
-- to settle (OFFSET 0 keeps that set a scan of the partial index rather than one agents_pkey
-- lookup per awaiting server). A server no longer 'provisioning' (its deployment failed, or
-- another checker got there first) keeps its status and its unmarked row is removed; a row
-- another checker marked meanwhile is kept (NOT failed is checked again on the locked row).
WITH settling AS (
    SELECT q.server_id
    FROM servers_awaiting_agent q
    LEFT JOIN (SELECT id FROM agents WHERE status = 'offline' OFFSET 0) offline
           ON offline.id = q.agent_id
    WHERE offline.id IS NULL AND NOT q.failed
), settled AS (
    UPDATE servers s
    SET status = CASE (SELECT a.status FROM agents a WHERE a.id = s.agent_id)
                     WHEN 'online' THEN 'active' ELSE 'failed' END
    WHERE s.id = ANY (ARRAY(SELECT server_id FROM settling)) AND s.status = 'provisioning'
    RETURNING s.id, s.name, s.status
), marked AS (
    UPDATE servers_awaiting_agent SET failed = true
    WHERE server_id = ANY (ARRAY(SELECT id FROM settled WHERE status = 'failed'))
), removed AS (
    DELETE FROM servers_awaiting_agent
    WHERE server_id = ANY (ARRAY(SELECT server_id FROM settling)) AND NOT failed
      AND server_id <> ALL (ARRAY(SELECT id FROM settled WHERE status = 'failed'))
)
SELECT name, status FROM settled;

-- ---------------------------------------------------------------------------------------------
-- Read-only engine checks (service/checks.py).

-- name: insert_check
-- The check and its job in one statement, as insert_deployment: the job's lock is the server
-- name (never alongside that server's up/destroy), with no queueing lock, so a queued check
-- never refuses a deployment and any number of checks may wait.
WITH inserted AS (
    INSERT INTO checks (server_name, kind, config)
    VALUES (%(server_name)s, %(kind)s, %(config)s)
    RETURNING id, server_name, kind, config, state, result, error, attempts, created_at,
              started_at, finished_at
)
SELECT c.*,
       (procrastinate_defer_jobs_v1(ARRAY[ROW(
           %(queue)s, %(task_name)s, %(priority)s, %(server_name)s, NULL,
           jsonb_build_object('check_id', c.id), NULL
       )::procrastinate_job_to_defer_v1]))[1] AS job_id
FROM inserted c;

-- name: select_check
SELECT id, server_name, kind, config, state, result, error, attempts, created_at, started_at,
       finished_at
FROM checks WHERE id = %(id)s;

-- name: select_finished_checks
-- Those of the checks `ids` that have finished: one round trip however many a command waits for.
SELECT id, server_name, kind, config, state, result, error, attempts, created_at, started_at,
       finished_at
FROM checks WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('succeeded', 'failed');

-- name: start_check
-- No row: the check is already finished (a retried job of a check that ended).
UPDATE checks
SET state = 'running', attempts = attempts + 1, started_at = now(), error = NULL
WHERE id = %(id)s AND state IN ('queued', 'running')
RETURNING id, server_name, kind, config, attempts;

-- name: finish_check
UPDATE checks
SET state = %(state)s, result = %(result)s, error = %(error)s, finished_at = now()
WHERE id = %(id)s;

-- name: requeue_check
UPDATE checks SET state = 'queued', error = %(error)s WHERE id = %(id)s;

-- ---------------------------------------------------------------------------------------------
-- Boot reports (service/boot_reports.py).

-- name: select_agent_key
SELECT key FROM agents WHERE id = %(agent_id)s;

-- name: lock_boot_steps_of_agent
-- Reports of one agent are recorded one at a time (till the transaction ends), so that
-- concurrent ones cannot pass the caps together.
SELECT pg_advisory_xact_lock(hashtextextended('boot_steps:' || %(agent_id)s::text, 0));

-- name: count_boot_steps_of_agent
-- Whether this exact report is recorded, and the agent's reports in all and in the last minute.
SELECT EXISTS (SELECT FROM boot_steps WHERE agent_id = %(agent_id)s AND signature = %(signature)s),
       count(*) FILTER (WHERE event <> 'stale'),
       count(*) FILTER (WHERE event <> 'stale' AND received_at > now() - interval '1 minute')
FROM boot_steps WHERE agent_id = %(agent_id)s;

-- name: insert_boot_step
-- No row returned: the same report was recorded meanwhile.
INSERT INTO boot_steps (agent_id, boot_id, seq, step, label, event, exit_code, tail,
                        reported_at, signed_at, signature)
VALUES (%(agent_id)s, %(boot_id)s, %(seq)s, %(step)s, %(label)s, %(event)s, %(exit_code)s,
        %(tail)s, to_timestamp(%(reported_at)s), to_timestamp(%(signed_at)s), %(signature)s)
ON CONFLICT (agent_id, signature) DO NOTHING
RETURNING id;

-- name: select_boot_steps
-- The agent's last `limit` steps, oldest first.
SELECT step, label, event, exit_code, tail, reported_at, received_at FROM (
    SELECT id, step, label, event, exit_code, tail, reported_at, received_at
    FROM boot_steps WHERE agent_id = %(agent_id)s ORDER BY id DESC LIMIT %(limit)s
) last ORDER BY id;

-- name: insert_stale_boot_steps
-- The stale check's verdicts, all in one statement, in the transaction that failed the agents
-- (so an agent is never failed without its verdict, and none is written for an agent the hub
-- set online meanwhile). Row i is agent_ids[i] with steps[i] and labels[label_of[i]]: the few
-- distinct verdicts travel once, not once per agent. An agent failed before (set offline again
-- by hand, then failed again) keeps its first verdict (boot_steps_one_stale). The per-agent
-- arrays travel in binary (their placeholders end in `b`, not `s`): as text, psycopg quotes
-- 10,000 elements one by one, a sixth of the statement's time in bench/stale_check.py.
INSERT INTO boot_steps (agent_id, boot_id, seq, step, label, event, reported_at, signed_at)
SELECT v.agent_id, '', 0, v.step, (%(labels)s::text[])[v.label_of], 'stale', now(), now()
FROM unnest(%(agent_ids)b::uuid[], %(steps)b::text[], %(label_of)b::int[])
     AS v (agent_id, step, label_of)
ON CONFLICT (agent_id) WHERE event = 'stale' DO NOTHING;

-- ---------------------------------------------------------------------------------------------
-- Metrics (service/metrics.py): everything GET /metrics shows, in one statement (one round
-- trip). Deployments still queued or running are counted on their partial index; finished ones
-- and the transitions come from the counters db/schema.sql's metrics block keeps; agents and
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
