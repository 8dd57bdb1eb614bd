-- 0007: the operator console's sign-outs and its secret.
-- One of the baseline migrations (0001-0007): the schema as it stood when numbered migrations
-- began, written idempotently, so it also brings a database of an earlier release up to date.

-- -- The operator console's sign-outs (web/console) ------------------
-- A console session is a signed cookie; signing out records its id here until the session's own
-- expiry, so a copy of the cookie is refused by every web process. Each signed-in request looks
-- its id up by primary key; a sign-out deletes the expired rows (by the expires_at index).
CREATE TABLE IF NOT EXISTS console_signouts (
    session_id text        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS console_signouts_expires_at ON console_signouts (expires_at);
-- (end of the console block)

-- -- The operator console's signing secret (web/console) ---------------
-- One random row, made by the first web process that needs it. Every web process reads it once
-- and signs the console's cookies with scrypt(ADMIN_TOKEN, salt = secret): a cookie no longer
-- lets the token be guessed offline, sessions hold across web processes, and a new ADMIN_TOKEN
-- still signs everyone out. Deleting the row and restarting the web processes does too.
CREATE TABLE IF NOT EXISTS console_secret (
    id         boolean     PRIMARY KEY DEFAULT true CONSTRAINT console_secret_one CHECK (id),
    secret     bytea       NOT NULL CONSTRAINT console_secret_32_bytes CHECK (length(secret) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- (end of the console secret block)
