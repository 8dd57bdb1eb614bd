-- What the operator console (web/console/) reads and records besides the store's readers.
-- Parameters are %(name)s only.

-- name: console_fleet_details
-- Region, size and the last deployment's times of the names deployments.list_servers returned
-- (`names` and `ids` side by side: a name and its last deployment's id, or NULL).
SELECT n.name, s.region, s.size, d.created_at, d.finished_at
FROM unnest(%(names)s::text[], %(ids)s::bigint[]) AS n(name, deployment_id)
LEFT JOIN servers s ON s.name = n.name
LEFT JOIN deployments d ON d.id = n.deployment_id;

-- name: console_deployments_of
-- The server's last `limit` deployments, newest first, without their output.
SELECT id, kind, state, error, attempts, created_at, started_at, finished_at
FROM deployments WHERE server_name = %(server_name)s
ORDER BY id DESC LIMIT %(limit)s;

-- name: console_output_start
-- Where a page's output stream starts: the length of the output, and the tail the page shows.
SELECT state, length(output) AS length, right(output, %(tail)s) AS tail
FROM deployments WHERE id = %(id)s;

-- name: console_output_since
-- The output a stream has not sent yet: at most `max` characters after the first `from`.
SELECT state, length(output) AS length, updated_at, substr(output, %(from)s + 1, %(max)s) AS more
FROM deployments WHERE id = %(id)s;

-- name: console_sign_out
-- Records a signed-out session until its own expiry (its cookie is refused after that anyway),
-- and deletes the rows whose sessions have expired, so the table stays as small as the sign-outs
-- of one session lifetime.
WITH expired AS (DELETE FROM console_signouts WHERE expires_at <= now())
INSERT INTO console_signouts (session_id, expires_at)
VALUES (%(session_id)s, to_timestamp(%(expires)s))
ON CONFLICT (session_id) DO NOTHING;

-- name: console_signed_out
-- Whether a session was signed out: one primary-key lookup, on every signed-in request.
SELECT EXISTS (SELECT FROM console_signouts WHERE session_id = %(session_id)s) AS signed_out;

-- name: console_signed_out_among
-- Which of the sessions with a live fleet view open were signed out (the fleet poller's check).
SELECT session_id FROM console_signouts WHERE session_id = ANY(%(session_ids)s::text[]);

-- name: console_secret
-- The random secret the cookies' key is derived from (web/console/sessions.py, signing_key):
-- made in the database, never sent to it, by the first web process to ask; the others get that
-- row (DO UPDATE changes nothing, and returns the row even when it was committed meanwhile).
INSERT INTO console_secret (secret)
VALUES (sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())))
ON CONFLICT (id) DO UPDATE SET id = console_secret.id
RETURNING secret;

-- name: console_gitops_last_applies
-- The last `citrus-deploy gitops apply` of each repository (web/console/folders.py).
SELECT DISTINCT ON (repository) id, repository, commit, started_at, finished_at, outcome
FROM gitops_applies
ORDER BY repository, id DESC;

-- name: console_gitops_apply_deployments
-- The deployments of those applies, in the order the rollout queued them (its waves).
SELECT apply_id, id, server_name, kind, state, error, created_at, finished_at
FROM deployments
WHERE apply_id = ANY (%(ids)s::bigint[])
ORDER BY apply_id, id;

-- name: console_gitops_drift
-- Each GitOps server's last finished drift check (a refresh check, `gitops drift`), and whether
-- it found a resource deleted or changed outside Pulumi (as gitops.drift.describe reads it).
SELECT o.repository, o.name, c.id AS check_id, c.state, c.error, c.finished_at,
       CASE WHEN jsonb_typeof(c.result -> 'steps') = 'array' THEN EXISTS (
           SELECT FROM jsonb_array_elements(c.result -> 'steps') AS step
           WHERE step ->> 'op' IN ('delete', 'update')
       ) ELSE false END AS drifted
FROM server_ownership o
JOIN LATERAL (
    SELECT id, state, error, finished_at, result FROM checks
    WHERE lower(server_name) = o.key AND kind = 'refresh' AND state IN ('succeeded', 'failed')
    ORDER BY id DESC LIMIT 1
) c ON true
WHERE o.managed_by = 'gitops'
ORDER BY o.repository, o.name;
