-- reconix observed state, schema version 2: hosted forges (webhooks, pull requests, hooks,
-- drift, posted statuses, forge health).
--
-- Append-only: never edit this file once released; add 003_*.sql instead.

-- The default branch the forge reports (NULL: unknown yet, or an empty repository). Local repos
-- never set it: their default branch is read from the checkout.
ALTER TABLE repos ADD COLUMN default_branch TEXT;

-- Every accepted webhook delivery. The unique delivery id makes a redelivery a no-op; rows
-- without an id (a forge that sends none) are never coalesced by id.
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY,
    forge       TEXT NOT NULL,
    delivery_id TEXT,
    event       TEXT NOT NULL CHECK (event IN ('push', 'pull_request', 'ping', 'ignored')),
    repo        TEXT,
    ref         TEXT,
    sha         TEXT,
    -- What the delivery changed: `new-head` (a head to evaluate), `coalesced` (its sha was
    -- already evaluated for that ref), `unchanged` (the head was known), `ignored` (nothing to do).
    result      TEXT NOT NULL CHECK (result IN ('new-head', 'coalesced', 'unchanged', 'ignored')),
    received_at INTEGER NOT NULL,
    UNIQUE (forge, delivery_id)
) STRICT;
CREATE INDEX webhook_deliveries_received_at ON webhook_deliveries (received_at);

-- Pull (merge) requests as last seen through a webhook or the API. `author_can_write` is the
-- result of the permission lookup for the current head (NULL: not looked up yet); a new head
-- clears it, so trust is decided again for every push.
CREATE TABLE pull_requests (
    repo_id              INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    number               INTEGER NOT NULL CHECK (number > 0),
    head_sha             TEXT NOT NULL,
    head_ref             TEXT NOT NULL,
    base_ref             TEXT NOT NULL,
    author               TEXT,
    from_fork            INTEGER NOT NULL CHECK (from_fork IN (0, 1)),
    open                 INTEGER NOT NULL CHECK (open IN (0, 1)),
    author_can_write     INTEGER CHECK (author_can_write IN (0, 1)),
    permission_checked_at INTEGER,
    observed_at          INTEGER NOT NULL,
    PRIMARY KEY (repo_id, number)
) STRICT;

-- The hook the `webhooks` loop maintains on each repository, with a fingerprint of the secret
-- it set (forges never read a secret back, so this is how a changed spec secret is noticed).
-- Signature failures of deliveries naming the repo hint that the secret was changed on the
-- forge; the loop then sets it again.
CREATE TABLE hooks (
    repo_id                   INTEGER PRIMARY KEY REFERENCES repos (id) ON DELETE CASCADE,
    hook_id                   INTEGER NOT NULL,
    url                       TEXT NOT NULL,
    secret_fingerprint        TEXT NOT NULL,
    set_at                    INTEGER NOT NULL,
    signature_failures        INTEGER NOT NULL DEFAULT 0,
    last_signature_failure_at INTEGER
) STRICT;

-- Differences between desired and observed state that a loop found and (tried to) repair.
-- Never holds a secret: fields whose value is secret record only that they differed.
CREATE TABLE drift (
    id          INTEGER PRIMARY KEY,
    loop        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    field       TEXT NOT NULL,
    desired     TEXT,
    observed    TEXT,
    found_at    INTEGER NOT NULL,
    repaired_at INTEGER,
    error       TEXT
) STRICT;
CREATE INDEX drift_open ON drift (loop, subject, field) WHERE repaired_at IS NULL;

-- What the `statuses` loop last posted for each commit and context, so it posts differences only.
CREATE TABLE posted_statuses (
    repo_id      INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    sha          TEXT NOT NULL,
    context      TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN (
                     'pending', 'running', 'success', 'failure', 'error', 'cancelled')),
    description  TEXT,
    target_url   TEXT,
    check_run_id INTEGER,
    posted_at    INTEGER NOT NULL,
    PRIMARY KEY (repo_id, sha, context)
) STRICT;

-- Evaluations whose statuses are final on the forge: the `statuses` loop no longer looks at them.
CREATE TABLE settled_statuses (
    evaluation_id INTEGER PRIMARY KEY REFERENCES evaluations (id) ON DELETE CASCADE,
    settled_at    INTEGER NOT NULL
) STRICT;

-- Whether calls to a forge may be made: `paused` after a 401 (until a permission lookup
-- succeeds), `rate-limited` until `until`.
CREATE TABLE forge_health (
    forge  TEXT PRIMARY KEY,
    state  TEXT NOT NULL CHECK (state IN ('ok', 'paused', 'rate-limited')),
    reason TEXT,
    since  INTEGER NOT NULL,
    until  INTEGER
) STRICT;
