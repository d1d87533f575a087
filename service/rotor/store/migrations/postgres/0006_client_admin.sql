-- Client administration over the API: network-bound clients.

-- The networks a client may call from (JSON array of CIDRs); empty: any.
ALTER TABLE clients ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '[]';
