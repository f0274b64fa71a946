-- reconix observed state, schema version 6: revocations that stick, and operators admitting
-- agents again.
--
-- Append-only: never edit this file once released; add 007_*.sql instead.

-- While `revoked_at` is set, no key may enrol under the agent's name (not even with the
-- enrollment token). `reconix builders admit NAME` clears it and records when and by whom
-- (`admitted_at`, `admitted_by`: the operator's OS user name, or "operator").
ALTER TABLE agents ADD COLUMN revoked_by TEXT;
ALTER TABLE agents ADD COLUMN admitted_at INTEGER;
ALTER TABLE agents ADD COLUMN admitted_by TEXT;

-- Every key ever revoked. Such a key is refused for good, whatever token comes with it and
-- even after its name is admitted again: the agent has to make a new key.
CREATE TABLE revoked_keys (
    key_fingerprint TEXT PRIMARY KEY,
    name            TEXT NOT NULL,  -- the agent it belonged to when it was revoked
    revoked_at      INTEGER NOT NULL,
    revoked_by      TEXT
) STRICT, WITHOUT ROWID;

-- Agents revoked before this version: their keys stay refused (revoking used to last only
-- until the next enrolment with a token).
INSERT INTO revoked_keys (key_fingerprint, name, revoked_at)
    SELECT key_fingerprint, name, revoked_at FROM agents WHERE revoked_at IS NOT NULL;
