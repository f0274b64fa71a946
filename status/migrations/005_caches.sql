-- reconix observed state, schema version 5: closure sizes and binary-cache pushes.
--
-- Append-only: never edit this file once released; add 006_*.sql instead.

-- The total NAR size of the closure of a succeeded build's outputs, in bytes (NULL: not
-- measured, e.g. the build failed or Nix could not be asked).
ALTER TABLE builds ADD COLUMN closure_size_bytes INTEGER;

-- What the `caches` loop did with each output path for each cache of the spec. A path with no
-- row for a cache is still to be pushed there. Rows are per path, not per job: outputs shared
-- by many jobs (or evaluations) are pushed once.
CREATE TABLE cache_pushes (
    cache      TEXT NOT NULL,                 -- the cache's push-url (never holds secrets)
    store_path TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pushed', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    error      TEXT,                          -- the last failure, while state = 'failed'
    updated_at INTEGER NOT NULL,
    retry_at   INTEGER,                       -- when a failed push may be tried again
    PRIMARY KEY (cache, store_path)
) STRICT, WITHOUT ROWID;
