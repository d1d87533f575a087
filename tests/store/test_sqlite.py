"""The store conformance suite on SQLite, and what only SQLite has: files on disk."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import aiosqlite
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from rotor.clock import FakeClock
from rotor.core.crypto import AesGcmSealer, PrivateKey, private_from_bytes
from rotor.core.keys import KeyManager, KeyRing
from rotor.core.keystore import KeyStores, SealedKeyStore
from rotor.core.lifecycle import KeyPolicy
from rotor.store import Store, StoreError, Unavailable
from rotor.store.sqlite import SqliteStore

from .conformance import *  # noqa: F403  (the suite, run here against SQLite)
from .conformance import OpenStore

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def _database_bytes(store: Store) -> bytes:
    path = cast(SqliteStore, store).path
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def _raw_private_bytes(private: PrivateKey) -> list[bytes]:
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return [
            private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        ]
    if isinstance(private, ec.EllipticCurvePrivateKey):
        size = (private.curve.key_size + 7) // 8
        return [private.private_numbers().private_value.to_bytes(size, "big")]
    numbers = private.private_numbers()
    return [n.to_bytes((n.bit_length() + 7) // 8, "big") for n in (numbers.d, numbers.p, numbers.q)]


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
async def test_database_files_hold_no_private_key_in_the_clear(open_store: OpenStore, algorithm: str) -> None:
    store = await open_store()
    kek = os.urandom(32)
    stores = KeyStores(SealedKeyStore(AesGcmSealer(kek)))
    keys = KeyManager(
        store,
        stores,
        KeyRing(store, stores),
        FakeClock(),
        KeyPolicy(rotation_period=86400, publish_lead=600, max_access_ttl=3600, clock_skew=60),
        algorithm=algorithm,
    )
    secrets: list[bytes] = []

    async def remember_private_halves() -> None:
        for key in await store.list_keys(""):
            if key.sealed_private is not None:
                der = AesGcmSealer(kek).unseal(key.sealed_private, key.kid.encode())
                secrets.extend([der, *_raw_private_bytes(private_from_bytes(der))])

    await keys.apply_due("")  # the first key
    await remember_private_halves()
    await keys.rotate("", immediate=True, reason="test")  # the first one retires
    await keys.rotate("", immediate=False, reason="test")  # and a pending one
    await remember_private_halves()
    all_keys = await store.list_keys("")
    assert len(all_keys) == 3 and len(secrets) >= 6

    for on_disk in (_database_bytes(store), None):
        if on_disk is None:  # again once the WAL is checkpointed into the main file
            await open_store.close(store)
            on_disk = _database_bytes(store)
        for secret in secrets:
            assert secret not in on_disk
        for key in all_keys:
            assert json.loads(key.public_jwk)["x"].encode() in on_disk


async def test_reads_of_a_corrupted_file_raise_store_errors(store: Store) -> None:
    path = cast(SqliteStore, store).path
    with path.open("r+b") as f:
        f.write(os.urandom(3 * 4096))
    with pytest.raises(StoreError):
        await store.get_client("svc-a")


def _connections() -> list[aiosqlite.Connection]:
    return [o for o in gc.get_objects() if isinstance(o, aiosqlite.Connection)]


@pytest.fixture
async def reap_threads() -> AsyncIterator[set[threading.Thread]]:
    """The threads alive before the test. After it, stops the worker thread of every aiosqlite
    connection the test left open: such a thread keeps its connection alive and, not being a
    daemon, would keep the test process from exiting."""
    before_threads = set(threading.enumerate())
    before = {id(c) for c in _connections()}
    yield before_threads
    for connection in _connections():
        if id(connection) not in before:
            connection.stop()
    for thread in set(threading.enumerate()) - before_threads:
        await asyncio.to_thread(thread.join, 10)


@pytest.fixture
def not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database" * 200)
    return path


async def test_opening_a_file_that_is_not_a_database_raises_unavailable(
    backend: object, not_a_database: Path, reap_threads: set[threading.Thread]
) -> None:
    with pytest.raises(Unavailable):
        await SqliteStore.open(not_a_database)


async def test_failing_to_open_leaves_no_connection_thread_behind(
    backend: object, not_a_database: Path, reap_threads: set[threading.Thread]
) -> None:
    with pytest.raises(Unavailable):
        await SqliteStore.open(not_a_database)
    started = [t for t in threading.enumerate() if t not in reap_threads]
    for thread in started:  # a closed connection's thread ends just after close() returns
        thread.join(5)  # not via asyncio.to_thread: its executor thread would count as started
    assert [t for t in started if t.is_alive()] == []
