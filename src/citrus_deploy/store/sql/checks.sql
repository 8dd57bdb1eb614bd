-- Read-only engine checks (store/checks.py, queue/checks.py). Parameters are %(name)s only.

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
       citrus_defer_job(%(queue)s, %(task_name)s, %(priority)s, %(server_name)s, NULL,
                        jsonb_build_object('check_id', c.id)) AS job_id
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
