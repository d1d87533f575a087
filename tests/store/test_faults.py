"""SQLite under faults raises only the store's Unavailable, never a sqlite3 error, and commits
nothing of a transaction that failed: a write lock held by another process past the busy timeout
(reads go on meanwhile), a database that is full, and any driver error where a transaction begins.
A full disk makes SQLite itself roll the transaction back; what a caller still writes through that
Tx afterwards is refused, not committed on its own; and when it rolls back a group's COMMIT, every
transaction of the group fails and none is kept."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import pytest
from rotor.core.model import SigningKey
from rotor.store import Unavailable
from rotor.store import sqlite as sqlite_store
from rotor.store.sqlite import SqliteStore

from .conformance import a_client, a_key
from .locks import write_lock_held

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

BUSY_TIMEOUT_MS = 100


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)


async def cap_at_current_size(store: SqliteStore) -> None:
    """Let the database grow no more, as on a full disk: what needs a new page fails."""
    (pages,) = store._writer.execute("PRAGMA page_count").fetchone()
    store._writer.execute(f"PRAGMA max_page_count = {int(pages)}")


def a_big_key(kid: str) -> SigningKey:
    """A key whose row cannot fit in the free space of pages already there."""
    return a_key(kid, public_jwk='{"x":"' + "A" * 100_000 + '"}')


async def test_a_write_lock_held_past_the_busy_timeout_raises_unavailable_and_reads_go_on(
    store: SqliteStore,
) -> None:
    async with store.transaction() as tx:
        await tx.insert_client(a_client())
    async with write_lock_held(store.path):
        with pytest.raises(Unavailable, match="busy"):
            async with store.transaction() as tx:
                await tx.insert_client(a_client("svc-b"))
        assert await store.get_client("svc-a") == a_client()
    assert await store.get_client("svc-b") is None
    async with store.transaction() as tx:
        await tx.insert_client(a_client("svc-b"))
    assert await store.get_client("svc-b") == a_client("svc-b")


async def test_a_full_database_raises_unavailable_and_keeps_nothing_of_the_transaction(
    store: SqliteStore,
) -> None:
    await cap_at_current_size(store)
    with pytest.raises(Unavailable, match="full"):
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
            await tx.insert_key(a_big_key("k1"))
    assert await store.get_client("svc-a") is None
    assert await store.get_key("k1") is None

    store._writer.execute("PRAGMA max_page_count = 1000000000")
    async with store.transaction() as tx:
        await tx.insert_client(a_client())
        await tx.insert_key(a_big_key("k1"))
    assert await store.get_key("k1") is not None


class FailingBegin:
    """A writer connection whose next BEGIN fails with `error`."""

    def __init__(self, conn: sqlite3.Connection, error: sqlite3.Error) -> None:
        self._conn = conn
        self._error: sqlite3.Error | None = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if sql.startswith("BEGIN") and self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._conn.execute(sql, parameters)


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database is locked"),
        sqlite3.OperationalError("disk I/O error"),
        sqlite3.DatabaseError("database disk image is malformed"),
        sqlite3.DatabaseError("file is not a database"),
    ],
    ids=["locked", "io-error", "malformed", "not-a-database"],
)
async def test_any_driver_error_as_a_transaction_begins_raises_unavailable(
    store: SqliteStore, error: sqlite3.Error
) -> None:
    store._writer = FailingBegin(store._writer, error)
    with pytest.raises(Unavailable):
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
    async with store.transaction() as tx:
        await tx.insert_client(a_client())
    assert await store.get_client("svc-a") == a_client()


async def test_nothing_written_after_a_full_disk_error_in_a_transaction_is_kept(
    store: SqliteStore,
) -> None:
    await cap_at_current_size(store)
    with pytest.raises(Unavailable):
        async with store.transaction() as tx:
            with contextlib.suppress(Unavailable):
                await tx.insert_key(a_big_key("k1"))
            await tx.insert_client(a_client("svc-after"))
    assert await store.get_client("svc-after") is None, "a write after the failure was committed alone"


class FullDiskAtCommit:
    """A writer connection whose next COMMIT fails as on a full disk: SQLite rolls the whole
    transaction back and raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.tripped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.tripped:
            self.tripped = True
            self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, parameters)


async def test_a_group_whose_commit_fails_fails_every_member_and_keeps_none_of_them(
    store: SqliteStore,
) -> None:
    store._writer = FullDiskAtCommit(store._writer)

    async def add(name: str) -> None:
        async with store.transaction() as tx:
            await tx.insert_client(a_client(name))

    results = await asyncio.gather(add("svc-a"), add("svc-b"), return_exceptions=True)
    assert [type(r) for r in results] == [Unavailable, Unavailable], results
    assert all("retry" in str(r) for r in results), results
    assert await store.get_client("svc-a") is None
    assert await store.get_client("svc-b") is None

    await asyncio.gather(add("svc-a"), add("svc-b"))
    assert await store.get_client("svc-a") == a_client("svc-a")
    assert await store.get_client("svc-b") == a_client("svc-b")
