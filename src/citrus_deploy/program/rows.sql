-- The row providers' statements (citrus_deploy.program.rows). Parameters are %(name)s only.

-- name: insert_agent
-- A retried `up` may find its own row already there: ON CONFLICT makes the insert a no-op and
-- the caller compares what it finds.
INSERT INTO agents (id, key, status, name)
VALUES (%(id)s, %(key)s, 'offline', %(name)s)
ON CONFLICT (id) DO NOTHING;

-- name: select_agent
SELECT id::text AS id, key, status, name, created_at FROM agents WHERE id = %(id)s;

-- name: update_agent
-- Only what the program owns; status belongs to the hub and the stale check.
UPDATE agents SET key = %(key)s, name = %(name)s WHERE id = %(id)s
RETURNING id::text AS id, key, status, name, created_at;

-- name: delete_agent
DELETE FROM agents WHERE id = %(id)s;

-- name: insert_server
-- Names are unique in any case (servers_name_lower_key): a row of the same name, in this case
-- or another, makes the insert a no-op, and the caller compares the row it then finds.
INSERT INTO servers (name, digital_ocean_id, region, size, status, agent_id)
VALUES (%(name)s, %(digital_ocean_id)s, %(region)s, %(size)s, 'provisioning', %(agent_id)s)
ON CONFLICT (lower(name)) DO NOTHING;

-- name: select_server_by_name
-- The row holding the name in any case (its own name may differ in case).
SELECT id::text AS id, name, digital_ocean_id, region, size, status, agent_id::text AS agent_id, created_at
FROM servers WHERE lower(name) = lower(%(name)s);

-- name: select_server
SELECT id::text AS id, name, digital_ocean_id, region, size, status, agent_id::text AS agent_id, created_at
FROM servers WHERE id = %(id)s;

-- name: update_server
UPDATE servers
SET name = %(name)s, digital_ocean_id = %(digital_ocean_id)s, region = %(region)s, size = %(size)s,
    agent_id = %(agent_id)s
WHERE id = %(id)s
RETURNING id::text AS id, name, digital_ocean_id, region, size, status, agent_id::text AS agent_id, created_at;

-- name: delete_server
DELETE FROM servers WHERE id = %(id)s;
