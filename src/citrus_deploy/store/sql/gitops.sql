-- GitOps: applies, their deployments, and who manages each server (the view server_ownership,
-- migrations/0003_gitops.sql). Parameters are %(name)s only.

-- name: select_deployed
-- Every name someone manages, or with a deployment queued or running; free names (destroyed,
-- no servers row) are left out. One pass over the whole fleet. The columns are in the order of
-- store.ownership.Deployed's fields, which is built from each row as it comes.
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
