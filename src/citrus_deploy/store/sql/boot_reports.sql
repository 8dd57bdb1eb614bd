-- Boot reports (store/boot_reports.py). Parameters are %(name)s only.

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
