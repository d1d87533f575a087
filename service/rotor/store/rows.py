"""How each record is laid out as a row, the same in every SQL backend.

Each record has its columns (in one order), a decoder from a row in that order
and an encoder to the values in that order. A row is anything that iterates
over its values: an sqlite3 tuple or an asyncpg Record alike. Flags encode as
bools (SQLite stores them as 0 and 1), lists as JSON text in their order.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

from rotor.core.fleet import FleetWatcher, VerificationCount
from rotor.core.model import (
    AuditEntry,
    Client,
    ClientRevocation,
    KeyState,
    Operation,
    OperationState,
    RefreshFamily,
    RefreshToken,
    RevokedToken,
    SigningKey,
    StoredEvent,
)

KEY_COLUMNS = (
    "kid, tenant, alg, state, public_jwk, sealed_private, created_at, activates_at, retires_at, "
    "expires_at, revoked_at, revocation_reason, key_store"
)
CLIENT_COLUMNS = (
    "client_id, tenant, secret_hash, scopes, audiences, admin, allow_any_subject, disabled, created_at, cert_san, "
    "secret_expires_at, previous_secret_hash, previous_secret_expires_at, allowed_cidrs"
)
AUDIT_COLUMNS = "sequence, occurred_at, actor, action, target, outcome, tenant, details_json, prev_hash, hash"
CLIENT_REVOCATION_COLUMNS = "client_id, tenant, not_before, expires_at"
FAMILY_COLUMNS = "family_id, client_id, tenant, subject, scopes, audiences, created_at, expires_at, revoked_at, revoke_reason"
TOKEN_COLUMNS = "token_hash, family_id, client_id, issued_at, expires_at, used_at"
REVOKED_COLUMNS = "jti, tenant, client_id, expires_at, revoked_at, reason"
OPERATION_COLUMNS = (
    "operation_id, tenant, kind, target, reason, requested_by, created_at, expires_at, state, "
    "approved_by, applied_at"
)
EVENT_COLUMNS = "sequence, tenant, type, occurred_at, payload"
FLEET_WATCHER_COLUMNS = (
    "tenant, name, replica, peer, connected_at, sent_sequence, sent_kids, reported_sequence, reported_kids, "
    "last_seen, last_report_at"
)


def count(columns: str) -> int:
    """How many columns a _COLUMNS list names."""
    return columns.count(",") + 1


# Decoders: each reads a row in its _COLUMNS order.


def key(row: Iterable[Any]) -> SigningKey:
    r = tuple(row)
    return SigningKey(
        r[0], r[1], r[2], KeyState(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12]
    )


def client(row: Iterable[Any]) -> Client:
    r = tuple(row)
    return Client(
        r[0],
        r[1],
        r[2],
        tuple(json.loads(r[3])),
        tuple(json.loads(r[4])),
        bool(r[5]),
        bool(r[6]),
        bool(r[7]),
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        tuple(json.loads(r[13])),
    )


def family(row: Iterable[Any]) -> RefreshFamily:
    r = tuple(row)
    return RefreshFamily(
        r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), tuple(json.loads(r[5])), r[6], r[7], r[8], r[9]
    )


def token(row: Iterable[Any]) -> RefreshToken:
    return RefreshToken(*tuple(row))


_TOKEN_WIDTH = len(TOKEN_COLUMNS.split(", "))


def grant(row: Iterable[Any]) -> tuple[RefreshToken, RefreshFamily]:
    """A row of TOKEN_COLUMNS then FAMILY_COLUMNS (a refresh token joined with its family)."""
    r = tuple(row)
    return token(r[:_TOKEN_WIDTH]), family(r[_TOKEN_WIDTH:])


def revoked(row: Iterable[Any]) -> RevokedToken:
    return RevokedToken(*tuple(row))


def operation(row: Iterable[Any]) -> Operation:
    r = tuple(row)
    return Operation(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], OperationState(r[8]), r[9], r[10])


def audit(row: Iterable[Any]) -> AuditEntry:
    r = tuple(row)
    return AuditEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])


def client_revocation(row: Iterable[Any]) -> ClientRevocation:
    return ClientRevocation(*tuple(row))


def event(row: Iterable[Any]) -> StoredEvent:
    r = tuple(row)
    return StoredEvent(int(r[0]), r[1], r[2], r[3], r[4])


def fleet_watcher(row: Iterable[Any], verifications: tuple[VerificationCount, ...] = ()) -> FleetWatcher:
    r = tuple(row)
    return FleetWatcher(
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        int(r[5]),
        tuple(json.loads(r[6])),
        int(r[7]),
        tuple(json.loads(r[8])),
        r[9],
        r[10],
        verifications,
    )


# Encoders: each returns the values of its record in its _COLUMNS order.


_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _flat(obj: Any) -> tuple[Any, ...]:
    """A dataclass's field values, in order (dataclasses.astuple without its deep copies)."""
    getter = _GETTERS.get(type(obj))
    if getter is None:
        getter = _GETTERS[type(obj)] = operator.attrgetter(*(f.name for f in fields(obj)))
    return getter(obj)


def key_values(k: SigningKey) -> tuple[Any, ...]:
    values = _flat(k)
    return (*values[:3], k.state.value, *values[4:])


def client_values(c: Client) -> tuple[Any, ...]:
    return (
        c.client_id,
        c.tenant,
        c.secret_hash,
        json.dumps(list(c.scopes)),
        json.dumps(list(c.audiences)),
        c.admin,
        c.allow_any_subject,
        c.disabled,
        c.created_at,
        c.cert_san,
        c.secret_expires_at,
        c.previous_secret_hash,
        c.previous_secret_expires_at,
        json.dumps(list(c.allowed_cidrs)),
    )


def family_values(f: RefreshFamily) -> tuple[Any, ...]:
    values = _flat(f)
    return (*values[:4], json.dumps(list(f.scopes)), json.dumps(list(f.audiences)), *values[6:])


def token_values(t: RefreshToken) -> tuple[Any, ...]:
    return _flat(t)


def revoked_values(r: RevokedToken) -> tuple[Any, ...]:
    return _flat(r)


def audit_values(a: AuditEntry) -> tuple[Any, ...]:
    return _flat(a)


def client_revocation_values(c: ClientRevocation) -> tuple[Any, ...]:
    return _flat(c)


def operation_values(o: Operation) -> tuple[Any, ...]:
    values = _flat(o)
    return (*values[:8], o.state.value, *values[9:])


def fleet_watcher_values(w: FleetWatcher) -> tuple[Any, ...]:
    return (
        w.tenant,
        w.name,
        w.replica,
        w.peer,
        w.connected_at,
        w.sent_sequence,
        json.dumps(list(w.sent_kids)),
        w.reported_sequence,
        json.dumps(list(w.reported_kids)),
        w.last_seen,
        w.last_report_at,
    )
