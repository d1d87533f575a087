-- Governance: the audit log (a hash chain), client credential lifecycle, client-wide revocations.

-- One entry per security event, written in the transaction of the change.
CREATE TABLE audit_events (
    sequence           BIGINT PRIMARY KEY,       -- from 1, no gaps: audit_head hands them out
    occurred_at        DOUBLE PRECISION NOT NULL,
    actor              TEXT NOT NULL,
    action             TEXT NOT NULL,
    target             TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    details_json       TEXT NOT NULL,
    prev_hash          TEXT NOT NULL,
    hash               TEXT NOT NULL           -- SHA-256 over the fields and prev_hash (rotor.core.audit)
);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at);

-- The chain's head: appenders lock it, so entries are numbered and chained one at a time,
-- and a deleted tail shows as a head the log does not reach.
CREATE TABLE audit_head (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    sequence           BIGINT NOT NULL,
    hash               TEXT NOT NULL
);
INSERT INTO audit_head (id, sequence, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Client secrets expire (--expires) and rotate with an overlap (rotate-secret --overlap).
ALTER TABLE clients ADD COLUMN secret_expires_at DOUBLE PRECISION;
ALTER TABLE clients ADD COLUMN previous_secret_hash TEXT;
ALTER TABLE clients ADD COLUMN previous_secret_expires_at DOUBLE PRECISION;

-- RevokeClientTokens: a client's access tokens issued before not_before are revoked.
CREATE TABLE client_revocations (
    client_id          TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    not_before         DOUBLE PRECISION NOT NULL,
    expires_at         DOUBLE PRECISION NOT NULL           -- no token it covers verifies after this: pruned then
);
CREATE INDEX client_revocations_by_tenant ON client_revocations (tenant, expires_at);
