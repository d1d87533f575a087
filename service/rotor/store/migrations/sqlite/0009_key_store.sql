-- Where each key's private half lives: "sealed" (sealed_private holds it, sealed under the KEK)
-- or "pkcs11" (on a token, never extractable; sealed_private holds the token object's label).
ALTER TABLE keys ADD COLUMN key_store TEXT NOT NULL DEFAULT 'sealed';
