-- The stale-agent check (queue/stale.py). Parameters are %(name)s only.

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
