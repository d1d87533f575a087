"""Key lifecycle: the pure timeline (rotor.core.lifecycle), then KeyManager end to end on a fake clock."""

from __future__ import annotations

import asyncio
import json

import pytest
from rotor.clock import FakeClock
from rotor.core import lifecycle
from rotor.core.crypto import b64url_decode, decode_unverified
from rotor.core.errors import (
    KeyNotFound,
    KeyNotRevocable,
    OperationAlreadyApplied,
    OperationExpired,
    OperationNotFound,
    SelfApproval,
    TenantNotFound,
)
from rotor.core.keys import APPROVAL_WINDOW, KeyManager, KeyRing
from rotor.core.keystore import PKCS11, KeyStores
from rotor.core.lifecycle import Step, Transition
from rotor.core.model import EventType, KeyState, SigningKey
from rotor.store.sqlite import SqliteStore

from .conftest import MakeKeys
from .support import (
    CLOCK_SKEW,
    MAX_ACCESS_TTL,
    POLICY,
    PRIVATE_MEMBERS,
    PUBLISH_LEAD,
    ROTATION,
    T0,
    VERIFY_WINDOW,
    keys_by_state,
    live_public,
    read_events,
    verify,
)

PUBLISHED, ACTIVATED, RETIRED, EXPIRED, REVOKED = (
    EventType.KEY_PUBLISHED,
    EventType.KEY_ACTIVATED,
    EventType.KEY_RETIRED,
    EventType.KEY_EXPIRED,
    EventType.KEY_REVOKED,
)
EPSILON = 0.001


def a_key(kid: str, state: KeyState, activates_at: float = T0, **changes: object) -> SigningKey:
    retires_at, expires_at = lifecycle.planned_timeline(T0, activates_at, POLICY)
    key = SigningKey(
        kid=kid,
        tenant="",
        alg="EdDSA",
        state=state,
        public_jwk="{}",
        sealed_private=b"sealed",
        created_at=T0,
        activates_at=activates_at,
        retires_at=retires_at,
        expires_at=expires_at,
    )
    return key.evolve(**changes)


# -- the pure timeline -------------------------------------------------------------


class TestDue:
    def test_empty_tenant_bootstraps(self) -> None:
        assert lifecycle.due([], T0, POLICY) == [Transition(Step.BOOTSTRAP)]

    def test_tenant_with_only_revoked_and_expired_keys_bootstraps(self) -> None:
        keys = [a_key("r", KeyState.REVOKED), a_key("e", KeyState.EXPIRED)]
        assert lifecycle.due(keys, T0, POLICY) == [Transition(Step.BOOTSTRAP)]

    def test_successor_is_published_at_activation_plus_rotation_period_minus_publish_lead(self) -> None:
        active = a_key("a", KeyState.ACTIVE)
        publish_at = T0 + ROTATION - PUBLISH_LEAD
        assert lifecycle.publish_next_at(active, POLICY) == publish_at
        assert lifecycle.due([active], publish_at - EPSILON, POLICY) == []
        assert lifecycle.due([active], publish_at, POLICY) == [Transition(Step.PUBLISH_NEXT)]
        assert lifecycle.due([active], publish_at + 10 * ROTATION, POLICY) == [Transition(Step.PUBLISH_NEXT)]

    def test_no_second_successor_is_published_while_one_is_pending(self) -> None:
        keys = [a_key("a", KeyState.ACTIVE), a_key("p", KeyState.PENDING, activates_at=T0 + 10 * ROTATION)]
        assert lifecycle.due(keys, T0 + 2 * ROTATION, POLICY) == []

    def test_pending_key_activates_at_its_activates_at_and_not_earlier(self) -> None:
        activates_at = T0 + ROTATION
        keys = [a_key("a", KeyState.ACTIVE), a_key("p", KeyState.PENDING, activates_at=activates_at)]
        assert lifecycle.due(keys, activates_at - EPSILON, POLICY) == []
        assert lifecycle.due(keys, activates_at, POLICY) == [Transition(Step.ACTIVATE, "p")]
        assert lifecycle.due(keys, activates_at + 1, POLICY) == [Transition(Step.ACTIVATE, "p")]

    def test_the_pending_key_that_activates_first_goes_first(self) -> None:
        keys = [
            a_key("a", KeyState.ACTIVE),
            a_key("later", KeyState.PENDING, activates_at=T0 + 200),
            a_key("sooner", KeyState.PENDING, activates_at=T0 + 100),
        ]
        assert lifecycle.due(keys, T0 + 300, POLICY) == [Transition(Step.ACTIVATE, "sooner")]

    def test_without_an_active_key_a_pending_key_activates_at_once(self) -> None:
        pending = a_key("p", KeyState.PENDING, activates_at=T0 + ROTATION)
        assert lifecycle.due([pending], T0, POLICY) == [Transition(Step.ACTIVATE, "p")]

    def test_retired_key_expires_at_exactly_its_expires_at(self) -> None:
        retired = lifecycle.retire(a_key("r", KeyState.ACTIVE), T0 + 50, POLICY)
        active = a_key("a", KeyState.ACTIVE, activates_at=T0 + 50)
        assert lifecycle.due([retired, active], retired.expires_at - EPSILON, POLICY) == []
        assert lifecycle.due([retired, active], retired.expires_at, POLICY) == [Transition(Step.EXPIRE, "r")]

    def test_expirations_come_before_an_activation(self) -> None:
        retired = lifecycle.retire(a_key("r", KeyState.ACTIVE), T0, POLICY)
        keys = [
            retired,
            a_key("a", KeyState.ACTIVE),
            a_key("p", KeyState.PENDING, activates_at=T0 + VERIFY_WINDOW),
        ]
        assert lifecycle.due(keys, T0 + VERIFY_WINDOW, POLICY) == [
            Transition(Step.EXPIRE, "r"),
            Transition(Step.ACTIVATE, "p"),
        ]


class TestTransitions:
    def test_retire_keeps_the_key_verifiable_for_max_access_ttl_plus_clock_skew(self) -> None:
        active = a_key("a", KeyState.ACTIVE)
        retired = lifecycle.retire(active, T0 + 123, POLICY)
        assert retired.state is KeyState.RETIRED
        assert retired.retires_at == T0 + 123
        assert retired.expires_at == T0 + 123 + MAX_ACCESS_TTL + CLOCK_SKEW
        assert retired.sealed_private is None  # it never signs again
        assert retired.activates_at == active.activates_at

    def test_activate_plans_retirement_and_expiry_from_now(self) -> None:
        pending = a_key("p", KeyState.PENDING, activates_at=T0 + 999)
        activated = lifecycle.activate(pending, T0 + 10, POLICY)
        assert activated.state is KeyState.ACTIVE
        assert (activated.activates_at, activated.retires_at, activated.expires_at) == (
            T0 + 10,
            T0 + 10 + ROTATION,
            T0 + 10 + ROTATION + VERIFY_WINDOW,
        )
        assert activated.sealed_private == pending.sealed_private

    def test_expire_destroys_the_private_half(self) -> None:
        expired = lifecycle.expire(a_key("r", KeyState.RETIRED))
        assert (expired.state, expired.sealed_private) == (KeyState.EXPIRED, None)

    def test_revoke_records_when_and_why_and_destroys_the_private_half(self) -> None:
        revoked = lifecycle.revoke(a_key("a", KeyState.ACTIVE), T0 + 7, "leaked")
        assert (revoked.state, revoked.revoked_at, revoked.revocation_reason, revoked.sealed_private) == (
            KeyState.REVOKED,
            T0 + 7,
            "leaked",
            None,
        )

    def test_planned_timeline(self) -> None:
        assert lifecycle.planned_timeline(T0, T0 + PUBLISH_LEAD, POLICY) == (
            T0 + PUBLISH_LEAD + ROTATION,
            T0 + PUBLISH_LEAD + ROTATION + MAX_ACCESS_TTL + CLOCK_SKEW,
        )

    def test_verify_window(self) -> None:
        assert POLICY.verify_window == MAX_ACCESS_TTL + CLOCK_SKEW

    @pytest.mark.parametrize(
        ("published_at", "activates_at"),
        [
            pytest.param(T0 + ROTATION - PUBLISH_LEAD, T0 + ROTATION, id="on-schedule"),
            pytest.param(T0 + ROTATION - 1, T0 + ROTATION - 1 + PUBLISH_LEAD, id="late-gets-full-lead"),
            pytest.param(T0 + 5 * ROTATION, T0 + 5 * ROTATION + PUBLISH_LEAD, id="very-late"),
            pytest.param(T0 + 10, T0 + ROTATION, id="early-waits-for-schedule"),
        ],
    )
    def test_successor_activates_on_schedule_but_never_before_a_full_publish_lead(
        self, published_at: float, activates_at: float
    ) -> None:
        active = a_key("a", KeyState.ACTIVE)
        assert lifecycle.successor_activates_at(active, published_at, POLICY) == activates_at
        assert activates_at - published_at >= PUBLISH_LEAD

    def test_successor_without_an_active_key_waits_a_publish_lead(self) -> None:
        assert lifecycle.successor_activates_at(None, T0, POLICY) == T0 + PUBLISH_LEAD

    def test_successor_published_on_schedule_activates_as_its_predecessor_retires(self) -> None:
        active = a_key("a", KeyState.ACTIVE)
        at = lifecycle.successor_activates_at(active, lifecycle.publish_next_at(active, POLICY), POLICY)
        assert at == active.retires_at

    @pytest.mark.parametrize(
        ("state", "in_key_set"),
        [
            (KeyState.PENDING, True),
            (KeyState.ACTIVE, True),
            (KeyState.RETIRED, True),
            (KeyState.REVOKED, False),
            (KeyState.EXPIRED, False),
        ],
        ids=lambda v: v.value if isinstance(v, KeyState) else str(v),
    )
    def test_only_pending_active_and_retired_keys_are_in_the_key_set(
        self, state: KeyState, in_key_set: bool
    ) -> None:
        assert state.in_key_set is in_key_set


class TestNextChange:
    def test_nothing_changes_without_keys(self) -> None:
        assert lifecycle.next_change_at([], POLICY) is None
        assert lifecycle.next_rotation_at([], POLICY) is None

    def test_with_only_an_active_key_the_next_change_is_publishing_its_successor(self) -> None:
        keys = [a_key("a", KeyState.ACTIVE)]
        assert lifecycle.next_change_at(keys, POLICY) == T0 + ROTATION - PUBLISH_LEAD
        assert lifecycle.next_rotation_at(keys, POLICY) == T0 + ROTATION

    def test_with_a_pending_key_the_next_change_is_its_activation(self) -> None:
        keys = [a_key("a", KeyState.ACTIVE), a_key("p", KeyState.PENDING, activates_at=T0 + 777)]
        assert lifecycle.next_change_at(keys, POLICY) == T0 + 777
        assert lifecycle.next_rotation_at(keys, POLICY) == T0 + 777

    def test_a_retired_key_expiring_sooner_comes_first(self) -> None:
        retired = lifecycle.retire(a_key("r", KeyState.ACTIVE), T0, POLICY)
        keys = [retired, a_key("a", KeyState.ACTIVE)]
        assert lifecycle.next_change_at(keys, POLICY) == T0 + VERIFY_WINDOW
        assert lifecycle.next_rotation_at(keys, POLICY) == T0 + ROTATION


# -- KeyManager end to end ---------------------------------------------------------


async def assert_key_invariants(keys: KeyManager, store: SqliteStore) -> None:
    """Exactly one active key, which the key ring signs with; private halves only where they may sign."""
    stored = await store.list_keys("")
    active = [k for k in stored if k.state is KeyState.ACTIVE]
    assert len(active) == 1, [(k.kid, k.state) for k in stored]
    assert keys.keyring.signer("").kid == active[0].kid
    for key in stored:
        if key.state in (KeyState.PENDING, KeyState.ACTIVE):
            assert key.sealed_private is not None, key
        else:
            assert key.sealed_private is None, key
    await assert_store_holds_exactly_the_keys_that_may_sign(keys, stored)


async def assert_store_holds_exactly_the_keys_that_may_sign(
    keys: KeyManager, stored: list[SigningKey]
) -> None:
    """A key store outside the database (the token) holds the private halves of the pending and active
    keys and nothing else: retired, revoked and expired keys' objects, and lost-race spares, are gone."""
    current = keys.keystores.current
    assert all(k.key_store == current.name for k in stored), [(k.kid, k.key_store) for k in stored]
    if current.name == PKCS11:
        assert await current.held() == {k.kid for k in stored if k.sealed_private is not None}
        for key in stored:
            if key.sealed_private is not None:
                assert key.sealed_private == key.kid.encode()  # the database holds only the label


async def assert_events_carry_the_live_key_set(store: SqliteStore, after: int) -> None:
    """Each key event since `after` (one transaction's) carries the key set as of its end."""
    live = await live_public(store)
    for event in await read_events(store, after):
        assert event.key is not None
        assert [k.public_dict() for k in event.keyset] == live, event.type


async def last(store: SqliteStore) -> int:
    return await store.last_sequence()


async def active_key(store: SqliteStore) -> SigningKey:
    [key] = await store.list_keys("", [KeyState.ACTIVE])
    return key


class TestScheduledRotation:
    async def test_first_key_is_published_then_activated_in_one_transaction(
        self, keys: KeyManager, store: SqliteStore
    ) -> None:
        next_at = await keys.apply_due("")
        events = await read_events(store)
        assert [(e.type, e.occurred_at) for e in events] == [(PUBLISHED, T0), (ACTIVATED, T0)]
        assert events[1].sequence == events[0].sequence + 1
        key = await active_key(store)
        assert {e.key.kid for e in events if e.key} == {key.kid}
        assert (key.created_at, key.activates_at, key.retires_at, key.expires_at) == (
            T0,
            T0,
            T0 + ROTATION,
            T0 + ROTATION + VERIFY_WINDOW,
        )
        assert next_at == T0 + ROTATION - PUBLISH_LEAD
        await assert_events_carry_the_live_key_set(store, 0)
        await assert_key_invariants(keys, store)

    async def test_apply_due_writes_nothing_when_nothing_is_due(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        first = await keys.apply_due("")
        assert first is not None
        before = await last(store)
        clock.set(first - EPSILON)
        assert await keys.apply_due("") == first
        assert await last(store) == before

    async def test_rotation_over_several_periods_follows_the_published_timeline(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        periods = 3
        next_at = await keys.apply_due("")
        await assert_key_invariants(keys, store)
        while next_at is not None and next_at <= T0 + periods * ROTATION + VERIFY_WINDOW:
            seen = await last(store)
            clock.set(next_at - EPSILON)  # not a moment earlier
            assert await keys.apply_due("") == next_at
            assert await last(store) == seen
            clock.set(next_at)
            next_at = await keys.apply_due("")
            assert await last(store) > seen, "a transition was due"
            await assert_events_carry_the_live_key_set(store, seen)
            await assert_key_invariants(keys, store)

        events = await read_events(store)
        ordinal: dict[str, int] = {}
        for event in events:
            assert event.key is not None
            ordinal.setdefault(event.key.kid, len(ordinal))
        timeline = [(e.occurred_at - T0, e.type, ordinal[e.key.kid]) for e in events if e.key]
        expected = [(0.0, PUBLISHED, 0), (0.0, ACTIVATED, 0)]
        for n in range(1, periods + 1):
            expected += [
                (n * ROTATION - PUBLISH_LEAD, PUBLISHED, n),
                (n * ROTATION, ACTIVATED, n),
                (n * ROTATION, RETIRED, n - 1),
                (n * ROTATION + VERIFY_WINDOW, EXPIRED, n - 1),
            ]
        assert timeline == expected

        # every key: published before activated; activation and its predecessor's retirement in
        # one transaction (consecutive, same instant, same key set); expiry later
        by_kid_type = {(e.key.kid, e.type): e for e in events if e.key}
        for kid in ordinal:
            assert by_kid_type[(kid, PUBLISHED)].sequence < by_kid_type[(kid, ACTIVATED)].sequence
        for i, event in enumerate(events):
            if event.type is RETIRED:
                activated = events[i - 1]
                assert activated.type is ACTIVATED and activated.sequence == event.sequence - 1
                assert activated.occurred_at == event.occurred_at and activated.keyset == event.keyset
                expired = by_kid_type[(event.key.kid, EXPIRED)]  # type: ignore[union-attr]
                assert expired.sequence > event.sequence
        states = await keys_by_state(store)
        assert len(states[KeyState.EXPIRED]) == periods and len(states[KeyState.ACTIVE]) == 1

    async def test_successor_published_late_still_gets_a_full_publish_lead(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        await keys.apply_due("")
        first = await active_key(store)
        clock.set(T0 + 3 * ROTATION)  # the process was down when the successor was due
        next_at = await keys.apply_due("")
        [pending] = await store.list_keys("", [KeyState.PENDING])
        assert pending.activates_at == T0 + 3 * ROTATION + PUBLISH_LEAD
        assert next_at == pending.activates_at
        clock.set(pending.activates_at - EPSILON)
        await keys.apply_due("")
        assert (await active_key(store)).kid == first.kid
        clock.set(pending.activates_at)
        await keys.apply_due("")
        assert (await active_key(store)).kid == pending.kid
        await assert_key_invariants(keys, store)


class TestRotate:
    async def test_non_immediate_rotation_publishes_a_key_that_signs_a_publish_lead_later(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        await keys.apply_due("")
        old = await active_key(store)
        clock.advance(100)
        seen = await last(store)
        key = await keys.rotate("", immediate=False, reason="test")
        assert key.state is KeyState.PENDING
        assert (key.created_at, key.activates_at) == (T0 + 100, T0 + 100 + PUBLISH_LEAD)
        assert [(e.type, e.key.kid) for e in await read_events(store, seen) if e.key] == [
            (PUBLISHED, key.kid)
        ]
        await assert_events_carry_the_live_key_set(store, seen)
        await assert_key_invariants(keys, store)  # the old key still signs

        clock.set(key.activates_at - EPSILON)
        await keys.apply_due("")
        assert (await active_key(store)).kid == old.kid
        clock.set(key.activates_at)
        await keys.apply_due("")
        assert (await active_key(store)).kid == key.kid
        assert (await store.get_key(old.kid)).state is KeyState.RETIRED  # type: ignore[union-attr]

    async def test_second_non_immediate_rotation_returns_the_same_pending_key(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        await keys.apply_due("")
        first = await keys.rotate("", immediate=False, reason="one")
        seen = await last(store)
        clock.advance(5)
        second = await keys.rotate("", immediate=False, reason="two")
        assert second == first
        assert await last(store) == seen
        assert len(await store.list_keys("")) == 2

    async def test_immediate_rotation_activates_at_once_retires_the_old_and_expires_a_superseded_pending(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        await keys.apply_due("")
        old = await active_key(store)
        superseded = await keys.rotate("", immediate=False, reason="scheduled")
        clock.advance(60)
        seen = await last(store)
        key = await keys.rotate("", immediate=True, reason="incident")
        now = T0 + 60
        assert (key.state, key.created_at, key.activates_at) == (KeyState.ACTIVE, now, now)
        events = await read_events(store, seen)
        assert [(e.type, e.key.kid) for e in events if e.key] == [
            (PUBLISHED, key.kid),
            (ACTIVATED, key.kid),
            (RETIRED, old.kid),
            (EXPIRED, superseded.kid),
        ]
        assert [e.sequence for e in events] == list(range(seen + 1, seen + 5))
        await assert_events_carry_the_live_key_set(store, seen)
        retired = await store.get_key(old.kid)
        assert retired is not None and retired.state is KeyState.RETIRED
        assert retired.expires_at == now + VERIFY_WINDOW
        expired = await store.get_key(superseded.kid)
        assert expired is not None and expired.state is KeyState.EXPIRED
        await assert_key_invariants(keys, store)

    async def test_immediate_rotation_without_a_pending_key(
        self, keys: KeyManager, store: SqliteStore
    ) -> None:
        await keys.apply_due("")
        old = await active_key(store)
        seen = await last(store)
        key = await keys.rotate("", immediate=True, reason="incident")
        assert [(e.type, e.key.kid) for e in await read_events(store, seen) if e.key] == [
            (PUBLISHED, key.kid),
            (ACTIVATED, key.kid),
            (RETIRED, old.kid),
        ]
        await assert_key_invariants(keys, store)

    async def test_rotating_an_unknown_tenant_raises_tenant_not_found(self, keys: KeyManager) -> None:
        with pytest.raises(TenantNotFound):
            await keys.rotate("acme", immediate=True, reason="x")

    async def test_list_keys_hides_expired_keys_unless_asked(
        self, keys: KeyManager, store: SqliteStore
    ) -> None:
        await keys.apply_due("")
        await keys.rotate("", immediate=False, reason="x")
        await keys.rotate("", immediate=True, reason="x")  # the pending one expires
        listed = await keys.list_keys("", include_expired=False)
        assert KeyState.EXPIRED not in {k.state for k in listed} and len(listed) == 2
        assert len(await keys.list_keys("", include_expired=True)) == 3


class TestRevoke:
    async def test_revoking_the_active_key_without_a_successor_installs_a_new_one_in_the_same_transaction(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        await keys.apply_due("")
        old = await active_key(store)
        clock.advance(30)
        seen = await last(store)
        revocation = await keys.revoke(old.kid, reason="leaked", actor="alice")
        assert (revocation.pending_approval, revocation.operation_id) == (False, "")
        revoked = revocation.key
        assert (revoked.kid, revoked.state, revoked.revoked_at, revoked.revocation_reason) == (
            old.kid,
            KeyState.REVOKED,
            T0 + 30,
            "leaked",
        )
        new = await active_key(store)
        assert new.kid != old.kid and new.activates_at == T0 + 30
        events = await read_events(store, seen)
        assert [(e.type, e.key.kid) for e in events if e.key] == [
            (REVOKED, old.kid),
            (PUBLISHED, new.kid),
            (ACTIVATED, new.kid),
        ]
        assert [e.sequence for e in events] == [seen + 1, seen + 2, seen + 3]
        assert [k.kid for k in events[0].keyset] == [new.kid]  # the revoked key left the set at once
        await assert_events_carry_the_live_key_set(store, seen)
        await assert_key_invariants(keys, store)

    async def test_revoking_the_active_key_activates_its_pending_successor_at_once(
        self, keys: KeyManager, store: SqliteStore, clock: FakeClock
    ) -> None:
        await keys.apply_due("")
        old = await active_key(store)
        successor = await keys.rotate("", immediate=False, reason="scheduled")
        clock.advance(30)
        seen = await last(store)
        await keys.revoke(old.kid, reason="leaked", actor="alice")
        events = await read_events(store, seen)
        assert [(e.type, e.key.kid) for e in events if e.key] == [
            (REVOKED, old.kid),
            (ACTIVATED, successor.kid),
        ]
        new = await active_key(store)
        assert new.kid == successor.kid and new.activates_at == T0 + 30
        assert len(await store.list_keys("")) == 2  # no extra key was made
        await assert_events_carry_the_live_key_set(store, seen)
        await assert_key_invariants(keys, store)

    @pytest.mark.parametrize("which", ["pending", "retired"])
    async def test_revoking_a_key_that_does_not_sign_leaves_the_active_key_alone(
        self, keys: KeyManager, store: SqliteStore, which: str
    ) -> None:
        await keys.apply_due("")
        if which == "pending":
            target = await keys.rotate("", immediate=False, reason="x")
        else:
            target = await active_key(store)
            await keys.rotate("", immediate=True, reason="x")
        active = await active_key(store)
        seen = await last(store)
        await keys.revoke(target.kid, reason="unused", actor="alice")
        assert [(e.type, e.key.kid) for e in await read_events(store, seen) if e.key] == [
            (REVOKED, target.kid)
        ]
        assert (await active_key(store)).kid == active.kid
        await assert_events_carry_the_live_key_set(store, seen)
        await assert_key_invariants(keys, store)

    async def test_revoking_a_revoked_key_again_changes_nothing(
        self, keys: KeyManager, store: SqliteStore
    ) -> None:
        await keys.apply_due("")
        kid = (await active_key(store)).kid
        first = await keys.revoke(kid, reason="leaked", actor="alice")
        seen = await last(store)
        again = await keys.revoke(kid, reason="again", actor="bob")
        assert again.key == first.key and again.key.revocation_reason == "leaked"
        assert await last(store) == seen

    async def test_revoking_an_expired_key_raises_key_not_revocable(
        self, keys: KeyManager, store: SqliteStore
    ) -> None:
        await keys.apply_due("")
        superseded = await keys.rotate("", immediate=False, reason="x")
        await keys.rotate("", immediate=True, reason="x")
        with pytest.raises(KeyNotRevocable):
            await keys.revoke(superseded.kid, reason="late", actor="alice")

    async def test_revoking_an_unknown_kid_raises_key_not_found(self, keys: KeyManager) -> None:
        await keys.apply_due("")
        with pytest.raises(KeyNotFound):
            await keys.revoke("no-such-kid", reason="x", actor="alice")


class TestApproval:
    @pytest.fixture
    async def guarded(self, make_keys: MakeKeys) -> KeyManager:
        keys = make_keys(require_approval=True)
        await keys.apply_due("")
        return keys

    async def test_revocation_waits_for_approval_and_changes_nothing(
        self, guarded: KeyManager, store: SqliteStore
    ) -> None:
        active = await active_key(store)
        seen = await last(store)
        revocation = await guarded.revoke(active.kid, reason="leaked", actor="alice")
        assert revocation.pending_approval is True and revocation.operation_id
        assert revocation.key == active
        assert await store.get_key(active.kid) == active
        assert await last(store) == seen

    async def test_a_different_admin_approves_and_the_key_is_revoked(
        self, guarded: KeyManager, store: SqliteStore
    ) -> None:
        active = await active_key(store)
        revocation = await guarded.revoke(active.kid, reason="leaked", actor="alice")
        with pytest.raises(SelfApproval):
            await guarded.approve(revocation.operation_id, actor="alice")
        assert await store.get_key(active.kid) == active
        seen = await last(store)
        key = await guarded.approve(revocation.operation_id, actor="bob")
        assert (key.kid, key.state, key.revocation_reason) == (active.kid, KeyState.REVOKED, "leaked")
        assert [e.type for e in await read_events(store, seen)] == [REVOKED, PUBLISHED, ACTIVATED]
        await assert_key_invariants(guarded, store)
        with pytest.raises(OperationAlreadyApplied):
            await guarded.approve(revocation.operation_id, actor="carol")

    @pytest.mark.parametrize(
        ("waited", "expired"),
        [
            pytest.param(APPROVAL_WINDOW - 1, False, id="within-window"),
            pytest.param(APPROVAL_WINDOW, True, id="at-window-end"),
        ],
    )
    async def test_approval_after_the_window_raises_operation_expired(
        self, guarded: KeyManager, store: SqliteStore, clock: FakeClock, waited: float, expired: bool
    ) -> None:
        active = await active_key(store)
        revocation = await guarded.revoke(active.kid, reason="leaked", actor="alice")
        clock.advance(waited)
        if expired:
            with pytest.raises(OperationExpired):
                await guarded.approve(revocation.operation_id, actor="bob")
            assert await store.get_key(active.kid) == active
        else:
            assert (await guarded.approve(revocation.operation_id, actor="bob")).state is KeyState.REVOKED

    async def test_approving_an_unknown_operation_raises_operation_not_found(
        self, guarded: KeyManager
    ) -> None:
        with pytest.raises(OperationNotFound):
            await guarded.approve("no-such-operation", actor="bob")


ALGORITHMS = {"EdDSA": "OKP", "ES256": "EC", "ES384": "EC", "PS256": "RSA", "RS256": "RSA"}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
async def test_every_algorithm_yields_a_public_jwk_that_verifies_its_tokens(
    make_keys: MakeKeys, store: SqliteStore, algorithm: str
) -> None:
    keys = make_keys(algorithm=algorithm, rsa_bits=2048)
    await keys.apply_due("")
    key = await active_key(store)
    jwk = json.loads(key.public_jwk)
    assert (jwk["kid"], jwk["kty"], jwk["alg"], jwk["use"]) == (
        key.kid,
        ALGORITHMS[algorithm],
        algorithm,
        "sig",
    )
    assert not set(jwk) & set(PRIVATE_MEMBERS)
    if ALGORITHMS[algorithm] == "RSA":
        assert len(b64url_decode(jwk["n"])) == 2048 // 8
    token = await keys.keyring.signer("").sign({"sub": "svc-a", "iat": int(T0), "exp": int(T0) + 60})
    header, _ = decode_unverified(token)
    assert header == {"alg": algorithm, "kid": key.kid, "typ": "at+jwt"}
    assert verify(token, key)["sub"] == "svc-a"


async def test_racing_schedulers_on_one_database_apply_each_transition_once(
    store: SqliteStore, keystores: KeyStores, clock: FakeClock
) -> None:
    other = await SqliteStore.open(store.path)  # another process on the same file
    try:
        schedulers = [KeyManager(s, keystores, KeyRing(s, keystores), clock, POLICY) for s in (store, other)]

        async def race() -> list[EventType]:
            seen = await last(store)
            await asyncio.gather(*(k.apply_due("") for k in schedulers))
            return [e.type for e in await read_events(store, seen)]

        assert await race() == [PUBLISHED, ACTIVATED]
        clock.set(T0 + ROTATION - PUBLISH_LEAD)
        assert await race() == [PUBLISHED]
        clock.set(T0 + ROTATION)
        assert await race() == [ACTIVATED, RETIRED]
        assert len(await store.list_keys("")) == 2
        assert len(await store.list_keys("", [KeyState.ACTIVE])) == 1
        # the loser's spare keys were destroyed, not left on the token
        await assert_store_holds_exactly_the_keys_that_may_sign(schedulers[0], await store.list_keys(""))
    finally:
        await other.close()
