-- egressd shared state, version 2: the secret store. Values are sealed (AES-256-GCM) by
-- egressd before they reach the database; the database never sees a plaintext or the key.

CREATE TABLE egressd_secrets (
    name         text PRIMARY KEY,
    sealed       bytea NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    -- 1 when created, one more with every update: assigned here, so writers on different
    -- replicas get strictly increasing versions.
    version      bigint NOT NULL,
    last_writer  text NOT NULL,
    is_default   boolean NOT NULL DEFAULT false
);

-- One row: the check value of the key the secrets are sealed with (NULL until the first
-- replica with [secrets] starts), and a counter bumped by every change, which replicas
-- poll to refresh the values they inject. Writers lock this row, so changes are ordered.
CREATE TABLE egressd_secret_store (
    id         integer PRIMARY KEY CHECK (id = 1),
    key_check  text,
    revision   bigint NOT NULL
);
INSERT INTO egressd_secret_store (id, key_check, revision) VALUES (1, NULL, 0);
