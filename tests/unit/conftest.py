"""Fixtures for in-process tests: a fake clock, a real SQLite store, and the key machinery.

Everything is built the way rotor.app wires it, with a FakeClock that moves
only when a test moves it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rotor.clock import FakeClock
from rotor.core.crypto import AesGcmSealer
from rotor.core.keys import KeyManager, KeyRing
from rotor.core.keystore import PKCS11, SEALED, KeyStores, SealedKeyStore
from rotor.core.lifecycle import KeyPolicy
from rotor.store.sqlite import SqliteStore

from .support import POLICY, T0

MakeKeys = Callable[..., KeyManager]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "rotor.db")
    yield store
    await store.close()


@pytest.fixture
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture
def sealer(kek: bytes) -> AesGcmSealer:
    return AesGcmSealer(kek)


@pytest.fixture(params=[SEALED, PKCS11])
def keystores(request: pytest.FixtureRequest, sealer: AesGcmSealer) -> Iterator[KeyStores]:
    """Every test of the key machinery runs against both key stores: keys sealed under the KEK, and
    keys on a (SoftHSM2) PKCS#11 token."""
    sealed = SealedKeyStore(sealer)
    if request.param == SEALED:
        yield KeyStores(sealed)
        return
    from rotor.core.hsm import open_token

    hsm = request.getfixturevalue("softhsm")
    token = open_token(hsm.module, hsm.label, hsm.pin, ("EdDSA", "ES256", "ES384", "PS256", "RS256"))
    yield KeyStores(token, {SEALED: sealed})
    token.close()


@pytest.fixture
def make_keys(store: SqliteStore, keystores: KeyStores, clock: FakeClock) -> MakeKeys:
    """A KeyManager on the shared store and clock, as rotor.app builds it; options go to KeyManager."""

    def make(*, policy: KeyPolicy = POLICY, **options: Any) -> KeyManager:
        return KeyManager(store, keystores, KeyRing(store, keystores), clock, policy, **options)

    return make


@pytest.fixture
def keys(make_keys: MakeKeys) -> KeyManager:
    return make_keys()
