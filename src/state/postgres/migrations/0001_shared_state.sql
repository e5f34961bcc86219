-- egressd shared state, version 1: schedules, the run ledger, activation times and the
-- allowlist entries added from the console.

CREATE TABLE egressd_schedules (
    id          text PRIMARY KEY,
    function    text NOT NULL,
    cron        text NOT NULL,
    payload     text NOT NULL,
    created_at  timestamptz NOT NULL
);

-- One row per (schedule, nominal time): inserting it is the claim, so of several replicas
-- that see a tick due exactly one invokes it. The outcome is written to the same row.
CREATE TABLE egressd_runs (
    schedule_id    text NOT NULL REFERENCES egressd_schedules (id) ON DELETE CASCADE,
    scheduled_for  timestamptz NOT NULL,
    -- running | success | failure | skipped | missed
    state          text NOT NULL,
    status         text NOT NULL,
    duration_ms    bigint NOT NULL DEFAULT 0,
    reason         text,
    claimed_by     text NOT NULL,
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    -- A run still `running` after this (database time) is marked abandoned.
    lease_until    timestamptz,
    PRIMARY KEY (schedule_id, scheduled_for)
);
CREATE INDEX egressd_runs_running ON egressd_runs (lease_until) WHERE state = 'running';

-- When each allowlist pattern was added and becomes active, agreed by every replica.
-- A row whose pattern was removed keeps `removed_at`, so a later add starts over.
CREATE TABLE egressd_activation (
    pattern     text PRIMARY KEY,
    added_at    bigint NOT NULL,
    active_at   bigint NOT NULL,
    removed_at  bigint
);

-- Entries added from the console or the API, merged with the config file's.
CREATE TABLE egressd_allowlist (
    pattern     text PRIMARY KEY,
    added_at    timestamptz NOT NULL DEFAULT now(),
    added_by    text NOT NULL
);

-- One row: bumped by every change to the two tables above, so replicas poll one number
-- (and LISTEN egressd_state) instead of re-reading every entry. 0: activation times never
-- recorded yet (the first replica's start activates the file's entries at once).
CREATE TABLE egressd_changes (
    id       integer PRIMARY KEY CHECK (id = 1),
    version  bigint NOT NULL
);
INSERT INTO egressd_changes (id, version) VALUES (1, 0);
