-- Leases: which process runs the rotator (rotor serve --workers N, or replicas).

CREATE TABLE leases (
    name               TEXT PRIMARY KEY,
    holder             TEXT NOT NULL,
    fencing            BIGINT NOT NULL,        -- grows each time the lease changes hands
    expires_at         DOUBLE PRECISION NOT NULL
);
