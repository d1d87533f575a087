-- Rotor schema, version 1. Instants are REAL seconds since the Unix epoch.

CREATE TABLE clients (
    client_id          TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL DEFAULT '',
    secret_hash        TEXT NOT NULL,
    scopes             TEXT NOT NULL,          -- JSON array
    audiences          TEXT NOT NULL,          -- JSON array, registration order
    admin              INTEGER NOT NULL DEFAULT 0,
    allow_any_subject  INTEGER NOT NULL DEFAULT 0,
    disabled           INTEGER NOT NULL DEFAULT 0,
    created_at         REAL NOT NULL
);

CREATE TABLE keys (
    kid                TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    alg                TEXT NOT NULL,
    state              TEXT NOT NULL,
    public_jwk         TEXT NOT NULL,
    sealed_private     BLOB,                   -- NULL once destroyed
    created_at         REAL NOT NULL,
    activates_at       REAL NOT NULL,
    retires_at         REAL NOT NULL,
    expires_at         REAL NOT NULL,
    revoked_at         REAL,
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
    created_at         REAL NOT NULL,
    expires_at         REAL NOT NULL,
    revoked_at         REAL,
    revoke_reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX families_by_expiry ON refresh_families (expires_at);

CREATE TABLE refresh_tokens (
    token_hash         TEXT PRIMARY KEY,       -- hex SHA-256 of the token
    family_id          TEXT NOT NULL REFERENCES refresh_families (family_id) ON DELETE CASCADE,
    client_id          TEXT NOT NULL,
    issued_at          REAL NOT NULL,
    expires_at         REAL NOT NULL,
    used_at            REAL
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);

CREATE TABLE revoked_tokens (
    jti                TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    expires_at         REAL NOT NULL,
    revoked_at         REAL NOT NULL,
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
    created_at         REAL NOT NULL,
    expires_at         REAL NOT NULL,
    state              TEXT NOT NULL,
    approved_by        TEXT NOT NULL DEFAULT '',
    applied_at         REAL
);

CREATE TABLE events (
    sequence           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant             TEXT NOT NULL,
    type               TEXT NOT NULL,
    occurred_at        REAL NOT NULL,
    payload            TEXT NOT NULL           -- the core's JSON
);
CREATE INDEX events_by_tenant ON events (tenant, sequence);

CREATE TABLE store_meta (
    name               TEXT PRIMARY KEY,
    value              INTEGER NOT NULL
);
INSERT INTO store_meta (name, value) VALUES ('pruned_through', 0);
