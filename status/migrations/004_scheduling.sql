-- reconix observed state, schema version 4: scheduling across builders.
--
-- Append-only: never edit this file once released; add 005_*.sql instead.

-- The Nix system features a job's derivation requires (`requiredSystemFeatures`), as a JSON
-- array of strings, sorted: only a builder offering all of them may build it.
ALTER TABLE jobs ADD COLUMN required_features TEXT NOT NULL DEFAULT '[]';
