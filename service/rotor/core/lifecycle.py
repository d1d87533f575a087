"""Key lifecycle as pure functions of (keys, now, policy).

A key's timeline, with P = publish_lead, R = rotation_period, T = max_access_ttl
and S = clock_skew:

    created, PENDING ──P──► ACTIVE ──R──► RETIRED ──T+S──► EXPIRED
    (KEY_PUBLISHED)        (KEY_ACTIVATED) (KEY_RETIRED)    (KEY_EXPIRED)

The successor of the active key is published at `activated + R - P`, so it
activates when its predecessor retires, never less than P after it was
published. Nothing here reads a clock or a database: `due` says what should
happen now, the rotator does it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from rotor.core.model import KeyState, SigningKey


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """The thresholds of a key's life, in seconds."""

    rotation_period: float
    publish_lead: float
    max_access_ttl: float
    clock_skew: float

    @property
    def verify_window(self) -> float:
        """How long a retired key must stay verifiable: its last token's life plus skew."""
        return self.max_access_ttl + self.clock_skew


class Step(enum.Enum):
    """A transition the rotator applies."""

    BOOTSTRAP = "bootstrap"  # no key signs: publish and activate one at once
    PUBLISH_NEXT = "publish_next"  # publish the active key's successor
    ACTIVATE = "activate"  # the pending key's time has come; its predecessor retires
    EXPIRE = "expire"  # a retired key's last token has expired


@dataclass(frozen=True, slots=True)
class Transition:
    step: Step
    kid: str = ""  # the key it applies to; "" for BOOTSTRAP and PUBLISH_NEXT


def active_key(keys: Sequence[SigningKey]) -> SigningKey | None:
    return next((k for k in keys if k.state is KeyState.ACTIVE), None)


def pending_key(keys: Sequence[SigningKey]) -> SigningKey | None:
    """The pending key that activates first."""
    pending = [k for k in keys if k.state is KeyState.PENDING]
    return min(pending, key=lambda k: k.activates_at) if pending else None


def publish_next_at(active: SigningKey, policy: KeyPolicy) -> float:
    """When the active key's successor should be published."""
    return active.activates_at + policy.rotation_period - policy.publish_lead


def should_publish_next(
    active: SigningKey | None, pending: SigningKey | None, now: float, policy: KeyPolicy
) -> bool:
    return active is not None and pending is None and now >= publish_next_at(active, policy)


def should_activate(pending: SigningKey | None, now: float) -> bool:
    return pending is not None and now >= pending.activates_at


def should_expire(key: SigningKey, now: float) -> bool:
    return key.state is KeyState.RETIRED and now >= key.expires_at


def due(keys: Sequence[SigningKey], now: float, policy: KeyPolicy) -> list[Transition]:
    """The transitions due at `now` for one tenant's live keys, in the order to apply them."""
    steps: list[Transition] = [Transition(Step.EXPIRE, k.kid) for k in keys if should_expire(k, now)]
    active, pending = active_key(keys), pending_key(keys)
    if active is None and pending is None:
        steps.append(Transition(Step.BOOTSTRAP))
    elif active is None and pending is not None:
        steps.append(
            Transition(Step.ACTIVATE, pending.kid)
        )  # nothing signs: the published key takes over now
    elif should_activate(pending, now):
        assert pending is not None
        steps.append(Transition(Step.ACTIVATE, pending.kid))
    elif should_publish_next(active, pending, now, policy):
        steps.append(Transition(Step.PUBLISH_NEXT))
    return steps


def next_change_at(keys: Sequence[SigningKey], policy: KeyPolicy) -> float | None:
    """When the next transition falls due (None when none ever will without a new key)."""
    times = [k.expires_at for k in keys if k.state is KeyState.RETIRED]
    active, pending = active_key(keys), pending_key(keys)
    if pending is not None:
        times.append(pending.activates_at)
    elif active is not None:
        times.append(publish_next_at(active, policy))
    return min(times) if times else None


def next_rotation_at(keys: Sequence[SigningKey], policy: KeyPolicy) -> float | None:
    """When the next key is due to start signing: the published timeline."""
    pending = pending_key(keys)
    if pending is not None:
        return pending.activates_at
    active = active_key(keys)
    return active.activates_at + policy.rotation_period if active is not None else None


def successor_activates_at(active: SigningKey | None, now: float, policy: KeyPolicy) -> float:
    """When a successor published at `now` may activate: on schedule, never before `now + publish_lead`."""
    scheduled = active.activates_at + policy.rotation_period if active is not None else now
    return max(scheduled, now + policy.publish_lead)


def planned_timeline(created_at: float, activates_at: float, policy: KeyPolicy) -> tuple[float, float]:
    """(retires_at, expires_at) as planned for a key that activates at `activates_at`."""
    retires_at = activates_at + policy.rotation_period
    return retires_at, retires_at + policy.verify_window


def retire(key: SigningKey, now: float, policy: KeyPolicy) -> SigningKey:
    """The active key as it retires at `now`; its private half goes, since it never signs again."""
    return key.evolve(
        state=KeyState.RETIRED, retires_at=now, expires_at=now + policy.verify_window, sealed_private=None
    )


def activate(key: SigningKey, now: float, policy: KeyPolicy) -> SigningKey:
    retires_at, expires_at = planned_timeline(key.created_at, now, policy)
    return key.evolve(state=KeyState.ACTIVE, activates_at=now, retires_at=retires_at, expires_at=expires_at)


def expire(key: SigningKey) -> SigningKey:
    """The key out of the key set for good; its private half goes with it."""
    return key.evolve(state=KeyState.EXPIRED, sealed_private=None)


def revoke(key: SigningKey, now: float, reason: str) -> SigningKey:
    return key.evolve(state=KeyState.REVOKED, revoked_at=now, revocation_reason=reason, sealed_private=None)
