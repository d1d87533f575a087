"""SQL that reads the same in both backends' dialects ($N placeholders; SQLite takes them as ?N).

What only one dialect says stays in its backend: SQLite's rowid events and
`IN (...)` lists, PostgreSQL's row locks, counter and NOTIFY.
"""

from rotor.store.rows import (
    AUDIT_COLUMNS,
    CLIENT_COLUMNS,
    CLIENT_REVOCATION_COLUMNS,
    EVENT_COLUMNS,
    FAMILY_COLUMNS,
    FLEET_WATCHER_COLUMNS,
    KEY_COLUMNS,
    OPERATION_COLUMNS,
    REVOKED_COLUMNS,
    TOKEN_COLUMNS,
    count,
)


def marks(how_many: int, first: int = 1) -> str:
    """`$first, $first+1, ...`: one placeholder per value."""
    return ", ".join(f"${i}" for i in range(first, first + how_many))


def _insert(table: str, columns: str) -> str:
    return f"INSERT INTO {table} ({columns}) VALUES ({marks(count(columns))})"


def _replace(table: str, columns: str, where: str) -> str:
    """Write every column of the rows matching `where`, whose placeholders follow the columns' ($N+1...)."""
    return f"UPDATE {table} SET ({columns}) = ({marks(count(columns))}) WHERE {where}"


_N_KEY, _N_CLIENT, _N_OPERATION = count(KEY_COLUMNS), count(CLIENT_COLUMNS), count(OPERATION_COLUMNS)

# clients
GET_CLIENT = f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1"
GET_CLIENT_BY_CERT_SAN = f"SELECT {CLIENT_COLUMNS} FROM clients WHERE cert_san = $1"
LIST_CLIENTS = f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id"
INSERT_CLIENT = _insert("clients", CLIENT_COLUMNS)
UPDATE_CLIENT = _replace("clients", CLIENT_COLUMNS, f"client_id = ${_N_CLIENT + 1}")
DELETE_CLIENT = "DELETE FROM clients WHERE client_id = $1"
LIST_TENANTS = "SELECT tenant FROM keys UNION SELECT tenant FROM clients UNION SELECT ''"

# keys
GET_KEY = f"SELECT {KEY_COLUMNS} FROM keys WHERE kid = $1"
INSERT_KEY = _insert("keys", KEY_COLUMNS)
UPDATE_KEY = _replace("keys", KEY_COLUMNS, f"kid = ${_N_KEY + 1} AND state = ${_N_KEY + 2}")

# refresh families and tokens
GET_FAMILY = f"SELECT {FAMILY_COLUMNS} FROM refresh_families WHERE family_id = $1"
INSERT_FAMILY = _insert("refresh_families", FAMILY_COLUMNS)
REVOKE_FAMILY = "UPDATE refresh_families SET revoked_at = $1, revoke_reason = $2 WHERE family_id = $3 AND revoked_at IS NULL"
GET_REFRESH_TOKEN = f"SELECT {TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = $1"
INSERT_REFRESH_TOKEN = _insert("refresh_tokens", TOKEN_COLUMNS)
GET_REFRESH_GRANT = (
    f"SELECT {', '.join('t.' + c for c in TOKEN_COLUMNS.split(', '))}, "
    f"{', '.join('f.' + c for c in FAMILY_COLUMNS.split(', '))} "
    "FROM refresh_tokens t JOIN refresh_families f ON f.family_id = t.family_id WHERE t.token_hash = $1"
)
MARK_REFRESH_TOKEN_USED = "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL"

# access-token revocations
GET_REVOKED_TOKEN = f"SELECT {REVOKED_COLUMNS} FROM revoked_tokens WHERE jti = $1 ORDER BY tenant LIMIT 1"
INSERT_REVOKED_TOKEN = _insert("revoked_tokens", REVOKED_COLUMNS) + " ON CONFLICT (tenant, jti) DO NOTHING"
# a tenant's revocations unexpired at $2, for a snapshot
LIVE_REVOCATIONS = (
    f"SELECT {REVOKED_COLUMNS} FROM revoked_tokens WHERE tenant = $1 AND expires_at > $2 ORDER BY revoked_at"
)

# client-wide revocations (RevokeClientTokens)
REVOKE_CLIENT_FAMILIES = (  # live families only: an ended one is not counted as revoked
    "UPDATE refresh_families SET revoked_at = $1, revoke_reason = $2 "
    "WHERE client_id = $3 AND revoked_at IS NULL AND expires_at > $1"
)
UPSERT_CLIENT_REVOCATION = (
    _insert("client_revocations", CLIENT_REVOCATION_COLUMNS)
    + " ON CONFLICT (client_id) DO UPDATE SET tenant = excluded.tenant, not_before = excluded.not_before,"
    " expires_at = excluded.expires_at"
)
GET_CLIENT_REVOCATION = f"SELECT {CLIENT_REVOCATION_COLUMNS} FROM client_revocations WHERE client_id = $1"
LIVE_CLIENT_REVOCATIONS = (
    f"SELECT {CLIENT_REVOCATION_COLUMNS} FROM client_revocations WHERE tenant = $1 AND expires_at > $2 "
    "ORDER BY client_id"
)

# the audit log
AUDIT_HEAD = "SELECT sequence, hash FROM audit_head WHERE id = 1"
ADVANCE_AUDIT_HEAD = "UPDATE audit_head SET sequence = $1, hash = $2 WHERE id = 1"
INSERT_AUDIT = _insert("audit_events", AUDIT_COLUMNS)
AUDIT_AFTER = (
    f"SELECT {AUDIT_COLUMNS} FROM audit_events WHERE sequence > $1 AND occurred_at >= $2 "
    "ORDER BY sequence LIMIT $3"
)
AUDIT_OF_TENANT_AFTER = (
    f"SELECT {AUDIT_COLUMNS} FROM audit_events WHERE sequence > $1 AND occurred_at >= $2 AND tenant = $3 "
    "ORDER BY sequence LIMIT $4"
)

# two-admin operations
GET_OPERATION = f"SELECT {OPERATION_COLUMNS} FROM operations WHERE operation_id = $1"
INSERT_OPERATION = _insert("operations", OPERATION_COLUMNS)
UPDATE_OPERATION = _replace(
    "operations", OPERATION_COLUMNS, f"operation_id = ${_N_OPERATION + 1} AND state = ${_N_OPERATION + 2}"
)

# the event log
LAST_SEQUENCE = "SELECT COALESCE(MAX(sequence), 0) FROM events"
LAST_SEQUENCE_OF_TENANT = "SELECT COALESCE(MAX(sequence), 0) FROM events WHERE tenant = $1"
EVENTS_AFTER = f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
EVENTS_OF_TENANT_AFTER = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE tenant = $1 AND sequence > $2 ORDER BY sequence LIMIT $3"
)
PRUNED_THROUGH = "SELECT value FROM store_meta WHERE name = 'pruned_through'"

# leases
HOLDS_LEASE = "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND fencing = $3 AND expires_at > $4"

# Take or renew lease $1 for holder $2 until $3, at instant $4. The holder keeps its fencing
# token while it renews in time; whoever takes an expired lease (its old holder included, who
# may have missed things meanwhile) gets a larger one. No row comes back while another
# holder's lease is unexpired.
LEASE_UPSERT = """
INSERT INTO leases (name, holder, fencing, expires_at) VALUES ($1, $2, 1, $3)
ON CONFLICT (name) DO UPDATE SET
    fencing = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > $4
                   THEN leases.fencing ELSE leases.fencing + 1 END,
    holder = excluded.holder,
    expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder OR leases.expires_at <= $4
RETURNING fencing
"""
RELEASE_LEASE = "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2"

# Pruning at instant $1 (see Store.prune), in this order: revocations, unused refresh tokens,
# families (a revoked one as soon as it has no token left), operations expired a while ago.
OPERATION_RETENTION = 30 * 86400.0
PRUNE_EXPIRED = (
    "DELETE FROM revoked_tokens WHERE expires_at <= $1",
    "DELETE FROM client_revocations WHERE expires_at <= $1",
    # a used token stays as long as its family, so replaying it is still detected as reuse
    "DELETE FROM refresh_tokens WHERE expires_at <= $1 AND used_at IS NULL",
    "DELETE FROM refresh_families WHERE expires_at <= $1 "
    "OR (revoked_at IS NOT NULL AND NOT EXISTS "
    "(SELECT 1 FROM refresh_tokens t WHERE t.family_id = refresh_families.family_id))",
)
PRUNE_OPERATIONS = "DELETE FROM operations WHERE expires_at <= $1"
# the newest sequence that may go: older than $1 and not the newest of its tenant
PRUNABLE_THROUGH = (
    "SELECT MAX(sequence) FROM events e WHERE occurred_at < $1 "
    "AND sequence < (SELECT MAX(sequence) FROM events WHERE tenant = e.tenant)"
)
PRUNE_EVENTS = (
    "DELETE FROM events WHERE sequence <= $1 AND sequence < "
    "(SELECT MAX(sequence) FROM events e2 WHERE e2.tenant = events.tenant)"
)
RAISE_PRUNED_THROUGH = "UPDATE store_meta SET value = $1 WHERE name = 'pruned_through' AND value < $1"

# The fleet view (rotor.core.fleet). A stream's replica writes where the stream is; a report
# moves the watcher to the reporting replica only while no replica holds a stream of it.
FLEET_STREAM_UPSERT = (
    _insert("fleet_watchers", FLEET_WATCHER_COLUMNS)
    + " ON CONFLICT (tenant, name) DO UPDATE SET replica = excluded.replica, peer = excluded.peer,"
    " connected_at = excluded.connected_at, sent_sequence = excluded.sent_sequence,"
    " sent_kids = excluded.sent_kids, last_seen = excluded.last_seen"
)
FLEET_REPORT_UPSERT = (
    _insert("fleet_watchers", FLEET_WATCHER_COLUMNS) + " ON CONFLICT (tenant, name) DO UPDATE SET"
    " replica = CASE WHEN fleet_watchers.connected_at IS NULL THEN excluded.replica"
    " ELSE fleet_watchers.replica END,"
    " reported_sequence = excluded.reported_sequence, reported_kids = excluded.reported_kids,"
    " last_report_at = excluded.last_report_at,"
    " last_seen = CASE WHEN excluded.last_seen > fleet_watchers.last_seen THEN excluded.last_seen"
    " ELSE fleet_watchers.last_seen END"
)
# its stream on replica $3 ended at $4 (a stream it opened since on another replica stays)
FLEET_STREAM_CLOSED = "UPDATE fleet_watchers SET connected_at = NULL, last_seen = $4 WHERE tenant = $1 AND name = $2 AND replica = $3"
FLEET_ADD_COUNT = (
    "INSERT INTO fleet_verifications (tenant, name, bucket, outcome, kid, count) VALUES ($1, $2, $3, $4, $5, $6)"
    " ON CONFLICT (tenant, name, bucket, outcome, kid) DO UPDATE SET count = fleet_verifications.count + excluded.count"
)
FLEET_ADD_TOTAL = (
    "INSERT INTO fleet_totals (tenant, name, outcome, count) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (tenant, name, outcome) DO UPDATE SET count = fleet_totals.count + excluded.count"
)
FLEET_PRUNE_COUNTS = "DELETE FROM fleet_verifications WHERE bucket < $1"
FLEET_PRUNE_WATCHERS = "DELETE FROM fleet_watchers WHERE last_seen < $1"
FLEET_PRUNE_TOTALS = (
    "DELETE FROM fleet_totals WHERE NOT EXISTS (SELECT 1 FROM fleet_watchers w "
    "WHERE w.tenant = fleet_totals.tenant AND w.name = fleet_totals.name)"
)
FLEET_WATCHERS = (
    f"SELECT {FLEET_WATCHER_COLUMNS} FROM fleet_watchers WHERE last_seen >= $1 ORDER BY tenant, name"
)
FLEET_WATCHERS_OF_TENANT = (
    f"SELECT {FLEET_WATCHER_COLUMNS} FROM fleet_watchers WHERE last_seen >= $1 AND tenant = $2 ORDER BY name"
)
FLEET_COUNTS_OF_TENANT = (
    "SELECT name, outcome, kid, SUM(count) FROM fleet_verifications WHERE bucket >= $1 AND tenant = $2 "
    "GROUP BY name, outcome, kid ORDER BY name, outcome, kid"
)
FLEET_TOTALS = "SELECT tenant, name, outcome, count FROM fleet_totals ORDER BY tenant, name, outcome"
