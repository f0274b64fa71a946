-- reconix observed state, schema version 3: remote builders (agents).
--
-- Append-only: never edit this file once released; add 004_*.sql instead.

-- One row per enrolled agent. The key fingerprint is what later connections authenticate with;
-- revoking sets `revoked_at`, after which the key is refused until the agent enrols again with
-- a token (which replaces the row's key and clears `revoked_at`).
CREATE TABLE agents (
    name              TEXT PRIMARY KEY,
    key_fingerprint   TEXT NOT NULL,
    systems           TEXT NOT NULL DEFAULT '[]',  -- JSON array of systems
    features          TEXT NOT NULL DEFAULT '[]',  -- JSON array of features
    max_jobs          INTEGER NOT NULL CHECK (max_jobs > 0),
    enrolled_at       INTEGER NOT NULL,
    revoked_at        INTEGER,
    connected_at      INTEGER,                     -- NULL while disconnected
    last_heartbeat_at INTEGER,
    running           INTEGER NOT NULL DEFAULT 0 CHECK (running >= 0)
) STRICT;
CREATE UNIQUE INDEX agents_key ON agents (key_fingerprint);
