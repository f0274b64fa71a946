-- reconix observed state, schema version 1.
--
-- Append-only: never edit this file once released; add 002_*.sql instead.
-- Timestamps are INTEGER unix milliseconds. States are TEXT whose allowed values mirror the Rust
-- enums in src/types.rs (a test inserts every variant to keep the two in step).
-- Tables are STRICT so that a value of the wrong type is rejected on write, not discovered on read.

-- One row per repository the daemon has seen in the spec.
CREATE TABLE repos (
    id    INTEGER PRIMARY KEY,
    forge TEXT NOT NULL,
    name  TEXT NOT NULL,
    UNIQUE (forge, name)
) STRICT;

-- Observed heads: the rev each ref of a repo pointed to when last polled or pushed.
CREATE TABLE refs (
    repo_id     INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    rev         TEXT NOT NULL,
    observed_at INTEGER NOT NULL,
    PRIMARY KEY (repo_id, name)
) STRICT;

CREATE TABLE evaluations (
    id            INTEGER PRIMARY KEY,
    repo_id       INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    ref           TEXT NOT NULL,
    rev           TEXT NOT NULL,
    flake_ref     TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'queued' CHECK (state IN (
                      'queued', 'evaluating', 'building', 'finished', 'failed', 'superseded')),
    error         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    -- SET NULL rather than CASCADE: purging the newer evaluation must not purge the one it
    -- superseded (retention decides about each evaluation on its own).
    superseded_by INTEGER REFERENCES evaluations (id) ON DELETE SET NULL,
    UNIQUE (repo_id, ref, rev)
) STRICT;
CREATE INDEX evaluations_state ON evaluations (state);
CREATE INDEX evaluations_superseded_by ON evaluations (superseded_by);

-- Jobs, job_deps and gc_roots hang off an evaluation with ON DELETE CASCADE so that retention
-- purges a whole evaluation subtree with one DELETE and can never leave half of one behind.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY,
    evaluation_id INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    attr          TEXT NOT NULL,
    name          TEXT NOT NULL,
    system        TEXT,                        -- NULL only when evaluation failed before it was known
    drv_path      TEXT,
    outputs       TEXT NOT NULL DEFAULT '{}',  -- JSON object: output name -> store path
    state         TEXT NOT NULL CHECK (state IN (
                      'queued', 'building', 'succeeded', 'failed', 'dependency-failed',
                      'cancelled', 'eval-failed')),
    error         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    UNIQUE (evaluation_id, attr),
    -- Only an attribute that failed to evaluate may lack a derivation.
    CHECK ((drv_path IS NOT NULL AND system IS NOT NULL) OR state = 'eval-failed')
) STRICT;
CREATE INDEX jobs_drv_path ON jobs (drv_path);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE job_deps (
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    dep_job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, dep_job_id),
    CHECK (job_id <> dep_job_id)
) STRICT, WITHOUT ROWID;
-- Needed by the foreign key on dep_job_id: without it deleting a job scans the whole table.
CREATE INDEX job_deps_dep_job_id ON job_deps (dep_job_id);

-- One realisation per drv path, shared by every job with that drv; not tied to any evaluation,
-- so purging evaluations keeps the result that later evaluations reuse.
--
-- The log is folded into this table (log_path, log_size_bytes, log_updated_at) instead of a
-- separate `logs` table: every build has at most one log file (a retry overwrites it), so a
-- 1:1 table would only add a join to every log lookup and a way for the two to disagree.
CREATE TABLE builds (
    id             INTEGER PRIMARY KEY,
    drv_path       TEXT NOT NULL UNIQUE,
    builder        TEXT,
    state          TEXT NOT NULL CHECK (state IN (
                       'queued', 'running', 'succeeded', 'failed', 'timed-out', 'cancelled')),
    exit_code      INTEGER,
    error          TEXT,
    log_path       TEXT,
    log_size_bytes INTEGER,
    log_updated_at INTEGER,
    attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    queued_at      INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER
) STRICT;
CREATE INDEX builds_state ON builds (state);

-- Rows cascade away with their job. That is safe: the gcroots loop compares the links on disk
-- with the succeeded jobs that still exist, so a link whose row vanished is removed as unwanted.
CREATE TABLE gc_roots (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    path       TEXT NOT NULL UNIQUE,
    output     TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX gc_roots_job_id ON gc_roots (job_id);

CREATE TABLE loops (
    name                 TEXT PRIMARY KEY,
    runs                 INTEGER NOT NULL DEFAULT 0,
    last_run_at          INTEGER,
    last_success_at      INTEGER,
    last_error           TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    next_run_at          INTEGER
) STRICT;
