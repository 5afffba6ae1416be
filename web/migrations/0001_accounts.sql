-- The dashboard's own store: accounts, sessions, one-time login links,
-- enrolment requests and operator settings. Separate from the engine's
-- database: the dashboard never writes there. Times are Unix ms of real
-- (wall-clock) time; tokens are stored only as SHA-256 hex digests, so a
-- copy of this file does not let anyone log in.

CREATE TABLE accounts (
    username      TEXT PRIMARY KEY NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('household', 'operator')),
    household     TEXT,
    password_hash TEXT,
    created_at    INTEGER NOT NULL,
    CHECK ((role = 'household') = (household IS NOT NULL))
) WITHOUT ROWID;

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY NOT NULL,
    username   TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX sessions_expiry ON sessions(expires_at);

CREATE TABLE login_links (
    token_hash TEXT PRIMARY KEY NOT NULL,
    username   TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) WITHOUT ROWID;

CREATE TABLE enrolment_requests (
    id           INTEGER PRIMARY KEY,
    household    TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    meters       TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    created_at   INTEGER NOT NULL,
    decided_at   INTEGER,
    decided_by   TEXT
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
