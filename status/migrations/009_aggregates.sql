-- reconix observed state: aggregate jobs (Hydra's `_hydraAggregate = true; constituents = [ … ]`).
--
-- Append-only: never edit this file once released; add a new numbered file instead.

-- 1 for an aggregate job (even one with no constituents), 0 for any other.
ALTER TABLE jobs ADD COLUMN aggregate INTEGER NOT NULL DEFAULT 0 CHECK (aggregate IN (0, 1));

-- The constituents of an aggregate job, in the order written: a job of the same evaluation
-- (also a dependency of the aggregate, in job_deps), or a derivation that is no job of it.
-- Rows cascade away with either job, as job_deps rows do.
CREATE TABLE job_constituents (
    job_id             INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position           INTEGER NOT NULL CHECK (position >= 0),
    constituent_job_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE,
    drv_path           TEXT,
    PRIMARY KEY (job_id, position),
    CHECK ((constituent_job_id IS NULL) <> (drv_path IS NULL)),
    CHECK (job_id <> constituent_job_id)
) STRICT, WITHOUT ROWID;
-- Needed by the foreign key on constituent_job_id: without it deleting a job scans the table.
CREATE INDEX job_constituents_constituent_job_id ON job_constituents (constituent_job_id);
