-- A revoked token is known by its tenant and its jti: a jti taken in one tenant must never stand
-- for, and so hide, the revocation of a token of another tenant.
CREATE TABLE revoked_tokens_new (
    jti                TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    expires_at         REAL NOT NULL,
    revoked_at         REAL NOT NULL,
    reason             TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, jti)
);
INSERT INTO revoked_tokens_new (jti, tenant, client_id, expires_at, revoked_at, reason)
    SELECT jti, tenant, client_id, expires_at, revoked_at, reason FROM revoked_tokens;
DROP TABLE revoked_tokens;
ALTER TABLE revoked_tokens_new RENAME TO revoked_tokens;
CREATE INDEX revoked_tokens_by_tenant ON revoked_tokens (tenant, expires_at);
