"""Ack-gated activation: a due key waits for named watchers, at most max_ack_wait, never less than publish_lead."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from rotor.clock import FakeClock
from rotor.core.keys import KeyManager
from rotor.core.model import AuditEntry, KeyState, SigningKey
from rotor.store.sqlite import SqliteStore

from .conftest import MakeKeys
from .support import PUBLISH_LEAD, ROTATION, T0

MAX_ACK_WAIT = 120.0


class Gate:
    """A stub ack gate: names the watchers in `waiting` for any key, and records what it was asked."""

    def __init__(self, *waiting: str) -> None:
        self.waiting = list(waiting)
        self.asked: list[tuple[str, str]] = []

    def __call__(self, tenant: str, kid: str) -> list[str]:
        self.asked.append((tenant, kid))
        return list(self.waiting)


async def state_of(store: SqliteStore, kid: str) -> KeyState:
    key = await store.get_key(kid)
    assert key is not None
    return key.state


async def activation_entry(store: SqliteStore, kid: str) -> AuditEntry:
    """The key.activated audit entry of `kid`."""
    (entry,) = [e for e in await store.audit_after(0) if e.action == "key.activated" and e.target == kid]
    assert entry.outcome == "success"
    assert isinstance(json.loads(entry.details_json), dict), entry.details_json
    return entry


async def rotated(keys: KeyManager, clock: FakeClock) -> SigningKey:
    """RotateKeys (not immediate) an hour after the first key: the new key activates publish_lead later."""
    clock.advance(3600)
    return await keys.rotate("", immediate=False, reason="drill")


async def scheduled(keys: KeyManager, clock: FakeClock) -> SigningKey:
    """The active key's successor, published by the schedule publish_lead before it is due."""
    clock.set(T0 + ROTATION - PUBLISH_LEAD)
    await keys.apply_due("")
    pending = [k for k in await keys.list_keys("", include_expired=False) if k.state is KeyState.PENDING]
    assert len(pending) == 1
    return pending[0]


PublishPending = Callable[[KeyManager, FakeClock], Awaitable[SigningKey]]


@pytest.fixture
def gate() -> Gate:
    return Gate("billing")


@pytest.fixture
async def gated(make_keys: MakeKeys, gate: Gate) -> KeyManager:
    """A KeyManager with the stub gate and a first active key (bootstrapped at T0)."""
    keys = make_keys(ack_gate=gate, max_ack_wait=MAX_ACK_WAIT)
    await keys.apply_due("")
    return keys


async def test_a_due_key_waits_while_the_gate_names_a_watcher(
    gated: KeyManager, gate: Gate, store: SqliteStore, clock: FakeClock
) -> None:
    """At activates_at, and up to just before max_ack_wait after it, nothing changes; apply_due asks again soon."""
    pending = await rotated(gated, clock)
    before = await store.last_sequence()
    for at in (pending.activates_at, pending.activates_at + MAX_ACK_WAIT - 0.001):
        clock.set(at)
        next_at = await gated.apply_due("")
        assert await state_of(store, pending.kid) is KeyState.PENDING, (
            f"it activated at +{at - pending.activates_at}s"
        )
        assert next_at is not None and at < next_at <= at + 1.0, (
            f"a held-back key must be looked at again a moment later, not at {next_at} (now {at})"
        )
    assert await store.last_sequence() == before, "a held-back activation wrote events"
    assert ("", pending.kid) in gate.asked


async def test_a_held_back_key_activates_as_soon_as_the_gate_clears(
    gated: KeyManager, gate: Gate, store: SqliteStore, clock: FakeClock
) -> None:
    """Once no watcher is named, the next apply_due activates the key, well before max_ack_wait."""
    pending = await rotated(gated, clock)
    clock.set(pending.activates_at)
    await gated.apply_due("")
    assert await state_of(store, pending.kid) is KeyState.PENDING

    clock.advance(1)
    gate.waiting.clear()
    await gated.apply_due("")
    key = await store.get_key(pending.kid)
    assert key is not None and key.state is KeyState.ACTIVE
    assert key.activates_at == clock.now()
    details = (await activation_entry(store, pending.kid)).details_json.lower()
    assert "every" in details and "watcher" in details and "max_ack_wait" not in details, (
        f"the key.activated audit entry does not say every named watcher had been sent it: {details}"
    )


async def test_a_held_back_key_activates_when_max_ack_wait_runs_out(
    gated: KeyManager, gate: Gate, store: SqliteStore, clock: FakeClock
) -> None:
    """A gate that never clears holds the key only until activates_at + max_ack_wait; the audit says so."""
    pending = await rotated(gated, clock)
    clock.set(pending.activates_at + MAX_ACK_WAIT)
    await gated.apply_due("")
    key = await store.get_key(pending.kid)
    assert key is not None and key.state is KeyState.ACTIVE
    assert key.activates_at == clock.now()
    assert gate.waiting == ["billing"]
    details = (await activation_entry(store, pending.kid)).details_json
    assert "max_ack_wait" in details and "billing" in details, (
        f"the key.activated audit entry does not say max_ack_wait ran out, nor name the watcher: {details}"
    )


@pytest.mark.parametrize("waiting", [(), ("billing",)], ids=["gate-clear", "gate-naming-a-watcher"])
@pytest.mark.parametrize("publish", [rotated, scheduled], ids=["rotate-keys", "schedule"])
async def test_no_gate_lets_a_key_activate_before_publish_lead(
    gated: KeyManager,
    gate: Gate,
    store: SqliteStore,
    clock: FakeClock,
    waiting: tuple[str, ...],
    publish: PublishPending,
) -> None:
    """Just before activates_at (publish_lead after publishing) the key stays pending, whatever the gate says."""
    gate.waiting = list(waiting)
    pending = await publish(gated, clock)
    assert pending.activates_at - pending.created_at >= PUBLISH_LEAD
    clock.set(pending.activates_at - 0.001)
    next_at = await gated.apply_due("")
    assert await state_of(store, pending.kid) is KeyState.PENDING
    assert next_at == pending.activates_at
