"""The status of one tenant, as an operator sees it: the key timeline, the fleet of named
watchers, and the newest audit events.

One model, many views: the HTTP side port serves it as `/status.json` and draws it as
`/status`, and `rotor status` prints it, built here from the same records GetRotationStatus,
ListKeys and ListAuditEvents return. `build_status` is pure; `StatusView` gathers its inputs
from the core and the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from rotor.clock import Clock
from rotor.core import lifecycle
from rotor.core.fleet import FleetWatcher
from rotor.core.keys import KeyManager
from rotor.core.model import AuditEntry, KeyState, SigningKey
from rotor.store import Store

SHORT_KID = 8  # characters of a kid shown where space is short
AUDIT_SHOWN = 20  # the newest audit events in the model
VERIFICATION_WINDOW = 15 * 60.0  # watchers' verification counts cover this much of the past
OK = "OK"
EXPIRED = "TOKEN_EXPIRED"


@dataclass(frozen=True, slots=True)
class WatcherSighting:
    """What the server knows of one named watcher: where it is connected, how far it got, which
    kids it holds, and its verification outcomes (outcome, kid, count) over the last 15 minutes."""

    name: str
    replica: str
    connected_at: float | None  # None for a watcher that reports but does not stream
    sequence: int
    kids: frozenset[str]
    last_report_at: float | None = None
    verifications: tuple[tuple[str, str, int], ...] = ()


def sighting_of(watcher: FleetWatcher) -> WatcherSighting:
    """A watcher as the fleet view (and so GetRotationStatus) reports it."""
    return WatcherSighting(
        name=watcher.name,
        replica=watcher.replica,
        connected_at=watcher.connected_at,
        sequence=watcher.sequence,
        kids=frozenset(watcher.kids),
        last_report_at=watcher.last_report_at,
        verifications=tuple((v.outcome, v.kid, v.count) for v in watcher.verifications),
    )


@dataclass(frozen=True, slots=True)
class KeyLine:
    """One key of the set, with its whole timeline."""

    kid: str
    alg: str
    state: str
    published_at: float
    activates_at: float
    retires_at: float
    expires_at: float

    @property
    def short_kid(self) -> str:
        return self.kid[:SHORT_KID]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "short_kid": self.short_kid,
            "alg": self.alg,
            "state": self.state,
            "published_at": iso(self.published_at),
            "activates_at": iso(self.activates_at),
            "retires_at": iso(self.retires_at),
            "expires_at": iso(self.expires_at),
        }


@dataclass(frozen=True, slots=True)
class WatcherLine:
    """One named watcher on one replica, judged against the tenant's key set."""

    name: str
    replica: str
    connected_at: float | None
    sequence: int
    behind: int  # events the watcher has yet to get
    kids: tuple[str, ...]
    holds_active: bool | None  # None when the tenant has no such key
    holds_pending: bool | None
    last_report_at: float | None
    outcomes: dict[str, int]  # outcome -> count over the last 15 minutes

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return self.total - self.outcomes.get(OK, 0)

    @property
    def expired(self) -> int:
        return self.outcomes.get(EXPIRED, 0)

    @property
    def failure_ratio(self) -> float | None:
        """The share of verifications that failed, for any reason (None with none at all)."""
        return self.failed / self.total if self.total else None

    @property
    def other_failure_ratio(self) -> float | None:
        """The share that failed for a reason other than expiry: the one that should stay near 0."""
        return (self.failed - self.expired) / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "replica": self.replica,
            "connected_at": iso(self.connected_at) if self.connected_at is not None else None,
            "sequence": self.sequence,
            "behind": self.behind,
            "kids": list(self.kids),
            "holds_active": self.holds_active,
            "holds_pending": self.holds_pending,
            "last_report_at": iso(self.last_report_at) if self.last_report_at is not None else None,
            "verifications": {
                "window_seconds": int(VERIFICATION_WINDOW),
                "outcomes": dict(sorted(self.outcomes.items())),
                "total": self.total,
                "failed": self.failed,
                "expired": self.expired,
                "failure_ratio": _ratio(self.failure_ratio),
                "other_failure_ratio": _ratio(self.other_failure_ratio),
            },
        }


@dataclass(frozen=True, slots=True)
class AuditLine:
    sequence: int
    occurred_at: float
    actor: str
    action: str
    target: str
    outcome: str
    details_json: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "occurred_at": iso(self.occurred_at),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "details_json": self.details_json,
        }


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """The status of one tenant at `now`. `audit` is None where the viewer may not see it."""

    tenant: str
    now: float
    latest_sequence: int
    next_rotation_at: float | None
    keys: tuple[KeyLine, ...]
    watchers: tuple[WatcherLine, ...]
    audit: tuple[AuditLine, ...] | None = field(default=None)

    @property
    def active(self) -> KeyLine | None:
        return next((k for k in self.keys if k.state == KeyState.ACTIVE.value), None)

    @property
    def pending(self) -> KeyLine | None:
        return next((k for k in self.keys if k.state == KeyState.PENDING.value), None)

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready values: `/status.json` and `rotor status --json`."""
        active, pending = self.active, self.pending
        doc: dict[str, Any] = {
            "tenant": self.tenant,
            "now": iso(self.now),
            "latest_sequence": self.latest_sequence,
            "next_rotation_at": iso(self.next_rotation_at) if self.next_rotation_at is not None else None,
            "active_kid": active.kid if active is not None else None,
            "pending_kid": pending.kid if pending is not None else None,
            "keys": [k.to_dict() for k in self.keys],
            "watchers": [w.to_dict() for w in self.watchers],
        }
        if self.audit is not None:
            doc["audit"] = [a.to_dict() for a in self.audit]
        return doc


def build_status(
    tenant: str,
    *,
    now: float,
    latest_sequence: int,
    next_rotation_at: float | None,
    keys: Iterable[SigningKey],
    watchers: Iterable[WatcherSighting],
    audit: Iterable[AuditEntry] | None,
) -> TenantStatus:
    """The model from its records: the keys of the set (pending, active, retired; revoked and expired
    ones are no longer in it), every named watcher, and the newest AUDIT_SHOWN audit entries."""
    in_set = sorted((k for k in keys if k.state.in_key_set), key=lambda k: (k.activates_at, k.kid))
    lines = tuple(
        KeyLine(
            kid=k.kid,
            alg=k.alg,
            state=k.state.value,
            published_at=k.created_at,
            activates_at=k.activates_at,
            retires_at=k.retires_at,
            expires_at=k.expires_at,
        )
        for k in in_set
    )
    active = next((k.kid for k in in_set if k.state is KeyState.ACTIVE), None)
    pending = [k.kid for k in in_set if k.state is KeyState.PENDING]
    current = frozenset(k.kid for k in in_set)
    fleet = tuple(
        sorted(
            (_watcher_line(w, latest_sequence, current, active, pending) for w in watchers),
            key=lambda w: (w.name, w.replica, w.connected_at or 0.0),
        )
    )
    shown = None
    if audit is not None:
        newest = sorted(audit, key=lambda a: a.sequence)[-AUDIT_SHOWN:]
        shown = tuple(
            AuditLine(a.sequence, a.occurred_at, a.actor, a.action, a.target, a.outcome, a.details_json)
            for a in reversed(newest)  # newest first
        )
    return TenantStatus(tenant, now, latest_sequence, next_rotation_at, lines, fleet, shown)


def _watcher_line(
    w: WatcherSighting,
    latest_sequence: int,
    current: frozenset[str],
    active: str | None,
    pending: Sequence[str],
) -> WatcherLine:
    outcomes: Counter[str] = Counter()
    for outcome, _kid, count in w.verifications:
        outcomes[outcome] += count
    # A watcher that has the newest event has the whole current key set (every key event carries
    # it), even before its next report says so; one that is behind holds what it said it holds.
    held = w.kids | current if w.sequence >= latest_sequence else w.kids
    return WatcherLine(
        name=w.name,
        replica=w.replica,
        connected_at=w.connected_at,
        sequence=w.sequence,
        behind=max(latest_sequence - w.sequence, 0),
        kids=tuple(sorted(w.kids)),
        holds_active=(active in held) if active is not None else None,
        holds_pending=all(kid in held for kid in pending) if pending else None,
        last_report_at=w.last_report_at,
        outcomes=dict(outcomes),
    )


def iso(instant: float) -> str:
    """An instant as RFC 3339 UTC, to the second."""
    return datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


class FleetSource(Protocol):
    """Where the named watchers come from: rotor.core.fleet.Fleet, as GetRotationStatus reads it."""

    async def watchers(self, tenant: str) -> list[FleetWatcher]: ...


class StatusView:
    """Gathers a tenant's status from the core and the store: the keys as ListKeys lists them, the
    watchers and newest sequence as GetRotationStatus reports them, and the audit log as
    ListAuditEvents pages it."""

    def __init__(self, keys: KeyManager, store: Store, fleet: FleetSource, clock: Clock) -> None:
        self._keys, self._store, self._fleet, self._clock = keys, store, fleet, clock

    async def tenant_status(self, tenant: str, *, with_audit: bool) -> TenantStatus:
        """`tenant`'s status (TenantNotFound for an unknown one); the audit events only `with_audit`."""
        keys = await self._keys.list_keys(tenant, include_expired=False)
        latest = await self._store.last_sequence(tenant)
        watchers = [sighting_of(w) for w in await self._fleet.watchers(tenant)]
        audit = await self.newest_audit(tenant) if with_audit else None
        live = [k for k in keys if k.state.in_key_set]
        return build_status(
            tenant,
            now=self._clock.now(),
            latest_sequence=latest,
            next_rotation_at=lifecycle.next_rotation_at(live, self._keys.policy),
            keys=keys,
            watchers=watchers,
            audit=audit,
        )

    async def newest_audit(self, tenant: str) -> list[AuditEntry]:
        """The tenant's newest AUDIT_SHOWN audit entries, oldest first.

        The log is read forwards only; look back over a window of the newest entries, widening it
        until it holds enough of the tenant's (other tenants' entries share the sequence).
        """
        head, _ = await self._store.audit_head()
        window = AUDIT_SHOWN * 10
        while True:
            start = max(head - window, 0)
            found = await self._store.audit_after(start, tenant=tenant, limit=window * 2)  # room for new ones
            if len(found) >= AUDIT_SHOWN or start == 0:
                return found[-AUDIT_SHOWN:]
            window *= 10
