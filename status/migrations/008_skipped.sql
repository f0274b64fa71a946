-- reconix observed state: jobs can be `skipped` (a job of a walked tree whose system the
-- repository does not build: recorded with its derivation, never built, never a failure).
--
-- Append-only: never edit this file once released; add a new numbered file instead.
--
-- SQLite cannot change a CHECK constraint in place, so `jobs` is rebuilt. Foreign keys stay on
-- (the pragma cannot change inside the migration's transaction) and dropping `jobs` cascades to
-- `job_deps` and `gc_roots`, so their rows are kept aside first and put back afterwards.

CREATE TEMP TABLE saved_job_deps AS SELECT * FROM job_deps;
CREATE TEMP TABLE saved_gc_roots AS SELECT * FROM gc_roots;

CREATE TABLE jobs_new (
    id                INTEGER PRIMARY KEY,
    evaluation_id     INTEGER NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    attr              TEXT NOT NULL,
    name              TEXT NOT NULL,
    system            TEXT,                        -- NULL only when evaluation failed before it was known
    drv_path          TEXT,
    outputs           TEXT NOT NULL DEFAULT '{}',  -- JSON object: output name -> store path
    state             TEXT NOT NULL CHECK (state IN (
                          'queued', 'building', 'succeeded', 'failed', 'dependency-failed',
                          'cancelled', 'eval-failed', 'skipped')),
    error             TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    required_features TEXT NOT NULL DEFAULT '[]',
    UNIQUE (evaluation_id, attr),
    -- Only an attribute that failed to evaluate may lack a derivation.
    CHECK ((drv_path IS NOT NULL AND system IS NOT NULL) OR state = 'eval-failed')
) STRICT;
INSERT INTO jobs_new (id, evaluation_id, attr, name, system, drv_path, outputs, state, error,
                      created_at, started_at, finished_at, required_features)
    SELECT id, evaluation_id, attr, name, system, drv_path, outputs, state, error,
           created_at, started_at, finished_at, required_features
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_drv_path ON jobs (drv_path);
CREATE INDEX jobs_state ON jobs (state);

INSERT INTO job_deps SELECT * FROM saved_job_deps;
INSERT INTO gc_roots SELECT * FROM saved_gc_roots;
DROP TABLE saved_job_deps;
DROP TABLE saved_gc_roots;
