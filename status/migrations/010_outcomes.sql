-- reconix observed state: what a build's outputs say about it (Hydra's `nix-support/`
-- conventions) and what a job's derivation says about itself in `meta`.
--
-- Append-only: never edit this file once released; add a new numbered file instead.

-- 1 when the build's outputs exist but one has `nix-support/failed` (nixpkgs'
-- `succeedOnFailure`): the build is `succeeded` for Nix (its outputs are valid, rooted and
-- usable by dependents) and its jobs are `failed`.
ALTER TABLE builds ADD COLUMN failed_with_output INTEGER NOT NULL DEFAULT 0
    CHECK (failed_with_output IN (0, 1));
-- The first line of an output's `nix-support/hydra-release-name`.
ALTER TABLE builds ADD COLUMN release_name TEXT;

-- The lines of the outputs' `nix-support/hydra-build-products`, in order. Which of them may
-- be downloaded is decided when one is asked for (only paths inside the job's outputs).
CREATE TABLE build_products (
    build_id     INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL CHECK (position >= 0),
    kind         TEXT NOT NULL,
    subtype      TEXT NOT NULL,
    path         TEXT NOT NULL,
    default_path TEXT,
    PRIMARY KEY (build_id, position)
) STRICT;

-- JSON object: what reconix uses of the derivation's `meta` (description, homepage, license,
-- maintainers, timeout, maxSilent, schedulingPriority); `{}` when it has none.
ALTER TABLE jobs ADD COLUMN meta TEXT NOT NULL DEFAULT '{}';
