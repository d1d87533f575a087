-- Rotor schema, version 1 (PostgreSQL). Instants are DOUBLE PRECISION seconds since the Unix
-- epoch, as in SQLite; the columns and indexes mirror migrations/sqlite one for one.

CREATE TABLE clients (
    client_id          TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL DEFAULT '',
    secret_hash        TEXT NOT NULL,
    scopes             TEXT NOT NULL,          -- JSON array
    audiences          TEXT NOT NULL,          -- JSON array, registration order
    admin              BOOLEAN NOT NULL DEFAULT FALSE,
    allow_any_subject  BOOLEAN NOT NULL DEFAULT FALSE,
    disabled           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         DOUBLE PRECISION NOT NULL
);

CREATE TABLE keys (
    kid                TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    alg                TEXT NOT NULL,
    state              TEXT NOT NULL,
    public_jwk         TEXT NOT NULL,
    sealed_private     BYTEA,                  -- NULL once destroyed
    created_at         DOUBLE PRECISION NOT NULL,
    activates_at       DOUBLE PRECISION NOT NULL,
    retires_at         DOUBLE PRECISION NOT NULL,
    expires_at         DOUBLE PRECISION NOT NULL,
    revoked_at         DOUBLE PRECISION,
    revocation_reason  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX keys_by_tenant ON keys (tenant, created_at);
-- At most one active key per tenant, whatever a buggy writer attempts.
CREATE UNIQUE INDEX one_active_key_per_tenant ON keys (tenant) WHERE state = 'active';

CREATE TABLE refresh_families (
    family_id          TEXT PRIMARY KEY,
    client_id          TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    subject            TEXT NOT NULL,
    scopes             TEXT NOT NULL,
    audiences          TEXT NOT NULL,
    created_at         DOUBLE PRECISION NOT NULL,
    expires_at         DOUBLE PRECISION NOT NULL,
    revoked_at         DOUBLE PRECISION,
    revoke_reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX families_by_expiry ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    token_hash         TEXT PRIMARY KEY,       -- hex SHA-256 of the token
    family_id          TEXT NOT NULL REFERENCES refresh_families (family_id) ON DELETE CASCADE,
    client_id          TEXT NOT NULL,
    issued_at          DOUBLE PRECISION NOT NULL,
    expires_at         DOUBLE PRECISION NOT NULL,
    used_at            DOUBLE PRECISION
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);

CREATE TABLE revoked_tokens (
    jti                TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    expires_at         DOUBLE PRECISION NOT NULL,
    revoked_at         DOUBLE PRECISION NOT NULL,
    reason             TEXT NOT NULL DEFAULT ''
);
CREATE INDEX revoked_tokens_by_tenant ON revoked_tokens (tenant, expires_at);

CREATE TABLE operations (
    operation_id       TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    kind               TEXT NOT NULL,
    target             TEXT NOT NULL,
    reason             TEXT NOT NULL,
    requested_by       TEXT NOT NULL,
    created_at         DOUBLE PRECISION NOT NULL,
    expires_at         DOUBLE PRECISION NOT NULL,
    state              TEXT NOT NULL,
    approved_by        TEXT NOT NULL DEFAULT '',
    applied_at         DOUBLE PRECISION
);

-- Sequences come from event_counter, not from a sequence or BIGSERIAL: a sequence hands out
-- numbers in the order transactions ask, not the order they commit, so a reader could see 7
-- and later find 6. Taking the counter's row lock holds back every other appender until
-- this transaction ends, so events become visible in sequence order.
CREATE TABLE events (
    sequence           BIGINT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    type               TEXT NOT NULL,
    occurred_at        DOUBLE PRECISION NOT NULL,
    payload            TEXT NOT NULL           -- the core's JSON
);
CREATE INDEX events_by_tenant ON events (tenant, sequence);

CREATE TABLE event_counter (
    only_row           BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    value              BIGINT NOT NULL         -- the last sequence handed out; never goes back
);
INSERT INTO event_counter (value) VALUES (0);

CREATE TABLE store_meta (
    name               TEXT PRIMARY KEY,
    value              BIGINT NOT NULL
);
INSERT INTO store_meta (name, value) VALUES ('pruned_through', 0);
