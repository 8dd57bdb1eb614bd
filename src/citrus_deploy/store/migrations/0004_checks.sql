-- 0004: read-only engine checks (preview, refresh --preview-only).
-- One of the baseline migrations (0001-0007): the schema as it stood when numbered migrations
-- began, written idempotently, so it also brings a database of an earlier release up to date.

-- ---------------------------------------------------------------------------------------------
-- Read-only engine checks (issue 10, queue/checks.py): `pulumi preview` and `pulumi refresh
-- --preview-only` of one stack, run by the queue's workers for `gitops plan --preview` and
-- `gitops drift`. One row per check; its job is serialised with the server's up/destroy (same
-- procrastinate lock) but never refused by their queueing lock. `result` is the deployer's
-- result (service.deployer.preview_result / refresh_result), secrets never in it.
CREATE TABLE IF NOT EXISTS checks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server_name text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('preview', 'refresh')),
    config      jsonb NOT NULL DEFAULT '{}',
    state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    result      jsonb,
    error       text,
    attempts    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
-- (end of the checks block)
