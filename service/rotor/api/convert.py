"""Domain records to rotor.v1 messages (and the few conversions the other way)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from rotor.core import lifecycle
from rotor.core.clients import UPDATABLE
from rotor.core.errors import InvalidRequest, quote
from rotor.core.fleet import FleetWatcher
from rotor.core.lifecycle import KeyPolicy
from rotor.core.model import (
    AuditEntry,
    Client,
    ClientRevocation,
    Event,
    EventType,
    KeyState,
    RevokedToken,
    SigningKey,
    Snapshot,
)
from rotor.core.status import WatcherSighting
from rotor.core.tokens import Introspection, IssuedTokens
from rotor.v1 import key_admin_pb2, keys_pb2, token_service_pb2

KEY_STATE = {
    KeyState.PENDING: keys_pb2.KEY_STATE_PENDING,
    KeyState.ACTIVE: keys_pb2.KEY_STATE_ACTIVE,
    KeyState.RETIRED: keys_pb2.KEY_STATE_RETIRED,
    KeyState.REVOKED: keys_pb2.KEY_STATE_REVOKED,
    KeyState.EXPIRED: keys_pb2.KEY_STATE_EXPIRED,
}
EVENT_TYPE = {
    EventType.KEY_PUBLISHED: keys_pb2.KEY_EVENT_TYPE_KEY_PUBLISHED,
    EventType.KEY_ACTIVATED: keys_pb2.KEY_EVENT_TYPE_KEY_ACTIVATED,
    EventType.KEY_RETIRED: keys_pb2.KEY_EVENT_TYPE_KEY_RETIRED,
    EventType.KEY_REVOKED: keys_pb2.KEY_EVENT_TYPE_KEY_REVOKED,
    EventType.KEY_EXPIRED: keys_pb2.KEY_EVENT_TYPE_KEY_EXPIRED,
    EventType.TOKEN_REVOKED: keys_pb2.KEY_EVENT_TYPE_TOKEN_REVOKED,
    EventType.CLIENT_REVOKED: keys_pb2.KEY_EVENT_TYPE_CLIENT_REVOKED,
}

MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's own range


def timestamp(instant: float) -> timestamp_pb2.Timestamp:
    seconds = int(instant)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=int((instant - seconds) * 1e9))


def seconds_of_timestamp(value: timestamp_pb2.Timestamp) -> float:
    """A Timestamp as Unix seconds."""
    return value.seconds + value.nanos / 1e9


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))


def seconds_of(value: duration_pb2.Duration, field: str) -> float:
    """A Duration as seconds; InvalidRequest when it is not a valid Duration."""
    s, n = value.seconds, value.nanos
    if abs(s) > MAX_DURATION_SECONDS or abs(n) >= 1_000_000_000 or (s > 0 and n < 0) or (s < 0 and n > 0):
        raise InvalidRequest(
            f"{field} is not a valid duration (seconds and nanos must share a sign, |nanos| < 1e9)",
            "INVALID_DURATION",
            field,
        )
    return s + n / 1e9


def client(c: Client) -> key_admin_pb2.Client:
    """A client as KeyAdmin shows it: never its secret or a hash of it."""
    msg = key_admin_pb2.Client(
        client_id=c.client_id,
        tenant=c.tenant,
        scopes=c.scopes,
        audiences=c.audiences,
        admin=c.admin,
        allow_any_subject=c.allow_any_subject,
        cert_sans=[c.cert_san] if c.cert_san else [],
        allowed_cidrs=c.allowed_cidrs,
        disabled=c.disabled,
        created_at=timestamp(c.created_at),
    )
    if c.secret_expires_at is not None:
        msg.secret_expires_at.CopyFrom(timestamp(c.secret_expires_at))
    return msg


def client_changes(paths: Sequence[str], c: key_admin_pb2.Client) -> dict[str, Any]:
    """UpdateClient's field mask and values as the core's changes (each path once)."""
    if len(paths) > len(UPDATABLE):
        raise InvalidRequest("update_mask names too many fields", "TOO_MANY_VALUES", "update_mask")
    changes: dict[str, Any] = {}
    for path in paths:
        if path not in UPDATABLE:
            raise InvalidRequest(
                f"update_mask names {quote(path)}, which UpdateClient cannot change; it may name "
                + ", ".join(UPDATABLE),
                "INVALID_VALUE",
                "update_mask",
            )
        changes[path] = getattr(c, path)
    return changes


def admin_key(k: SigningKey) -> keys_pb2.Key:
    """A key as KeyAdmin answers show it: with where its private half lives."""
    msg = key(k)
    msg.key_store = k.key_store
    return msg


def key(k: SigningKey) -> keys_pb2.Key:
    """A key as a key set shows it: the public half and the timeline."""
    msg = keys_pb2.Key(
        kid=k.kid,
        alg=k.alg,
        state=KEY_STATE[k.state],
        public_jwk_json=k.public_jwk,
        created_at=timestamp(k.created_at),
        activates_at=timestamp(k.activates_at),
        retires_at=timestamp(k.retires_at),
        expires_at=timestamp(k.expires_at),
        revocation_reason=k.revocation_reason,
        tenant=k.tenant,
    )
    if k.revoked_at is not None:
        msg.revoked_at.CopyFrom(timestamp(k.revoked_at))
    return msg


def jwks_json(keys: Sequence[SigningKey]) -> str:
    return json.dumps({"keys": [json.loads(k.public_jwk) for k in keys]}, separators=(",", ":"))


def keyset(
    issuer: str,
    tenant: str,
    keys: Sequence[SigningKey],
    sequence: int,
    policy: KeyPolicy,
    max_cache_age: float,
) -> keys_pb2.KeySet:
    live = [k for k in keys if k.state.in_key_set]
    msg = keys_pb2.KeySet(
        issuer=issuer,
        tenant=tenant,
        keys=[key(k) for k in live],
        jwks_json=jwks_json(live),
        sequence=sequence,
        max_cache_age=duration(max_cache_age),
    )
    next_at = lifecycle.next_rotation_at(live, policy)
    if next_at is not None:
        msg.next_rotation_at.CopyFrom(timestamp(next_at))
    return msg


def revoked_token(r: RevokedToken) -> keys_pb2.RevokedToken:
    return keys_pb2.RevokedToken(jti=r.jti, expires_at=timestamp(r.expires_at))


def client_revocation(c: ClientRevocation) -> keys_pb2.ClientRevocation:
    return keys_pb2.ClientRevocation(client_id=c.client_id, not_before=timestamp(c.not_before))


def watcher_status(w: FleetWatcher) -> key_admin_pb2.WatcherStatus:
    status = key_admin_pb2.WatcherStatus(
        name=w.name,
        peer=w.peer,
        sent_sequence=w.sequence,
        replica=w.replica,
        kids=w.kids,
        verifications=[
            keys_pb2.VerificationCount(outcome=c.outcome, kid=c.kid, count=c.count) for c in w.verifications
        ],
    )
    if w.connected_at is not None:
        status.connected_at.CopyFrom(timestamp(w.connected_at))
    if w.last_report_at is not None:
        status.last_report_at.CopyFrom(timestamp(w.last_report_at))
    return status


def audit_event(a: AuditEntry) -> key_admin_pb2.AuditEvent:
    return key_admin_pb2.AuditEvent(
        sequence=a.sequence,
        occurred_at=timestamp(a.occurred_at),
        actor=a.actor,
        action=a.action,
        target=a.target,
        outcome=a.outcome,
        tenant=a.tenant,
        details_json=a.details_json,
        hash=a.hash,
        prev_hash=a.prev_hash,
    )


class KeySetEncoder:
    """Builds KeySet and KeyEvent messages with the server's issuer and policy."""

    def __init__(self, issuer: str, policy: KeyPolicy, max_cache_age: float) -> None:
        self.issuer = issuer
        self.policy = policy
        self.max_cache_age = max_cache_age

    def keyset(self, tenant: str, keys: Sequence[SigningKey], sequence: int) -> keys_pb2.KeySet:
        return keyset(self.issuer, tenant, keys, sequence, self.policy, self.max_cache_age)

    def event(self, event: Event) -> bytes:
        """A KeyEvent, serialized once for every subscriber."""
        msg = keys_pb2.KeyEvent(
            sequence=event.sequence, type=EVENT_TYPE[event.type], occurred_at=timestamp(event.occurred_at)
        )
        if event.key is not None:
            msg.key.CopyFrom(key(event.key))
            msg.keyset.CopyFrom(self.keyset(event.tenant, event.keyset, event.sequence))
        if event.revoked is not None:
            msg.revoked_token.CopyFrom(revoked_token(event.revoked))
        if event.client_revocation is not None:
            msg.client_revocation.CopyFrom(client_revocation(event.client_revocation))
        return msg.SerializeToString()

    def snapshot(self, snap: Snapshot, now: float) -> bytes:
        return keys_pb2.KeyEvent(
            sequence=snap.sequence,
            type=keys_pb2.KEY_EVENT_TYPE_SNAPSHOT,
            occurred_at=timestamp(now),
            keyset=self.keyset(snap.tenant, snap.keys, snap.sequence),
            revoked_tokens=[revoked_token(r) for r in snap.revoked],
            client_revocations=[client_revocation(c) for c in snap.client_revocations],
        ).SerializeToString()

    def heartbeat(self, sequence: int, now: float) -> bytes:
        return keys_pb2.KeyEvent(
            sequence=sequence, type=keys_pb2.KEY_EVENT_TYPE_HEARTBEAT, occurred_at=timestamp(now)
        ).SerializeToString()


def token_response_bytes(t: IssuedTokens) -> bytes:
    """The serialized TokenResponse of `t`, written straight from it: the hot path of Issue and
    Refresh builds no message objects (tests/unit/test_token_response.py holds it to protobuf's
    own encoding of the message)."""
    out = bytearray()
    _string(out, 0x0A, t.access_token)
    _string(out, 0x12, "Bearer")
    _timestamp(out, 0x1A, t.expires_at)
    _string(out, 0x22, t.refresh_token)
    if t.refresh_expires_at is not None:
        _timestamp(out, 0x2A, t.refresh_expires_at)
    for scope in t.scopes:
        _string(out, 0x32, scope, always=True)
    for audience in t.audiences:
        _string(out, 0x3A, audience, always=True)
    _string(out, 0x42, t.key_id)
    return bytes(out)


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _string(out: bytearray, tag: int, text: str, *, always: bool = False) -> None:
    """A length-delimited string field; proto3 leaves an empty singular one out."""
    if text or always:
        data = text.encode()
        out.append(tag)
        _varint(out, len(data))
        out += data


def _timestamp(out: bytearray, tag: int, instant: float) -> None:
    """A google.protobuf.Timestamp field, as timestamp(instant) encodes (instants are after 1970)."""
    seconds = int(instant)
    nanos = int((instant - seconds) * 1e9)
    body = bytearray()
    if seconds:
        body.append(0x08)
        _varint(body, seconds)
    if nanos:
        body.append(0x10)
        _varint(body, nanos)
    out.append(tag)
    _varint(out, len(body))
    out += body


def introspection(found: Introspection | None) -> token_service_pb2.IntrospectResponse:
    """An IntrospectResponse: `active: false` and nothing else for a token that is not active."""
    if found is None:
        return token_service_pb2.IntrospectResponse(active=False)
    return token_service_pb2.IntrospectResponse(
        active=True,
        client_id=found.client_id,
        sub=found.subject,
        scope=found.scopes,
        audience=found.audiences,
        expires_at=timestamp(found.expires_at),
        issued_at=timestamp(found.issued_at),
        jti=found.jti,
        kid=found.kid,
        issuer=found.issuer,
    )


# -- the other way: what `rotor status` and `rotor drill` read back over gRPC --------------

KEY_STATE_OF = {v: k for k, v in KEY_STATE.items()}


def signing_key_of(msg: keys_pb2.Key) -> SigningKey:
    """A Key message as the record it was made from (its public half only)."""
    return SigningKey(
        kid=msg.kid,
        tenant=msg.tenant,
        alg=msg.alg,
        state=KEY_STATE_OF[msg.state],
        public_jwk=msg.public_jwk_json,
        sealed_private=None,
        created_at=seconds_of_timestamp(msg.created_at),
        activates_at=seconds_of_timestamp(msg.activates_at),
        retires_at=seconds_of_timestamp(msg.retires_at),
        expires_at=seconds_of_timestamp(msg.expires_at),
        revoked_at=seconds_of_timestamp(msg.revoked_at) if msg.HasField("revoked_at") else None,
        revocation_reason=msg.revocation_reason,
    )


def audit_entry_of(msg: key_admin_pb2.AuditEvent) -> AuditEntry:
    return AuditEntry(
        sequence=msg.sequence,
        occurred_at=seconds_of_timestamp(msg.occurred_at),
        actor=msg.actor,
        action=msg.action,
        target=msg.target,
        outcome=msg.outcome,
        tenant=msg.tenant,
        details_json=msg.details_json,
        prev_hash=msg.prev_hash,
        hash=msg.hash,
    )


def watcher_sighting_of(msg: key_admin_pb2.WatcherStatus) -> WatcherSighting:
    """A WatcherStatus as the status model's record of a watcher."""
    return WatcherSighting(
        name=msg.name,
        replica=msg.replica,
        connected_at=seconds_of_timestamp(msg.connected_at) if msg.HasField("connected_at") else None,
        sequence=msg.sent_sequence,
        kids=frozenset(msg.kids),
        last_report_at=seconds_of_timestamp(msg.last_report_at) if msg.HasField("last_report_at") else None,
        verifications=tuple((v.outcome, v.kid, v.count) for v in msg.verifications),
    )
