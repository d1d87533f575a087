"""The rotator's lease: exactly one process runs the schedule, and a holder that lost it changes nothing."""

from __future__ import annotations

from rotor.clock import FakeClock
from rotor.core.model import KeyState
from rotor.core.rotation import LEASE, Rotator
from rotor.store.sqlite import SqliteStore

from .conftest import MakeKeys
from .support import PUBLISH_LEAD, ROTATION

TTL = 10.0


def rotators(make_keys: MakeKeys, store: SqliteStore, clock: FakeClock) -> tuple[Rotator, Rotator]:
    """Two processes' rotators on one store, as two replicas would have."""
    return (
        Rotator(make_keys(), store, clock, lease_ttl=TTL),
        Rotator(make_keys(), store, clock, lease_ttl=TTL),
    )


async def test_only_the_lease_holder_runs_the_schedule(
    make_keys: MakeKeys, store: SqliteStore, clock: FakeClock
) -> None:
    """The first rotator takes the lease and bootstraps; the second does nothing while it is held."""
    first, second = rotators(make_keys, store, clock)
    assert await first.tick() is not None
    assert first.lease is not None and first.lease.fencing == 1
    assert await second.tick() is None and second.lease is None
    assert len(await store.list_keys("", (KeyState.ACTIVE,))) == 1


async def test_renewing_in_time_keeps_the_fencing_token(
    make_keys: MakeKeys, store: SqliteStore, clock: FakeClock
) -> None:
    """A holder that renews within lease_ttl keeps its lease and its token."""
    first, second = rotators(make_keys, store, clock)
    await first.tick()
    for _ in range(5):
        clock.advance(TTL / 2)
        await first.tick()
        assert await second.tick() is None
    assert first.lease is not None and first.lease.fencing == 1


async def test_a_silent_holder_loses_the_lease_after_its_ttl(
    make_keys: MakeKeys, store: SqliteStore, clock: FakeClock
) -> None:
    """Past lease_ttl without renewal, another takes the lease with a larger fencing token."""
    first, second = rotators(make_keys, store, clock)
    await first.tick()
    clock.advance(TTL + 0.001)
    await second.tick()
    assert second.lease is not None and first.lease is not None
    assert second.lease.fencing > first.lease.fencing
    assert await first.tick() is None and first.lease is None, "the old holder must stand down"


async def test_a_holder_that_lost_the_lease_applies_no_transition(
    make_keys: MakeKeys, store: SqliteStore, clock: FakeClock
) -> None:
    """A stale holder's transaction sees the fencing token moved on and changes nothing."""
    first, second = rotators(make_keys, store, clock)
    await first.tick()
    stale = first.lease
    assert stale is not None
    clock.advance(ROTATION - PUBLISH_LEAD + 1)  # the successor is due to be published, and the lease expired
    assert await store.acquire_lease(LEASE, "another-process", TTL, clock.now()) is not None
    before = await store.last_sequence()
    assert await make_keys().apply_due("", stale) is None
    assert await store.last_sequence() == before, "a transition was applied under a lost lease"
    assert second.lease is None


async def test_stopping_hands_the_lease_over_at_once(
    make_keys: MakeKeys, store: SqliteStore, clock: FakeClock
) -> None:
    """A rotator that stops releases its lease: the next process need not wait out the ttl."""
    first, second = rotators(make_keys, store, clock)
    await first.tick()
    await first.stop()
    assert await second.tick() is not None
    assert second.lease is not None and second.lease.fencing == 2
