"""The store conformance suite: what every backend of rotor.store MUST do.

Each test takes a `store` (an empty, open store) or `open_store` (which opens
another instance on the same database), both provided by tests/store/conftest.py
for the backend the test module selects. A backend's own test module imports
everything here and pins its backend (see test_sqlite.py); nothing in this
file may know which backend it runs against.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pytest
from rotor.core.audit import GENESIS, ChainVerifier, entry_hash
from rotor.core.fleet import FORGET_AFTER, FleetBatch, FleetWatcher, VerificationCount
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
)
from rotor.store import AlreadyExists, Store, StoreError

T0 = 1_800_000_000.0


@dataclass(frozen=True)
class Backend:
    """How the suite reaches one backend.

    `open(where)` opens a store on the database that belongs to the test
    directory `where`, creating it on first use; opening twice gives two
    instances on one database (like the server and the `rotor` CLI).
    `sabotage(where)` breaks that database behind the store's back (its
    tables disappear), to prove reads then fail with the store's own errors.
    `known_bugs` maps a test name to the reason it is expected to fail on
    this backend (marked xfail, strict). `unreachable()` says why the
    backend's database server cannot be reached here (None when it can; a
    server-less backend has none), and `cleanup(where)` removes the test's
    database once its stores are closed.
    """

    name: str
    open: Callable[[Path], Awaitable[Store]]
    sabotage: Callable[[Path], Awaitable[None]]
    known_bugs: dict[str, str] = field(default_factory=dict)
    unreachable: Callable[[], Awaitable[str | None]] | None = None
    cleanup: Callable[[Path], Awaitable[None]] | None = None


class OpenStore(Protocol):
    """Opens another store on the test's database; `close` closes one it opened."""

    async def __call__(self) -> Store: ...

    async def close(self, store: Store) -> None: ...


# -- records -----------------------------------------------------------------


def a_client(client_id: str = "svc-a", **changes: Any) -> Client:
    client = Client(
        client_id=client_id,
        tenant="",
        secret_hash="scrypt$16384$8$1$c2FsdA==$ZGlnZXN0",
        scopes=("write", "read"),  # not sorted: order must survive
        audiences=("https://b.internal", "https://a.internal"),
        created_at=T0,
    )
    return replace(client, **changes)


def a_key(kid: str, state: KeyState = KeyState.PENDING, tenant: str = "", **changes: Any) -> SigningKey:
    key = SigningKey(
        kid=kid,
        tenant=tenant,
        alg="EdDSA",
        state=state,
        public_jwk=f'{{"kid":"{kid}","kty":"OKP","crv":"Ed25519","x":"AAAA","alg":"EdDSA","use":"sig"}}',
        sealed_private=b"\x01sealed-" + kid.encode(),
        created_at=T0,
        activates_at=T0 + 600,
        retires_at=T0 + 600 + 86400,
        expires_at=T0 + 600 + 86400 + 3660,
    )
    return replace(key, **changes)


def a_family(family_id: str = "fam-1", **changes: Any) -> RefreshFamily:
    family = RefreshFamily(
        family_id=family_id,
        client_id="svc-a",
        tenant="",
        subject="svc-a",
        scopes=("write", "read"),
        audiences=("https://a.internal",),
        created_at=T0,
        expires_at=T0 + 30 * 86400,
    )
    return replace(family, **changes)


def a_refresh_token(token_hash: str = "ab" * 32, family_id: str = "fam-1", **changes: Any) -> RefreshToken:
    return replace(RefreshToken(token_hash, family_id, "svc-a", T0, T0 + 86400), **changes)


def a_revocation(jti: str = "jti-1", **changes: Any) -> RevokedToken:
    return replace(RevokedToken(jti, "", "svc-a", T0 + 300, T0, "leaked"), **changes)


def an_operation(operation_id: str = "op-1", **changes: Any) -> Operation:
    operation = Operation(
        operation_id=operation_id,
        tenant="",
        kind="revoke_key",
        target="kid-1",
        reason="compromised",
        requested_by="admin-a",
        created_at=T0,
        expires_at=T0 + 3600,
    )
    return replace(operation, **changes)


async def append(store: Store, *events: tuple[str, float]) -> list[int]:
    """Append (tenant, occurred_at) events in one transaction; their sequences."""
    async with store.transaction() as tx:
        return [await tx.append_event(t, "KEY_PUBLISHED", at, '{"n":1}') for t, at in events]


class Boom(Exception):
    """Raised inside a transaction to roll it back."""


# -- clients -------------------------------------------------------------------


class TestClients:
    async def test_inserted_client_reads_back_equal(self, store: Store) -> None:
        client = a_client(admin=True, allow_any_subject=True, disabled=True, tenant="acme")
        async with store.transaction() as tx:
            await tx.insert_client(client)
            assert await tx.get_client("svc-a") == client
        assert await store.get_client("svc-a") == client

    async def test_unknown_client_reads_as_none(self, store: Store) -> None:
        assert await store.get_client("nobody") is None
        async with store.transaction() as tx:
            assert await tx.get_client("nobody") is None

    async def test_duplicate_client_raises_already_exists_and_keeps_the_first(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
        with pytest.raises(AlreadyExists):
            async with store.transaction() as tx:
                await tx.insert_client(a_client(scopes=("other",)))
        assert await store.get_client("svc-a") == a_client()

    async def test_update_client_replaces_mutable_fields(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
        changed = a_client(
            secret_hash="scrypt$new",
            scopes=("admin",),
            audiences=("https://c.internal",),
            admin=True,
            allow_any_subject=True,
            disabled=True,
        )
        async with store.transaction() as tx:
            assert await tx.update_client(changed) is True
        assert await store.get_client("svc-a") == changed

    async def test_update_of_unknown_client_returns_false(self, store: Store) -> None:
        async with store.transaction() as tx:
            assert await tx.update_client(a_client("ghost")) is False
        assert await store.get_client("ghost") is None

    async def test_allowed_cidrs_read_back_in_order(self, store: Store) -> None:
        client = a_client(allowed_cidrs=("10.0.0.0/8", "fd00::/8"))
        async with store.transaction() as tx:
            await tx.insert_client(client)
        assert await store.get_client("svc-a") == client
        async with store.transaction() as tx:
            assert await tx.update_client(replace(client, allowed_cidrs=())) is True
        stored = await store.get_client("svc-a")
        assert stored is not None and stored.allowed_cidrs == ()

    async def test_delete_client_frees_its_id_and_certificate_san(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_client(a_client(cert_san="spiffe://example.org/a"))
        async with store.transaction() as tx:
            assert await tx.delete_client("svc-a") is True
            assert await tx.get_client("svc-a") is None
        assert await store.get_client("svc-a") is None
        assert await store.get_client_by_cert_san("spiffe://example.org/a") is None
        async with store.transaction() as tx:
            assert await tx.delete_client("svc-a") is False
            await tx.insert_client(a_client(cert_san="spiffe://example.org/a", scopes=("again",)))
        again = await store.get_client("svc-a")
        assert again is not None and again.scopes == ("again",)

    async def test_list_clients_returns_every_client(self, store: Store) -> None:
        async with store.transaction() as tx:
            for name in ("svc-b", "svc-a", "svc-c"):
                await tx.insert_client(a_client(name))
        assert sorted(c.client_id for c in await store.list_clients()) == ["svc-a", "svc-b", "svc-c"]

    async def test_list_tenants_names_tenants_of_keys_and_clients_and_always_the_default(
        self, store: Store
    ) -> None:
        assert await store.list_tenants() == [""]
        async with store.transaction() as tx:
            await tx.insert_client(a_client(tenant="acme"))
            await tx.insert_key(a_key("k1", tenant="zeta"))
        assert sorted(await store.list_tenants()) == ["", "acme", "zeta"]

    async def test_a_client_is_found_by_its_certificate_san(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_client(a_client("svc-a", cert_san="spiffe://example.org/a"))
            await tx.insert_client(a_client("svc-b"))
            await tx.insert_client(a_client("svc-c"))  # no SAN either: NULLs never clash
        found = await store.get_client_by_cert_san("spiffe://example.org/a")
        assert found is not None and found.client_id == "svc-a" and found.cert_san == "spiffe://example.org/a"
        assert await store.get_client_by_cert_san("spiffe://example.org/b") is None
        assert (await store.get_client("svc-b")) is not None and (
            await store.get_client("svc-b")
        ).cert_san is None  # type: ignore[union-attr]

    async def test_two_clients_never_share_a_certificate_san(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_client(a_client("svc-a", cert_san="spiffe://example.org/a"))
        with pytest.raises(AlreadyExists):
            async with store.transaction() as tx:
                await tx.insert_client(a_client("svc-b", cert_san="spiffe://example.org/a"))
        assert await store.get_client("svc-b") is None


# -- keys ----------------------------------------------------------------------


class TestKeys:
    async def test_inserted_key_reads_back_equal(self, store: Store) -> None:
        key = a_key("k1", KeyState.REVOKED, revoked_at=T0 + 5.5, revocation_reason="leaked")
        async with store.transaction() as tx:
            await tx.insert_key(key)
            assert await tx.get_key("k1") == key
        assert await store.get_key("k1") == key

    async def test_a_key_on_a_token_reads_back_with_its_key_store_and_label(self, store: Store) -> None:
        key = a_key("k1", KeyState.ACTIVE, sealed_private=b"k1", key_store="pkcs11")
        async with store.transaction() as tx:
            await tx.insert_key(key)
        assert await store.get_key("k1") == key
        assert (await store.list_keys(""))[0].key_store == "pkcs11"

    async def test_unknown_kid_reads_as_none(self, store: Store) -> None:
        assert await store.get_key("nope") is None

    async def test_duplicate_kid_raises_already_exists(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("k1"))
        with pytest.raises(AlreadyExists):
            async with store.transaction() as tx:
                await tx.insert_key(a_key("k1", tenant="other"))
        assert await store.get_key("k1") == a_key("k1")

    async def test_list_keys_returns_only_the_tenants_keys(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("mine"))
            await tx.insert_key(a_key("theirs", tenant="acme"))
        assert [k.kid for k in await store.list_keys("")] == ["mine"]
        assert [k.kid for k in await store.list_keys("acme")] == ["theirs"]
        assert await store.list_keys("nobody") == []

    async def test_list_keys_filters_by_state(self, store: Store) -> None:
        async with store.transaction() as tx:
            for i, state in enumerate(KeyState):
                await tx.insert_key(a_key(state.value, state, created_at=T0 + i))
        wanted = [KeyState.PENDING, KeyState.RETIRED]
        assert [k.kid for k in await store.list_keys("", wanted)] == ["pending", "retired"]
        async with store.transaction() as tx:
            assert [k.kid for k in await tx.list_keys("", wanted)] == ["pending", "retired"]
        assert await store.list_keys("", ()) == []
        assert len(await store.list_keys("", None)) == len(KeyState)

    async def test_list_keys_returns_oldest_first(self, store: Store) -> None:
        async with store.transaction() as tx:
            for kid, created in (("middle", T0 + 2), ("newest", T0 + 3), ("oldest", T0 + 1)):
                await tx.insert_key(a_key(kid, created_at=created))
        assert [k.kid for k in await store.list_keys("")] == ["oldest", "middle", "newest"]
        async with store.transaction() as tx:
            assert [k.kid for k in await tx.list_keys("")] == ["oldest", "middle", "newest"]

    async def test_update_key_writes_every_mutable_field_when_state_matches(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("k1", KeyState.ACTIVE))
        revoked = a_key(
            "k1",
            KeyState.REVOKED,
            sealed_private=None,
            activates_at=T0 + 1,
            retires_at=T0 + 2,
            expires_at=T0 + 3,
            revoked_at=T0 + 4,
            revocation_reason="compromised",
        )
        async with store.transaction() as tx:
            assert await tx.update_key(revoked, KeyState.ACTIVE) is True
        assert await store.get_key("k1") == revoked

    async def test_update_key_returns_false_and_changes_nothing_when_state_differs(
        self, store: Store
    ) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("k1", KeyState.RETIRED))
        async with store.transaction() as tx:
            changed = a_key("k1", KeyState.EXPIRED, sealed_private=None, expires_at=T0)
            assert await tx.update_key(changed, KeyState.ACTIVE) is False
        assert await store.get_key("k1") == a_key("k1", KeyState.RETIRED)

    async def test_update_of_unknown_key_returns_false(self, store: Store) -> None:
        async with store.transaction() as tx:
            assert await tx.update_key(a_key("ghost", KeyState.ACTIVE), KeyState.PENDING) is False
        assert await store.get_key("ghost") is None


class TestOneActiveKeyPerTenant:
    async def test_inserting_a_second_active_key_fails(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("first", KeyState.ACTIVE))
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.insert_key(a_key("second", KeyState.ACTIVE))
        assert [k.kid for k in await store.list_keys("", [KeyState.ACTIVE])] == ["first"]
        assert await store.get_key("second") is None

    async def test_promoting_a_second_key_to_active_fails_with_a_store_error(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("first", KeyState.ACTIVE))
            await tx.insert_key(a_key("second", KeyState.PENDING))
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.update_key(a_key("second", KeyState.ACTIVE), KeyState.PENDING)
        assert [k.kid for k in await store.list_keys("", [KeyState.ACTIVE])] == ["first"]

    async def test_retiring_then_activating_in_one_transaction_succeeds(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("old", KeyState.ACTIVE))
            await tx.insert_key(a_key("new", KeyState.PENDING))
        async with store.transaction() as tx:
            assert await tx.update_key(a_key("old", KeyState.RETIRED), KeyState.ACTIVE)
            assert await tx.update_key(a_key("new", KeyState.ACTIVE), KeyState.PENDING)
        assert [k.kid for k in await store.list_keys("", [KeyState.ACTIVE])] == ["new"]

    async def test_each_tenant_may_have_its_own_active_key(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("default", KeyState.ACTIVE))
            await tx.insert_key(a_key("acme", KeyState.ACTIVE, tenant="acme"))
        assert [k.kid for k in await store.list_keys("acme", [KeyState.ACTIVE])] == ["acme"]
        assert [k.kid for k in await store.list_keys("", [KeyState.ACTIVE])] == ["default"]


# -- refresh families and tokens -------------------------------------------------


class TestRefreshTokens:
    async def test_family_and_token_read_back_equal(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_family(a_family())
            await tx.insert_refresh_token(a_refresh_token())
            assert await tx.get_family("fam-1") == a_family()
            assert await tx.get_refresh_token("ab" * 32) == a_refresh_token()
        assert await store.get_family("fam-1") == a_family()
        assert await store.get_refresh_token("ab" * 32) == a_refresh_token()
        assert await store.get_family("nope") is None
        assert await store.get_refresh_token("cd" * 32) is None

    async def test_grant_reads_a_token_with_its_family(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_family(a_family())
            await tx.insert_refresh_token(a_refresh_token())
            assert await tx.get_refresh_grant("ab" * 32) == (a_refresh_token(), a_family())
            assert await tx.get_refresh_grant("cd" * 32) is None

    async def test_duplicate_family_raises_already_exists(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_family(a_family())
        with pytest.raises(AlreadyExists):
            async with store.transaction() as tx:
                await tx.insert_family(a_family(subject="someone-else"))
        assert await store.get_family("fam-1") == a_family()

    async def test_duplicate_refresh_token_raises_already_exists(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_family(a_family())
            await tx.insert_refresh_token(a_refresh_token())
        with pytest.raises(AlreadyExists):
            async with store.transaction() as tx:
                await tx.insert_refresh_token(a_refresh_token(issued_at=T0 + 1))
        assert await store.get_refresh_token("ab" * 32) == a_refresh_token()

    async def test_marking_a_refresh_token_used_succeeds_once(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_family(a_family())
            await tx.insert_refresh_token(a_refresh_token())
        async with store.transaction() as tx:
            assert await tx.mark_refresh_token_used("ab" * 32, T0 + 10) is True
        async with store.transaction() as tx:
            assert await tx.mark_refresh_token_used("ab" * 32, T0 + 20) is False
            assert await tx.mark_refresh_token_used("ff" * 32, T0 + 20) is False
        assert await store.get_refresh_token("ab" * 32) == a_refresh_token(used_at=T0 + 10)

    async def test_revoking_a_family_succeeds_once(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_family(a_family())
        async with store.transaction() as tx:
            assert await tx.revoke_family("fam-1", T0 + 10, "reused") is True
        async with store.transaction() as tx:
            assert await tx.revoke_family("fam-1", T0 + 20, "again") is False
            assert await tx.revoke_family("nope", T0 + 20, "ghost") is False
        assert await store.get_family("fam-1") == a_family(revoked_at=T0 + 10, revoke_reason="reused")


class TestRevokedTokens:
    async def test_revocation_reads_back_equal(self, store: Store) -> None:
        async with store.transaction() as tx:
            assert await tx.insert_revoked_token(a_revocation()) is True
        assert await store.get_revoked_token("jti-1") == a_revocation()
        assert await store.get_revoked_token("jti-2") is None

    async def test_duplicate_jti_returns_false_and_keeps_the_first(self, store: Store) -> None:
        async with store.transaction() as tx:
            assert await tx.insert_revoked_token(a_revocation()) is True
        async with store.transaction() as tx:
            assert await tx.insert_revoked_token(a_revocation(revoked_at=T0 + 9, reason="again")) is False
        assert await store.get_revoked_token("jti-1") == a_revocation()

    async def test_a_client_revocation_reads_back_by_client_and_is_replaced(self, store: Store) -> None:
        first = ClientRevocation("svc-a", "", T0 + 1, T0 + 601)
        async with store.transaction() as tx:
            await tx.put_client_revocation(first)
        assert await store.get_client_revocation("svc-a") == first
        assert await store.get_client_revocation("svc-b") is None
        later = ClientRevocation("svc-a", "", T0 + 50, T0 + 650)
        async with store.transaction() as tx:
            await tx.put_client_revocation(later)
        assert await store.get_client_revocation("svc-a") == later


class TestOperations:
    async def test_operation_reads_back_equal(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_operation(an_operation())
        async with store.transaction() as tx:
            assert await tx.get_operation("op-1") == an_operation()
            assert await tx.get_operation("op-2") is None

    async def test_duplicate_operation_raises_already_exists(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_operation(an_operation())
        with pytest.raises(AlreadyExists):
            async with store.transaction() as tx:
                await tx.insert_operation(an_operation(target="kid-2"))
        async with store.transaction() as tx:
            assert await tx.get_operation("op-1") == an_operation()

    async def test_update_operation_applies_once(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_operation(an_operation())
        applied = an_operation(state=OperationState.APPLIED, approved_by="admin-b", applied_at=T0 + 5)
        async with store.transaction() as tx:
            assert await tx.update_operation(applied, OperationState.PENDING.value) is True
        again = replace(applied, approved_by="admin-c", applied_at=T0 + 6)
        async with store.transaction() as tx:
            assert await tx.update_operation(again, OperationState.PENDING.value) is False
            assert await tx.get_operation("op-1") == applied


# -- the event log ---------------------------------------------------------------


class TestEventLog:
    async def test_empty_log_has_sequence_zero(self, store: Store) -> None:
        assert await store.last_sequence() == 0
        assert await store.last_sequence("") == 0
        assert await store.events_after(0) == []
        assert await store.pruned_through() == 0

    async def test_sequences_strictly_increase_within_and_across_transactions(self, store: Store) -> None:
        first = await append(store, ("", T0), ("", T0), ("acme", T0))
        second = await append(store, ("", T0 + 1))
        sequences = first + second
        assert sequences == sorted(set(sequences))
        assert sequences[0] > 0

    async def test_events_read_back_in_sequence_order_with_their_fields(self, store: Store) -> None:
        async with store.transaction() as tx:
            s1 = await tx.append_event("", "KEY_PUBLISHED", T0 + 0.25, '{"a":1}')
            s2 = await tx.append_event("acme", "TOKEN_REVOKED", T0 + 1.5, '{"b":"é"}')
        events = await store.events_after(0)
        assert [(e.sequence, e.tenant, e.type, e.occurred_at, e.payload) for e in events] == [
            (s1, "", "KEY_PUBLISHED", T0 + 0.25, '{"a":1}'),
            (s2, "acme", "TOKEN_REVOKED", T0 + 1.5, '{"b":"é"}'),
        ]

    async def test_events_are_visible_only_after_commit(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
            assert await store.events_after(0) == []
            assert await store.last_sequence() == 0
            assert await store.last_sequence("") == 0
        assert len(await store.events_after(0)) == 1
        assert await store.last_sequence("") > 0

    async def test_events_after_filters_by_tenant_and_limit(self, store: Store) -> None:
        seqs = await append(store, ("a", T0), ("b", T0), ("a", T0), ("b", T0), ("a", T0))
        assert [e.sequence for e in await store.events_after(0, tenant="a")] == seqs[0::2]
        assert [e.sequence for e in await store.events_after(0, tenant="b")] == seqs[1::2]
        assert [e.sequence for e in await store.events_after(0, limit=2)] == seqs[:2]
        assert [e.sequence for e in await store.events_after(seqs[1], limit=2)] == seqs[2:4]
        assert [e.sequence for e in await store.events_after(seqs[0], tenant="a", limit=1)] == [seqs[2]]
        assert await store.events_after(seqs[-1]) == []
        assert await store.events_after(0, tenant="nobody") == []

    async def test_last_sequence_per_tenant_and_overall(self, store: Store) -> None:
        seqs = await append(store, ("a", T0), ("b", T0), ("a", T0), ("b", T0))
        assert await store.last_sequence("a") == seqs[2]
        assert await store.last_sequence("b") == seqs[3]
        assert await store.last_sequence() == seqs[3]
        assert await store.last_sequence("nobody") == 0

    async def test_sequence_after_a_rolled_back_append_is_above_every_committed_one(
        self, store: Store
    ) -> None:
        [committed] = await append(store, ("", T0))
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
                raise Boom
        [later] = await append(store, ("", T0))
        assert later > committed
        assert [e.sequence for e in await store.events_after(0)] == [committed, later]


# -- transactions ----------------------------------------------------------------


class TestTransactions:
    async def test_rolled_back_transaction_leaves_nothing_behind(self, store: Store) -> None:
        heard: list[str] = []
        store.add_commit_listener(lambda: heard.append("commit"))
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.insert_client(a_client())
                await tx.insert_key(a_key("k1", KeyState.ACTIVE))
                await tx.insert_family(a_family())
                await tx.insert_refresh_token(a_refresh_token())
                assert await tx.insert_revoked_token(a_revocation())
                await tx.insert_operation(an_operation())
                await tx.append_event("", "KEY_ACTIVATED", T0, "{}")
                raise Boom
        assert await store.get_client("svc-a") is None
        assert await store.get_key("k1") is None
        assert await store.get_family("fam-1") is None
        assert await store.get_refresh_token("ab" * 32) is None
        assert await store.get_revoked_token("jti-1") is None
        async with store.transaction() as tx:
            assert await tx.get_operation("op-1") is None
        assert await store.events_after(0) == []
        assert await store.last_sequence() == 0
        assert await store.last_sequence("") == 0
        assert (await store.snapshot("", T0)).sequence == 0
        assert heard == []

    async def test_rolled_back_update_restores_the_previous_row(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.insert_key(a_key("k1", KeyState.ACTIVE))
            await tx.insert_family(a_family())
            await tx.insert_refresh_token(a_refresh_token())
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                assert await tx.update_key(a_key("k1", KeyState.RETIRED), KeyState.ACTIVE)
                assert await tx.mark_refresh_token_used("ab" * 32, T0)
                assert await tx.revoke_family("fam-1", T0, "x")
                raise Boom
        assert await store.get_key("k1") == a_key("k1", KeyState.ACTIVE)
        assert await store.get_refresh_token("ab" * 32) == a_refresh_token()
        assert await store.get_family("fam-1") == a_family()

    async def test_store_is_usable_after_a_rollback(self, store: Store) -> None:
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.insert_client(a_client())
                raise Boom
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
        assert await store.get_client("svc-a") == a_client()

    async def test_commit_listener_fires_once_after_a_commit_that_appended_events(self, store: Store) -> None:
        order: list[str] = []
        tasks: list[asyncio.Task[Any] | None] = []

        def listener() -> None:
            order.append("listener")
            tasks.append(asyncio.current_task())

        store.add_commit_listener(listener)
        async with store.transaction() as tx:
            await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
            await tx.append_event("", "KEY_ACTIVATED", T0, "{}")
            order.append("body done")
        assert order == ["body done", "listener"]
        assert tasks == [asyncio.current_task()]  # in the committing task

    async def test_committed_events_are_the_ones_appended_or_none(self, store: Store) -> None:
        store.take_committed_events()
        async with store.transaction() as tx:
            first = await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
            second = await tx.append_event("", "KEY_ACTIVATED", T0, "{}")
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.append_event("", "KEY_RETIRED", T0, "{}")
                raise Boom
        taken = store.take_committed_events()
        # a store that keeps none leaves the hub to read the log; one that keeps them keeps these
        assert taken in ([], await store.events_after(0))
        assert [e.sequence for e in taken] in ([], [first, second])
        assert store.take_committed_events() == []

    async def test_commit_listener_stays_silent_for_commits_without_events(self, store: Store) -> None:
        heard: list[int] = []
        store.add_commit_listener(lambda: heard.append(1))
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
        async with store.transaction():
            pass
        assert heard == []

    async def test_every_commit_listener_is_called(self, store: Store) -> None:
        heard: list[str] = []
        store.add_commit_listener(lambda: heard.append("a"))
        store.add_commit_listener(lambda: heard.append("b"))
        await append(store, ("", T0))
        await append(store, ("", T0))
        assert sorted(heard) == ["a", "a", "b", "b"]


# -- snapshots -------------------------------------------------------------------


class TestSnapshot:
    async def test_snapshot_holds_live_keys_unexpired_revocations_and_newest_sequence(
        self, store: Store
    ) -> None:
        now = T0 + 1000
        async with store.transaction() as tx:
            for i, state in enumerate(KeyState):
                await tx.insert_key(a_key(state.value, state, created_at=T0 + i))
            await tx.insert_key(a_key("other-tenant", KeyState.ACTIVE, tenant="acme"))
            await tx.insert_revoked_token(a_revocation("expired", expires_at=now - 1))
            await tx.insert_revoked_token(a_revocation("expires-now", expires_at=now))
            await tx.insert_revoked_token(a_revocation("live", expires_at=now + 1))
            await tx.insert_revoked_token(a_revocation("other-tenant", tenant="acme", expires_at=now + 1))
        [mine, _theirs] = await append(store, ("", T0), ("acme", T0))
        snapshot = await store.snapshot("", now)
        assert snapshot.tenant == ""
        assert [k.kid for k in snapshot.keys] == ["pending", "active", "retired"]
        assert snapshot.keys[1] == a_key("active", KeyState.ACTIVE, created_at=T0 + 1)
        assert [r.jti for r in snapshot.revoked] == ["live"]
        assert snapshot.revoked[0] == a_revocation("live", expires_at=now + 1)
        assert snapshot.sequence == mine

    async def test_snapshot_of_an_empty_tenant(self, store: Store) -> None:
        snapshot = await store.snapshot("acme", T0)
        assert (snapshot.tenant, snapshot.sequence, snapshot.keys, snapshot.revoked) == ("acme", 0, (), ())


# -- pruning ---------------------------------------------------------------------


class TestPrune:
    async def test_prune_drops_expired_revocations_and_keeps_live_ones(self, store: Store) -> None:
        now = T0 + 1000
        async with store.transaction() as tx:
            await tx.insert_revoked_token(a_revocation("old", expires_at=now - 1))
            await tx.insert_revoked_token(a_revocation("live", expires_at=now + 1))
        assert await store.prune(now, event_horizon=T0) >= 1
        assert await store.get_revoked_token("old") is None
        assert await store.get_revoked_token("live") is not None

    async def test_prune_drops_expired_refresh_tokens_and_families(self, store: Store) -> None:
        now = T0 + 1000
        async with store.transaction() as tx:
            await tx.insert_family(a_family("expired-family", expires_at=now - 1))
            await tx.insert_refresh_token(a_refresh_token("11" * 32, "expired-family", expires_at=now + 50))
            await tx.insert_family(a_family("live-family", expires_at=now + 100))
            await tx.insert_refresh_token(a_refresh_token("22" * 32, "live-family", expires_at=now - 1))
            await tx.insert_refresh_token(a_refresh_token("33" * 32, "live-family", expires_at=now + 50))
        assert await store.prune(now, event_horizon=T0) > 0
        assert await store.get_family("expired-family") is None
        assert await store.get_refresh_token("11" * 32) is None  # its family is gone
        assert await store.get_refresh_token("22" * 32) is None  # expired itself
        assert await store.get_family("live-family") is not None
        assert await store.get_refresh_token("33" * 32) is not None

    async def test_prune_keeps_a_used_refresh_token_while_its_family_lives(self, store: Store) -> None:
        now = T0 + 1000
        async with store.transaction() as tx:
            await tx.insert_family(a_family("live-family", expires_at=now + 100))
            await tx.insert_refresh_token(a_refresh_token("44" * 32, "live-family", expires_at=now - 1))
            assert await tx.mark_refresh_token_used("44" * 32, now - 10)
        await store.prune(now, event_horizon=T0)
        assert await store.get_refresh_token("44" * 32) is not None, "a replay of it would not be caught"

    async def test_prune_drops_old_events_but_keeps_each_tenants_newest(self, store: Store) -> None:
        horizon = T0 + 500
        _s1, s2, s3, s4 = await append(store, ("a", T0), ("b", T0 + 1), ("a", T0 + 2), ("a", T0 + 600))
        assert await store.prune(T0 + 1000, horizon) == 2
        assert [e.sequence for e in await store.events_after(0)] == [s2, s4]
        assert await store.pruned_through() == s3
        assert await store.last_sequence("a") == s4
        assert await store.last_sequence("b") == s2
        assert await store.last_sequence() == s4

    async def test_prune_keeps_a_tenants_only_event_however_old(self, store: Store) -> None:
        [only] = await append(store, ("a", T0))
        assert await store.prune(T0 + 10**6, event_horizon=T0 + 10**6) == 0
        assert [e.sequence for e in await store.events_after(0)] == [only]
        assert await store.pruned_through() == 0

    async def test_pruned_through_never_goes_back(self, store: Store) -> None:
        s1, s2, _s3 = await append(store, ("a", T0), ("a", T0 + 10), ("a", T0 + 20))
        await store.prune(T0 + 100, event_horizon=T0 + 15)
        assert await store.pruned_through() == s2
        await store.prune(T0 + 100, event_horizon=T0 + 5)
        assert await store.pruned_through() == s2
        assert s1 < s2

    async def test_prune_with_nothing_to_do_removes_nothing(self, store: Store) -> None:
        await append(store, ("a", T0 + 10), ("b", T0 + 10))
        async with store.transaction() as tx:
            await tx.insert_revoked_token(a_revocation(expires_at=T0 + 100))
        assert await store.prune(T0, event_horizon=T0) == 0
        assert len(await store.events_after(0)) == 2

    async def test_sequences_keep_increasing_after_a_prune(self, store: Store) -> None:
        old = await append(store, ("a", T0), ("a", T0), ("a", T0))
        await store.prune(T0 + 100, event_horizon=T0 + 100)
        [new] = await append(store, ("a", T0 + 100))
        assert new > max(old)


# -- coordination between processes ---------------------------------------------


class TestLeases:
    async def test_a_free_lease_is_taken_with_a_fencing_token(self, store: Store) -> None:
        assert await store.acquire_lease("rotator", "a", 10, T0) is not None

    async def test_renewing_in_time_keeps_the_fencing_token(self, store: Store) -> None:
        token = await store.acquire_lease("rotator", "a", 10, T0)
        assert await store.acquire_lease("rotator", "a", 10, T0 + 9) == token
        assert await store.acquire_lease("rotator", "a", 10, T0 + 18) == token  # renewed until T0 + 19

    async def test_another_holder_is_refused_while_the_lease_is_unexpired(self, store: Store) -> None:
        await store.acquire_lease("rotator", "a", 10, T0)
        assert await store.acquire_lease("rotator", "b", 10, T0 + 9.9) is None
        async with store.transaction() as tx:
            assert not await tx.holds_lease("rotator", "b", 1, T0 + 9.9)

    async def test_another_holder_takes_an_expired_lease_with_a_larger_token(self, store: Store) -> None:
        first = await store.acquire_lease("rotator", "a", 10, T0)
        second = await store.acquire_lease("rotator", "b", 10, T0 + 10)
        assert first is not None and second is not None and second > first
        assert await store.acquire_lease("rotator", "a", 10, T0 + 15) is None, "b holds it now"

    async def test_the_old_holder_retaking_an_expired_lease_gets_a_larger_token(self, store: Store) -> None:
        first = await store.acquire_lease("rotator", "a", 10, T0)
        again = await store.acquire_lease("rotator", "a", 10, T0 + 11)  # it may have missed things
        assert first is not None and again is not None and again > first

    async def test_a_released_lease_can_be_taken_at_once(self, store: Store) -> None:
        first = await store.acquire_lease("rotator", "a", 10, T0)
        await store.release_lease("rotator", "a")
        second = await store.acquire_lease("rotator", "b", 10, T0 + 1)
        assert first is not None and second is not None and second > first

    async def test_releasing_someone_elses_lease_changes_nothing(self, store: Store) -> None:
        token = await store.acquire_lease("rotator", "a", 10, T0)
        await store.release_lease("rotator", "b")
        await store.release_lease("nothing-by-this-name", "a")
        assert await store.acquire_lease("rotator", "b", 10, T0 + 1) is None
        assert await store.acquire_lease("rotator", "a", 10, T0 + 1) == token

    async def test_leases_are_independent_by_name(self, store: Store) -> None:
        assert await store.acquire_lease("rotator", "a", 10, T0) is not None
        assert await store.acquire_lease("pruner", "b", 10, T0) is not None

    async def test_holds_lease_only_for_the_holder_and_token_until_expiry(self, store: Store) -> None:
        token = await store.acquire_lease("rotator", "a", 10, T0)
        assert token is not None
        async with store.transaction() as tx:
            assert await tx.holds_lease("rotator", "a", token, T0 + 9.9)
            assert not await tx.holds_lease("rotator", "a", token, T0 + 10), "expired"
            assert not await tx.holds_lease("rotator", "a", token + 1, T0)
            assert not await tx.holds_lease("rotator", "b", token, T0)
            assert not await tx.holds_lease("pruner", "a", token, T0)

    async def test_a_holder_that_lost_the_lease_can_tell(self, store: Store) -> None:
        old = await store.acquire_lease("rotator", "a", 10, T0)
        await store.acquire_lease("rotator", "b", 10, T0 + 10)
        assert old is not None
        async with store.transaction() as tx:
            assert not await tx.holds_lease("rotator", "a", old, T0 + 10)
        await store.acquire_lease("rotator", "a", 10, T0 + 20)  # a takes it back: a new token
        async with store.transaction() as tx:
            assert not await tx.holds_lease("rotator", "a", old, T0 + 21), "the old token is stale"

    async def test_a_lease_is_shared_by_every_store_on_the_database(
        self, store: Store, open_store: OpenStore
    ) -> None:
        other = await open_store()
        token = await store.acquire_lease("rotator", "a", 10, T0)
        assert await other.acquire_lease("rotator", "b", 10, T0 + 1) is None
        assert token is not None
        async with other.transaction() as tx:
            assert await tx.holds_lease("rotator", "a", token, T0 + 1)


class TestKeyLock:
    async def test_lock_keys_is_held_through_a_transaction_that_changes_keys(self, store: Store) -> None:
        async with store.transaction() as tx:
            await tx.lock_keys("")
            await tx.lock_keys("acme")
            await tx.lock_keys("")  # again: harmless
            assert await tx.list_keys("") == []
            await tx.insert_key(a_key("k1", KeyState.ACTIVE))
            await tx.append_event("", "KEY_ACTIVATED", T0, "{}")
        assert await store.get_key("k1") == a_key("k1", KeyState.ACTIVE)

    async def test_the_lock_ends_with_its_transaction(self, store: Store, open_store: OpenStore) -> None:
        other = await open_store()
        async with store.transaction() as tx:
            await tx.lock_keys("")
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.lock_keys("")
                raise Boom
        async with asyncio.timeout(5):  # neither a commit nor a rollback leaves it held
            async with other.transaction() as tx:
                await tx.lock_keys("")


# -- several instances on one database -----------------------------------------


class TestSharedDatabase:
    async def test_two_stores_on_one_database_see_each_others_commits(
        self, store: Store, open_store: OpenStore
    ) -> None:
        other = await open_store()
        async with other.transaction() as tx:
            await tx.insert_client(a_client())
        assert await store.get_client("svc-a") == a_client()
        [seq] = await append(store, ("", T0))
        assert [e.sequence for e in await other.events_after(0)] == [seq]
        assert await other.last_sequence("") == seq
        async with other.transaction() as tx:
            assert await tx.update_client(a_client(disabled=True))
        client = await store.get_client("svc-a")
        assert client is not None and client.disabled

    async def test_concurrent_transactions_from_two_stores_lose_no_writes(
        self, store: Store, open_store: OpenStore
    ) -> None:
        other = await open_store()
        async with store.transaction() as tx:
            await tx.insert_client(a_client(scopes=()))

        async def add_scope(on: Store, scope: str) -> int:
            """Read-modify-write: a lost update would drop a scope."""
            async with on.transaction() as tx:
                client = await tx.get_client("svc-a")
                assert client is not None
                await tx.update_client(replace(client, scopes=(*client.scopes, scope)))
                return await tx.append_event("", "KEY_PUBLISHED", T0, "{}")

        jobs = [add_scope(s, f"{name}{i}") for i in range(12) for s, name in ((store, "a"), (other, "b"))]
        sequences = await asyncio.gather(*jobs)
        client = await store.get_client("svc-a")
        assert client is not None
        assert sorted(client.scopes) == sorted(f"{n}{i}" for i in range(12) for n in "ab")
        assert len(set(sequences)) == len(jobs)
        assert sorted(e.sequence for e in await other.events_after(0)) == sorted(sequences)

    async def test_a_reopened_store_finds_what_was_committed(self, open_store: OpenStore) -> None:
        first = await open_store()
        async with first.transaction() as tx:
            await tx.insert_key(a_key("k1", KeyState.ACTIVE))
            await tx.append_event("", "KEY_ACTIVATED", T0, "{}")
        await open_store.close(first)
        reopened = await open_store()
        assert await reopened.get_key("k1") == a_key("k1", KeyState.ACTIVE)
        assert len(await reopened.events_after(0)) == 1


# -- errors ----------------------------------------------------------------------

READS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "get_client": lambda s: s.get_client("svc-a"),
    "list_clients": lambda s: s.list_clients(),
    "get_key": lambda s: s.get_key("k1"),
    "list_keys": lambda s: s.list_keys(""),
    "list_tenants": lambda s: s.list_tenants(),
    "get_refresh_token": lambda s: s.get_refresh_token("ab" * 32),
    "get_family": lambda s: s.get_family("fam-1"),
    "get_revoked_token": lambda s: s.get_revoked_token("jti-1"),
    "snapshot": lambda s: s.snapshot("", T0),
    "last_sequence": lambda s: s.last_sequence(),
    "last_sequence_of_tenant": lambda s: s.last_sequence(""),
    "events_after": lambda s: s.events_after(0),
    "pruned_through": lambda s: s.pruned_through(),
    "fleet_watchers": lambda s: s.fleet_watchers(0.0, 0.0, ""),
    "fleet_totals": lambda s: s.fleet_totals(),
}


@pytest.mark.parametrize("read", list(READS.values()), ids=list(READS))
async def test_reads_of_a_broken_database_raise_only_store_errors(
    store: Store, backend: Backend, tmp_path: Path, read: Callable[[Store], Awaitable[object]]
) -> None:
    await append(store, ("", T0))
    await backend.sabotage(tmp_path)
    with pytest.raises(StoreError):
        await read(store)


WRITES: dict[str, Callable[[Any], Awaitable[object]]] = {
    "insert_client": lambda tx: tx.insert_client(a_client()),
    "update_key": lambda tx: tx.update_key(a_key("k1"), KeyState.PENDING),
    "append_event": lambda tx: tx.append_event("", "KEY_PUBLISHED", T0, "{}"),
}


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
async def test_writes_to_a_broken_database_raise_only_store_errors(
    store: Store, backend: Backend, tmp_path: Path, write: Callable[[Any], Awaitable[object]]
) -> None:
    await append(store, ("", T0))
    await backend.sabotage(tmp_path)
    with pytest.raises(StoreError):
        async with store.transaction() as tx:
            await write(tx)


class TestCancellation:
    """A caller cancelled at any await (a client hanging up mid-call) leaves the store usable."""

    @staticmethod
    async def _cancel_after(spins: int, work: Callable[[], Awaitable[Any]]) -> None:
        task = asyncio.ensure_future(work())
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def test_cancelled_snapshots_do_not_freeze_later_reads(self, store: Store) -> None:
        for spins in range(30):
            await self._cancel_after(spins, lambda: store.snapshot("", T0))
        async with store.transaction() as tx:
            sequence = await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
        assert await store.last_sequence() == sequence
        assert (await store.snapshot("", T0)).sequence == sequence
        assert [e.sequence for e in await store.events_after(0)] == [sequence]

    async def test_cancelled_transactions_roll_back_and_do_not_block_later_ones(self, store: Store) -> None:
        async def append() -> None:
            async with store.transaction() as tx:
                await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
                await tx.append_event("", "KEY_ACTIVATED", T0, "{}")

        for spins in range(30):
            await self._cancel_after(spins, append)
        events = await store.events_after(0)
        assert len(events) % 2 == 0, "a cancelled transaction left half its events behind"
        async with store.transaction() as tx:
            sequence = await tx.append_event("", "KEY_RETIRED", T0, "{}")
        assert await store.last_sequence() == sequence


# -- the audit log ---------------------------------------------------------------


async def audit(store: Store, *entries: tuple[str, str, float], actor: str = "ops") -> list[AuditEntry]:
    """Append (action, tenant, occurred_at) audit entries in one transaction; what append returned."""
    async with store.transaction() as tx:
        return [
            await tx.append_audit(at, actor, action, f"target-{action}", "success", tenant, '{"n":1}')
            for action, tenant, at in entries
        ]


class TestAuditLog:
    async def test_an_empty_log_has_the_genesis_head(self, store: Store) -> None:
        """A new store's audit head is (0, the genesis hash) and the log is empty."""
        assert await store.audit_head() == (0, GENESIS)
        assert await store.audit_after(0) == []

    async def test_appended_entries_are_numbered_from_one_and_chained(self, store: Store) -> None:
        """Sequences start at 1 without gaps; each prev_hash is the previous hash; each hash recomputes."""
        first = await audit(store, ("key.published", "", T0), ("key.activated", "", T0))
        second = await audit(store, ("client.created", "acme", T0 + 1.25))
        async with store.transaction() as tx:
            third = await tx.append_audit(
                T0 + 2.5, "admin-ü", "token.revoked", "jti-1", "denied", "", '{"why":"ünïcode \\"q\\""}'
            )
        entries = [*first, *second, third]
        assert [e.sequence for e in entries] == [1, 2, 3, 4]
        assert entries[0].prev_hash == GENESIS
        for previous, entry in itertools.pairwise(entries):
            assert entry.prev_hash == previous.hash
        for entry in entries:
            assert entry.hash == entry_hash(entry) and len(entry.hash) == 64
        assert (third.occurred_at, third.actor, third.target, third.outcome, third.details_json) == (
            T0 + 2.5,
            "admin-ü",
            "jti-1",
            "denied",
            '{"why":"ünïcode \\"q\\""}',
        )
        assert await store.audit_after(0) == entries, "an entry did not read back as appended"

    async def test_entries_read_back_equal_and_the_head_follows(self, store: Store) -> None:
        """audit_after returns exactly what append_audit returned; audit_head is the last entry."""
        appended = await audit(store, ("a", "", T0 + 0.123456), ("b", "acme", T0 + 7))
        assert await store.audit_head() == (2, appended[-1].hash)
        appended += await audit(store, ("c", "", T0 + 8))
        assert await store.audit_after(0) == appended
        assert await store.audit_head() == (3, appended[-1].hash)
        checker = ChainVerifier()
        checker.feed(await store.audit_after(0))
        checker.finish(*await store.audit_head())
        assert checker.count == 3

    async def test_audit_after_pages_in_sequence_order(self, store: Store) -> None:
        """audit_after(after, limit) returns the entries after `after`, oldest first, at most `limit`."""
        for i in range(7):
            await audit(store, (f"action-{i}", "", T0 + i))
        assert [e.sequence for e in await store.audit_after(2, limit=3)] == [3, 4, 5]
        assert [e.sequence for e in await store.audit_after(5, limit=3)] == [6, 7]
        assert await store.audit_after(7) == []
        pages: list[int] = []
        after = 0
        while page := await store.audit_after(after, limit=2):
            pages += [e.sequence for e in page]
            after = page[-1].sequence
        assert pages == list(range(1, 8))

    async def test_audit_after_filters_by_since_and_tenant(self, store: Store) -> None:
        """`since` keeps entries at or after it; `tenant` keeps one tenant's; None means every tenant."""
        await audit(
            store,
            ("one", "", T0),
            ("two", "acme", T0 + 10),
            ("three", "", T0 + 20),
            ("four", "acme", T0 + 30),
            ("five", "zeta", T0 + 40),
        )

        def actions(entries: list[AuditEntry]) -> list[str]:
            return [e.action for e in entries]

        assert actions(await store.audit_after(0, since=T0 + 20)) == ["three", "four", "five"]
        assert actions(await store.audit_after(0, since=T0 + 20.5)) == ["four", "five"]
        assert actions(await store.audit_after(0, tenant="acme")) == ["two", "four"]
        assert actions(await store.audit_after(0, tenant="")) == ["one", "three"]
        assert actions(await store.audit_after(0, tenant=None)) == ["one", "two", "three", "four", "five"]
        assert actions(await store.audit_after(2, since=T0 + 5, tenant="acme")) == ["four"]
        assert actions(await store.audit_after(0, tenant="acme", limit=1)) == ["two"]
        assert await store.audit_after(0, tenant="nobody") == []
        assert await store.audit_after(0, since=T0 + 41) == []

    async def test_entries_of_a_rolled_back_transaction_vanish_and_the_head_stays(self, store: Store) -> None:
        """A rolled-back append leaves no entry and no head move; the next append reuses its number."""
        [kept] = await audit(store, ("kept", "", T0))
        with pytest.raises(Boom):
            async with store.transaction() as tx:
                await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
                await tx.append_audit(T0 + 1, "ops", "lost", "x", "success", "", "{}")
                await tx.append_audit(T0 + 1, "ops", "lost-too", "x", "success", "", "{}")
                raise Boom
        assert await store.audit_after(0) == [kept]
        assert await store.audit_head() == (1, kept.hash)
        assert await store.last_sequence() == 0, "the event of the rolled-back transaction stayed"
        [after] = await audit(store, ("after", "", T0 + 2))
        assert (after.sequence, after.prev_hash) == (2, kept.hash)

    async def test_prune_never_touches_the_audit_log(self, store: Store) -> None:
        """Event retention and expiry pruning leave every audit entry and the head in place."""
        appended = await audit(store, ("old", "", T0), ("older", "", T0 - 86400 * 365))
        await store.prune(T0 + 10 * 86400 * 365, event_horizon=T0 + 10 * 86400 * 365)
        assert await store.audit_after(0) == appended
        assert await store.audit_head() == (2, appended[-1].hash)

    async def test_two_stores_appending_at_once_build_one_unbroken_chain(
        self, store: Store, open_store: OpenStore
    ) -> None:
        """Concurrent appenders on one database never share a number or fork the chain."""
        other = await open_store()

        async def append_one(on: Store, i: int) -> int:
            async with on.transaction() as tx:
                if i % 4 < 2:  # a key change: its event first, as the Tx contract asks
                    await tx.append_event("", "KEY_PUBLISHED", T0, "{}")
                # the others write only the audit entry (client.created, admin.denied, family.revoked)
                entry = await tx.append_audit(
                    T0 + i, f"actor-{i}", "key.published", f"k{i}", "success", "", "{}"
                )
                for _ in range(i % 3):  # hold the commit a moment: a chance for the other store to interleave
                    await asyncio.sleep(0.001)
                return entry.sequence

        sequences = await asyncio.gather(*(append_one(store if i % 2 else other, i) for i in range(24)))
        assert sorted(sequences) == list(range(1, 25))
        checker = ChainVerifier()
        checker.feed(await other.audit_after(0))
        checker.finish(*await store.audit_head())
        assert checker.count == 24

    async def test_audit_reads_and_appends_of_a_broken_database_raise_store_errors(
        self, store: Store, backend: Backend, tmp_path: Path
    ) -> None:
        """With the tables gone, audit_head, audit_after and append_audit raise only StoreError."""
        await audit(store, ("kept", "", T0))
        await backend.sabotage(tmp_path)
        with pytest.raises(StoreError):
            await store.audit_head()
        with pytest.raises(StoreError):
            await store.audit_after(0)
        with pytest.raises(StoreError):
            async with store.transaction() as tx:
                await tx.append_audit(T0, "ops", "lost", "x", "success", "", "{}")


# -- the fleet view --------------------------------------------------------------------------


def a_watcher(
    name: str, replica: str = "r1", *, tenant: str = "", at: float = T0, streaming: bool = True, **fields: Any
) -> FleetWatcher:
    values: dict[str, Any] = {
        "tenant": tenant,
        "name": name,
        "replica": replica,
        "peer": "ipv4:10.0.0.7:5000" if streaming else "",
        "connected_at": at if streaming else None,
        "sent_sequence": 3 if streaming else 0,
        "sent_kids": ("k1", "k2") if streaming else (),
        "reported_sequence": 0,
        "reported_kids": (),
        "last_seen": at,
        "last_report_at": None,
    }
    return FleetWatcher(**(values | fields))


async def test_fleet_watchers_are_written_in_batches_and_read_back(store: Store) -> None:
    await store.write_fleet(
        FleetBatch(streams=[a_watcher("orders"), a_watcher("billing", tenant="acme")], replica="r1", now=T0)
    )
    (orders,) = await store.fleet_watchers(T0 - 1, T0 - 900, "")
    assert orders == a_watcher("orders")
    everyone = await store.fleet_watchers(T0 - 1, None, None)
    assert [(w.tenant, w.name) for w in everyone] == [("", "orders"), ("acme", "billing")]
    assert await store.fleet_watchers(T0 + 1, None, None) == [], "none seen since"


async def test_a_report_updates_what_a_watcher_holds_and_keeps_its_streams_replica(store: Store) -> None:
    await store.write_fleet(FleetBatch(streams=[a_watcher("orders", "r1")], replica="r1", now=T0))
    report = a_watcher(
        "orders",
        "r2",
        at=T0 + 5,
        streaming=False,
        reported_sequence=4,
        reported_kids=("k2", "k3"),
        last_report_at=T0 + 5,
    )
    await store.write_fleet(FleetBatch(reports=[report], replica="r2", now=T0 + 5))
    (orders,) = await store.fleet_watchers(T0, None, "")
    assert orders.replica == "r1" and orders.connected_at == T0, "the stream's replica stays"
    assert (orders.reported_sequence, orders.reported_kids, orders.last_report_at) == (
        4,
        ("k2", "k3"),
        T0 + 5,
    )
    assert orders.sent_kids == ("k1", "k2") and orders.last_seen == T0 + 5


async def test_a_closed_stream_is_marked_only_on_its_own_replica(store: Store) -> None:
    await store.write_fleet(
        FleetBatch(streams=[a_watcher("orders", "r2", at=T0 + 1)], replica="r2", now=T0 + 1)
    )
    await store.write_fleet(FleetBatch(closed=[("", "orders")], replica="r1", now=T0 + 2))
    (orders,) = await store.fleet_watchers(T0, None, "")
    assert orders.connected_at == T0 + 1, "r1's stream ended; the watcher streams from r2 now"
    await store.write_fleet(FleetBatch(closed=[("", "orders")], replica="r2", now=T0 + 3))
    (orders,) = await store.fleet_watchers(T0, None, "")
    assert orders.connected_at is None and orders.last_seen == T0 + 3


async def test_counts_add_up_per_minute_and_in_the_running_totals(store: Store) -> None:
    await store.write_fleet(FleetBatch(streams=[a_watcher("orders")], replica="r1", now=T0))
    for bucket, count in ((T0 - 1200, 5), (T0 - 60, 2), (T0, 3)):
        batch = FleetBatch(
            counts=[("", "orders", bucket, "OK", "k1", count), ("", "orders", bucket, "UNKNOWN_KEY", "x", 1)]
        )
        await store.write_fleet(replace(batch, replica="r1", now=T0))
    (orders,) = await store.fleet_watchers(T0 - 1, T0 - 900, "")
    assert sorted(orders.verifications, key=lambda c: c.outcome) == [
        VerificationCount("OK", "k1", 5),
        VerificationCount("UNKNOWN_KEY", "x", 2),
    ], "only the minutes since counts_since"
    assert await store.fleet_totals() == [("", "orders", "OK", 10), ("", "orders", "UNKNOWN_KEY", 3)]


async def test_pruning_drops_old_minutes_and_forgotten_watchers_with_their_totals(store: Store) -> None:
    old, recent = a_watcher("old", at=T0 - FORGET_AFTER - 10), a_watcher("recent", at=T0)
    batch = FleetBatch(
        streams=[old, recent],
        counts=[
            ("", "old", T0 - 3600, "OK", "", 1),
            ("", "recent", T0 - 3600, "OK", "", 1),
            ("", "recent", T0, "OK", "", 1),
        ],
        replica="r1",
        now=T0,
    )
    await store.write_fleet(batch)
    await store.write_fleet(FleetBatch(replica="r1", now=T0, prune=True))
    assert [w.name for w in await store.fleet_watchers(0.0, None, "")] == ["recent"]
    (recent_row,) = await store.fleet_watchers(0.0, 0.0, "")
    assert recent_row.verifications == (VerificationCount("OK", "", 1),), "the hour-old minute is gone"
    assert await store.fleet_totals() == [("", "recent", "OK", 2)], (
        "totals outlive the window, not the watcher"
    )


async def test_two_instances_see_each_others_fleet_writes(store: Store, open_store: OpenStore) -> None:
    other = await open_store()
    await other.write_fleet(FleetBatch(streams=[a_watcher("orders", "r2")], replica="r2", now=T0))
    assert [w.replica for w in await store.fleet_watchers(T0 - 1, None, "")] == ["r2"]
