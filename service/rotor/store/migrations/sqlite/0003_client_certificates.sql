-- mTLS: a client may be authenticated by a client certificate's URI SAN (RFC 8705 tls_client_auth).

ALTER TABLE clients ADD COLUMN cert_san TEXT;   -- NULL: no certificate authenticates it
CREATE UNIQUE INDEX clients_by_cert_san ON clients (cert_san) WHERE cert_san IS NOT NULL;
