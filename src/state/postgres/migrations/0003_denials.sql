-- egressd shared state, version 3: recent denials, merged across replicas. Each replica
-- upserts its own rows every few seconds (never a write per request); readers add the rows
-- of every other replica to their own.

CREATE TABLE egressd_denials (
    replica          text NOT NULL,
    -- entry:PATTERN, or reason:CODE for refusals no allowlist entry fixes
    fix_key          text NOT NULL,
    count            bigint NOT NULL,
    first_seen       bigint NOT NULL,
    last_seen        bigint NOT NULL,
    reasons          text[] NOT NULL,
    examples         text[] NOT NULL,
    functions        text[] NOT NULL,
    redirected_from  text[] NOT NULL,
    PRIMARY KEY (replica, fix_key)
);
CREATE INDEX egressd_denials_last_seen ON egressd_denials (last_seen);
