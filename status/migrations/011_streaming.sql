-- reconix observed state: evaluations streamed into builds (issue 16).
--
-- Append-only: never edit this file once released; add a new numbered file instead.

-- How many attributes the evaluation listed (NULL until they are listed, and for evaluations
-- recorded before streaming), and how many of them have been recorded as jobs so far.
ALTER TABLE evaluations ADD COLUMN attributes INTEGER CHECK (attributes >= 0);
ALTER TABLE evaluations ADD COLUMN evaluated INTEGER NOT NULL DEFAULT 0 CHECK (evaluated >= 0);

-- 0 for a job recorded while its evaluation still runs that must not be built before the
-- evaluation ends (its closure may hold a derivation of a job not evaluated yet, or it is an
-- aggregate); 1 otherwise. Recording the final result sets every job of the evaluation to 1.
ALTER TABLE jobs ADD COLUMN buildable INTEGER NOT NULL DEFAULT 1 CHECK (buildable IN (0, 1));
