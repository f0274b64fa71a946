-- reconix observed state: builds that wait for their machine (a full or failing state
-- directory or store) instead of failing.
--
-- Append-only: never edit this file once released; add a new numbered file instead.

-- When a build that met a full disk may be dispatched again (milliseconds since the epoch);
-- NULL when it may run at once.
ALTER TABLE builds ADD COLUMN retry_at INTEGER;
-- How many times in a row it had to wait: the backoff doubles with each.
ALTER TABLE builds ADD COLUMN waits INTEGER NOT NULL DEFAULT 0;
