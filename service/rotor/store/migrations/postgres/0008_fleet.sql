-- The fleet view: named watchers of every replica, and what their verifiers report.

-- One row per named watcher of a tenant: where its stream is (if it streams), what it was sent,
-- what it reported holding, and when it was last seen (stream alive or report).
CREATE TABLE fleet_watchers (
    tenant             TEXT NOT NULL,
    name               TEXT NOT NULL,
    replica            TEXT NOT NULL,          -- the replica holding its stream, or that took its last report
    peer               TEXT NOT NULL DEFAULT '',
    connected_at       DOUBLE PRECISION,                   -- NULL while it has no stream
    sent_sequence      BIGINT NOT NULL DEFAULT 0,
    sent_kids          TEXT NOT NULL DEFAULT '[]',   -- JSON array
    reported_sequence  BIGINT NOT NULL DEFAULT 0,
    reported_kids      TEXT NOT NULL DEFAULT '[]',   -- JSON array
    last_seen          DOUBLE PRECISION NOT NULL,
    last_report_at     DOUBLE PRECISION,
    PRIMARY KEY (tenant, name)
);
CREATE INDEX fleet_watchers_by_last_seen ON fleet_watchers (last_seen);

-- Reported verification outcomes per minute (bucket: the minute's first instant), for the last
-- quarter hour.
CREATE TABLE fleet_verifications (
    tenant             TEXT NOT NULL,
    name               TEXT NOT NULL,
    bucket             DOUBLE PRECISION NOT NULL,
    outcome            TEXT NOT NULL,
    kid                TEXT NOT NULL DEFAULT '',
    count              BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, bucket, outcome, kid)
);
CREATE INDEX fleet_verifications_by_bucket ON fleet_verifications (bucket);

-- Every outcome ever reported by a watcher (rotor_fleet_verifications_total).
CREATE TABLE fleet_totals (
    tenant             TEXT NOT NULL,
    name               TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    count              BIGINT NOT NULL,
    PRIMARY KEY (tenant, name, outcome)
);
