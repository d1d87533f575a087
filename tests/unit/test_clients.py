"""Client registration and authentication (scrypt costs ~50 ms a hash: few clients here)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from rotor.clock import FakeClock
from rotor.core import clients
from rotor.core.clients import (
    CACHE_TTL,
    Authenticator,
    ClientExists,
    Registration,
    hash_secret,
    new_secret,
    register_client,
    reset_secret,
    set_disabled,
    verify_secret,
)
from rotor.core.errors import ClientDisabled, InvalidClient, InvalidRequest
from rotor.core.model import Client
from rotor.store.sqlite import SqliteStore

from .support import T0


@pytest.fixture(scope="module")
def hashed() -> tuple[str, str]:
    return "s3cret-value", hash_secret("s3cret-value")


def test_verify_secret_accepts_the_right_secret(hashed: tuple[str, str]) -> None:
    secret, stored = hashed
    assert stored.startswith("scrypt$") and secret not in stored
    assert verify_secret(stored, secret) is True


@pytest.mark.parametrize("wrong", ["", "s3cret-valuE", "s3cret-value ", "s3cret"])
def test_verify_secret_refuses_a_wrong_secret(hashed: tuple[str, str], wrong: str) -> None:
    assert verify_secret(hashed[1], wrong) is False


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("", id="empty"),
        pytest.param("scrypt$16384$8$1$salt", id="missing-part"),
        pytest.param("bcrypt$16384$8$1$c2FsdA==$ZGlnZXN0", id="other-scheme"),
        pytest.param("scrypt$x$8$1$c2FsdA==$ZGlnZXN0", id="bad-number"),
        pytest.param("scrypt$16384$8$1$!!!$ZGlnZXN0", id="bad-base64"),
    ],
)
def test_verify_secret_refuses_a_malformed_hash(stored: str) -> None:
    assert verify_secret(stored, "anything") is False


def test_hashing_the_same_secret_twice_gives_different_hashes(hashed: tuple[str, str]) -> None:
    secret, stored = hashed
    again = hash_secret(secret)
    assert again != stored and verify_secret(again, secret)


# -- registration ------------------------------------------------------------------------


@pytest.fixture
async def registered(store: SqliteStore, clock: FakeClock) -> Registration:
    return await register_client(
        store, clock, "svc-a", scopes=["read", "write", "read"], audiences=["https://api.internal"]
    )


async def test_registration_stores_the_client_with_only_a_hash_of_its_secret(
    store: SqliteStore, registered: Registration
) -> None:
    client = await store.get_client("svc-a")
    assert client == registered.client
    assert (client.scopes, client.audiences, client.admin, client.created_at) == (
        ("read", "write"),
        ("https://api.internal",),
        False,
        T0,
    )
    assert registered.secret not in client.secret_hash
    assert len(registered.secret) >= 43  # 256 bits
    assert verify_secret(client.secret_hash, registered.secret)


async def test_registering_a_taken_id_raises_client_exists(
    store: SqliteStore, clock: FakeClock, registered: Registration
) -> None:
    with pytest.raises(ClientExists):
        await register_client(store, clock, "svc-a", admin=True)
    assert await store.get_client("svc-a") == registered.client


@pytest.mark.parametrize("client_id", ["", "-x", "has space", "x" * 129, "é"])
async def test_registering_an_invalid_id_is_refused(
    store: SqliteStore, clock: FakeClock, client_id: str
) -> None:
    with pytest.raises(InvalidRequest):
        await register_client(store, clock, client_id)
    assert await store.list_clients() == []


# -- authentication ------------------------------------------------------------------------
#
# The client's record is read on every call (a disabled client or a reset secret counts at
# once); only the slow scrypt check of a secret that matched is cached for CACHE_TTL.


class Counting:
    """Counts calls to the store's get_client and to the scrypt check."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.scrypt_checks = 0
        read: Callable[[str], Awaitable[Client | None]] = store.get_client

        async def get_client(client_id: str) -> Client | None:
            self.reads += 1
            return await read(client_id)

        def verify(stored: str, secret: str) -> bool:
            self.scrypt_checks += 1
            return verify_secret(stored, secret)

        monkeypatch.setattr(store, "get_client", get_client)
        monkeypatch.setattr(clients, "verify_secret", verify)


@pytest.fixture
def counting(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> Counting:
    return Counting(store, monkeypatch)


async def test_verified_secret_skips_the_slow_check_within_the_cache_ttl(
    store: SqliteStore, clock: FakeClock, registered: Registration, counting: Counting
) -> None:
    auth = Authenticator(store, clock)
    assert await auth.authenticate("svc-a", registered.secret) == registered.client
    clock.advance(CACHE_TTL - 1)
    assert await auth.authenticate("svc-a", registered.secret) == registered.client
    assert counting.scrypt_checks == 1
    assert counting.reads == 2  # the record itself is always read


async def test_cached_verification_expires_after_the_cache_ttl(
    store: SqliteStore, clock: FakeClock, registered: Registration, counting: Counting
) -> None:
    auth = Authenticator(store, clock)
    await auth.authenticate("svc-a", registered.secret)
    clock.advance(CACHE_TTL)
    await auth.authenticate("svc-a", registered.secret)
    assert counting.scrypt_checks == 2


async def test_wrong_secret_is_refused_even_when_the_right_one_is_cached(
    store: SqliteStore, clock: FakeClock, registered: Registration, counting: Counting
) -> None:
    auth = Authenticator(store, clock)
    await auth.authenticate("svc-a", registered.secret)
    with pytest.raises(InvalidClient):
        await auth.authenticate("svc-a", registered.secret + "x")
    with pytest.raises(InvalidClient):
        await auth.authenticate("svc-a", "")
    assert await auth.authenticate("svc-a", registered.secret) == registered.client
    assert counting.scrypt_checks == 3  # the right secret stayed cached


async def test_concurrent_first_checks_of_one_secret_share_one_scrypt_run(
    store: SqliteStore, clock: FakeClock, registered: Registration, counting: Counting
) -> None:
    auth = Authenticator(store, clock)
    results = await asyncio.gather(*(auth.authenticate("svc-a", registered.secret) for _ in range(10)))
    assert results == [registered.client] * 10
    assert counting.scrypt_checks == 1


async def test_unknown_client_is_refused(store: SqliteStore, clock: FakeClock) -> None:
    with pytest.raises(InvalidClient):
        await Authenticator(store, clock).authenticate("nobody", "secret")


async def test_disabled_client_is_refused_at_once_even_when_its_secret_is_cached(
    store: SqliteStore, clock: FakeClock, registered: Registration
) -> None:
    auth = Authenticator(store, clock)
    await auth.authenticate("svc-a", registered.secret)
    await set_disabled(store, clock, "svc-a", True)
    with pytest.raises(ClientDisabled):
        await auth.authenticate("svc-a", registered.secret)
    await set_disabled(store, clock, "svc-a", False)
    assert (await auth.authenticate("svc-a", registered.secret)).disabled is False


async def test_reset_secret_stops_the_old_one_at_once(
    store: SqliteStore, clock: FakeClock, registered: Registration
) -> None:
    auth = Authenticator(store, clock)
    await auth.authenticate("svc-a", registered.secret)
    fresh = await reset_secret(store, clock, "svc-a")
    with pytest.raises(InvalidClient):
        await auth.authenticate("svc-a", registered.secret)
    assert (await auth.authenticate("svc-a", fresh)).client_id == "svc-a"


def test_a_new_secret_is_256_random_bits_and_never_reads_as_a_command_line_option() -> None:
    made = {new_secret() for _ in range(3000)}  # about 47 of them would start with "-" by chance
    assert len(made) == 3000
    assert all(len(s) == 43 and not s.startswith("-") for s in made)
    assert {s[0] for s in made} >= {"_", "A", "z", "0"}, "the first character is still random"
