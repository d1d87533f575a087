-- Leases: which process runs the rotator (rotor serve --workers N, or replicas).

CREATE TABLE leases (
    name               TEXT PRIMARY KEY,
    holder             TEXT NOT NULL,
    fencing            INTEGER NOT NULL,       -- grows each time the lease changes hands
    expires_at         REAL NOT NULL
);
