"""The records the core reasons about and the store persists.

All instants are float seconds since the Unix epoch (see `rotor.clock`).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from typing import Any

DEFAULT_TENANT = ""


class KeyState(enum.Enum):
    """Where a signing key is in its life; it only moves forward."""

    PENDING = "pending"  # published, not yet signing
    ACTIVE = "active"  # signs new tokens; exactly one per tenant
    RETIRED = "retired"  # verify only, until its last token expires
    REVOKED = "revoked"  # pulled from the key set by an operator
    EXPIRED = "expired"  # out of the key set, private half destroyed

    @property
    def in_key_set(self) -> bool:
        """Whether a verifier may need the key."""
        match self:
            case KeyState.PENDING | KeyState.ACTIVE | KeyState.RETIRED:
                return True
            case KeyState.REVOKED | KeyState.EXPIRED:
                return False


LIVE_STATES = (KeyState.PENDING, KeyState.ACTIVE, KeyState.RETIRED)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key: its public half, the reference to its private half, and its timeline."""

    kid: str
    tenant: str
    alg: str
    state: KeyState
    public_jwk: str  # JSON text: kid, kty, alg, use and the public members
    # the private half as the database holds it: sealed under the KEK (key_store "sealed") or the
    # label of the token object holding it (key_store "pkcs11"); None once destroyed
    sealed_private: bytes | None
    created_at: float
    activates_at: float
    retires_at: float
    expires_at: float
    revoked_at: float | None = None
    revocation_reason: str = ""
    key_store: str = "sealed"  # which KeyStore holds the private half (rotor.core.keystore)

    def public_dict(self) -> dict[str, Any]:
        """The key without its private half, as JSON-ready values (event payloads)."""
        return {
            "kid": self.kid,
            "tenant": self.tenant,
            "alg": self.alg,
            "state": self.state.value,
            "public_jwk": self.public_jwk,
            "created_at": self.created_at,
            "activates_at": self.activates_at,
            "retires_at": self.retires_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revocation_reason": self.revocation_reason,
            "key_store": self.key_store,
        }

    @classmethod
    def from_public_dict(cls, d: dict[str, Any]) -> SigningKey:
        return cls(
            kid=d["kid"],
            tenant=d["tenant"],
            alg=d["alg"],
            state=KeyState(d["state"]),
            public_jwk=d["public_jwk"],
            sealed_private=None,
            created_at=d["created_at"],
            activates_at=d["activates_at"],
            retires_at=d["retires_at"],
            expires_at=d["expires_at"],
            revoked_at=d["revoked_at"],
            revocation_reason=d["revocation_reason"],
            key_store=d.get("key_store", "sealed"),  # events written before the column existed
        )

    def evolve(self, **changes: Any) -> SigningKey:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Client:
    """A registered calling service and what it may ask for."""

    client_id: str
    tenant: str
    secret_hash: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    admin: bool = False
    allow_any_subject: bool = False
    disabled: bool = False
    created_at: float = 0.0
    cert_san: str | None = None  # a client certificate's URI SAN that authenticates it (mTLS)
    secret_expires_at: float | None = None  # the secret stops working then (--expires)
    previous_secret_hash: str | None = None  # the secret before rotate-secret, during its overlap
    previous_secret_expires_at: float | None = None
    allowed_cidrs: tuple[str, ...] = ()  # networks it may call from (normalized CIDRs); empty: any


@dataclass(frozen=True, slots=True)
class RefreshFamily:
    """One grant: every refresh token descended from one Issue."""

    family_id: str
    client_id: str
    tenant: str
    subject: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    created_at: float
    expires_at: float  # the grant's absolute end, however often refreshed
    revoked_at: float | None = None
    revoke_reason: str = ""


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """One single-use refresh token, known only by its SHA-256."""

    token_hash: str
    family_id: str
    client_id: str
    issued_at: float
    expires_at: float
    used_at: float | None = None


@dataclass(frozen=True, slots=True)
class RevokedToken:
    """An access token revoked before its expiry; kept until then."""

    jti: str
    tenant: str
    client_id: str
    expires_at: float
    revoked_at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this process holds (see Store.acquire_lease): checked again inside each transaction it guards."""

    name: str
    holder: str
    fencing: int


class OperationState(enum.Enum):
    PENDING = "pending"
    APPLIED = "applied"


@dataclass(frozen=True, slots=True)
class Operation:
    """A dangerous change waiting for a second admin's approval."""

    operation_id: str
    tenant: str
    kind: str  # "revoke_key"
    target: str  # the kid
    reason: str
    requested_by: str
    created_at: float
    expires_at: float
    state: OperationState = OperationState.PENDING
    approved_by: str = ""
    applied_at: float | None = None


class EventType(enum.Enum):
    """What an event in the log reports."""

    KEY_PUBLISHED = "KEY_PUBLISHED"
    KEY_ACTIVATED = "KEY_ACTIVATED"
    KEY_RETIRED = "KEY_RETIRED"
    KEY_REVOKED = "KEY_REVOKED"
    KEY_EXPIRED = "KEY_EXPIRED"
    TOKEN_REVOKED = "TOKEN_REVOKED"
    CLIENT_REVOKED = "CLIENT_REVOKED"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the event log, decoded.

    A key event carries the key it is about and the complete key set as of the
    end of the transaction that wrote it; a token event carries the token.
    """

    sequence: int
    tenant: str
    type: EventType
    occurred_at: float
    key: SigningKey | None = None
    keyset: tuple[SigningKey, ...] = ()
    revoked: RevokedToken | None = None
    client_revocation: ClientRevocation | None = None

    @staticmethod
    def encode_payload(
        key: SigningKey | None,
        keyset: tuple[SigningKey, ...],
        revoked: RevokedToken | None,
        client_revocation: ClientRevocation | None = None,
    ) -> str:
        doc: dict[str, Any] = {}
        if client_revocation is not None:
            doc["client_revocation"] = {
                "client_id": client_revocation.client_id,
                "not_before": client_revocation.not_before,
                "expires_at": client_revocation.expires_at,
            }
        if key is not None:
            doc["key"] = key.public_dict()
            doc["keyset"] = [k.public_dict() for k in keyset]
        if revoked is not None:
            doc["revoked"] = {
                "jti": revoked.jti,
                "client_id": revoked.client_id,
                "expires_at": revoked.expires_at,
                "revoked_at": revoked.revoked_at,
                "reason": revoked.reason,
            }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def decode(cls, sequence: int, tenant: str, type_: str, occurred_at: float, payload: str) -> Event:
        doc = json.loads(payload)
        key = SigningKey.from_public_dict(doc["key"]) if "key" in doc else None
        keyset = tuple(SigningKey.from_public_dict(k) for k in doc.get("keyset", ()))
        revoked = None
        if "revoked" in doc:
            r = doc["revoked"]
            revoked = RevokedToken(
                jti=r["jti"],
                tenant=tenant,
                client_id=r["client_id"],
                expires_at=r["expires_at"],
                revoked_at=r["revoked_at"],
                reason=r["reason"],
            )
        client_revocation = None
        if "client_revocation" in doc:
            c = doc["client_revocation"]
            client_revocation = ClientRevocation(c["client_id"], tenant, c["not_before"], c["expires_at"])
        return cls(sequence, tenant, EventType(type_), occurred_at, key, keyset, revoked, client_revocation)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event row as the store keeps it: the payload is the core's JSON."""

    sequence: int
    tenant: str
    type: str
    occurred_at: float
    payload: str

    def decode(self) -> Event:
        return Event.decode(self.sequence, self.tenant, self.type, self.occurred_at, self.payload)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log (see rotor.core.audit)."""

    sequence: int
    occurred_at: float
    actor: str
    action: str
    target: str
    outcome: str
    tenant: str
    details_json: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ClientRevocation:
    """Every access token of a client issued before `not_before` is revoked (RevokeClientTokens)."""

    client_id: str
    tenant: str
    not_before: float
    expires_at: float  # when the last token it covers expires (kept clock_skew longer, like RevokedToken)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A tenant's state at one instant: what a new watcher starts from."""

    tenant: str
    sequence: int
    keys: tuple[SigningKey, ...]
    revoked: tuple[RevokedToken, ...]
    client_revocations: tuple[ClientRevocation, ...] = ()
