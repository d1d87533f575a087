-- A revoked token is known by its tenant and its jti: a jti taken in one tenant must never stand
-- for, and so hide, the revocation of a token of another tenant.
ALTER TABLE revoked_tokens DROP CONSTRAINT revoked_tokens_pkey;
ALTER TABLE revoked_tokens ADD PRIMARY KEY (tenant, jti);
