"""Fixtures for in-process tests: a fake clock, a real SQLite store, and the key machinery.

Everything is built the way rotor.app wires it, with a FakeClock that moves
only when a test moves it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from rotor.clock import FakeClock
from rotor.core.crypto import AesGcmSealer
from rotor.core.keys import KeyManager, KeyRing
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


@pytest.fixture
def make_keys(store: SqliteStore, sealer: AesGcmSealer, clock: FakeClock) -> MakeKeys:
    """A KeyManager on the shared store and clock, as rotor.app builds it; options go to KeyManager."""

    def make(*, policy: KeyPolicy = POLICY, **options: Any) -> KeyManager:
        return KeyManager(store, sealer, KeyRing(store, sealer), clock, policy, **options)

    return make


@pytest.fixture
def keys(make_keys: MakeKeys) -> KeyManager:
    return make_keys()
