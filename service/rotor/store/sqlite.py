"""The embedded store: SQLite in WAL mode.

One writer connection and one reader connection (WAL lets it read while a
write is open), through aiosqlite's thread.

Writes commit in groups. The writer runs each transaction's statements on the
event loop's thread (they never wait for a lock: the group holds the database's
write lock), inside a SAVEPOINT so that one failing transaction undoes only its
own changes. Transactions that queued while one ran join its group, and one
COMMIT (one fsync, in a worker thread) makes the whole group durable; each
caller returns only once its group is committed, or fails with Unavailable if
the commit did. `BEGIN IMMEDIATE` is tried on the loop's thread without
waiting; only when a writer in another process (the `rotor` CLI, another
worker) holds the lock does it wait, in a worker thread: such writers hold
it for a moment at most, and waiting for them must not stall the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from rotor.core.fleet import FleetWatcher
from rotor.core.model import (
    AuditEntry,
    Client,
    ClientRevocation,
    KeyState,
    RefreshFamily,
    RefreshToken,
    RevokedToken,
    SigningKey,
    Snapshot,
    StoredEvent,
)
from rotor.store import AlreadyExists, Unavailable, _sql, rows
from rotor.store._shared_tx import SharedReads, SharedStore, SharedTx

BUSY_TIMEOUT_MS = 10_000
MAX_COMMITTED_EVENTS = 1000  # kept for take_committed_events; past that, readers read the log


def _states_clause(states: Collection[KeyState] | None) -> tuple[str, list[str]]:
    if states is None:
        return "", []
    values = [s.value for s in states]
    return f" AND state IN ({', '.join('?' * len(values))})", values


def _numbered(sql: str) -> str:
    """SQLite takes the shared statements' $N placeholders (rotor.store._sql) as ?N."""
    return sql.replace("$", "?")


class _Reads(SharedReads):
    """Queries shared by transactions (writer connection) and plain reads (reader connection)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with _driver_errors():
            async with self._conn.execute(_numbered(sql), tuple(params)) as cursor:
                return await cursor.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with _driver_errors():
            return list(await self._conn.execute_fetchall(_numbered(sql), tuple(params)))

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        clause, values = _states_clause(states)
        found = await self._all(
            f"SELECT {rows.KEY_COLUMNS} FROM keys WHERE tenant = ?{clause} ORDER BY created_at, kid",
            (tenant, *values),
        )
        return [rows.key(r) for r in found]


class _SqliteTx(_Reads, SharedTx):
    """A transaction on the writer connection (see rotor.store.Tx): statements run at once, on
    this thread, inside the group's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._sync = conn
        self.appended = False
        self.events: list[StoredEvent] = []  # what append_event wrote, for the hub once committed

    def _check_open(self) -> None:
        # SQLite rolls a transaction back by itself on some errors (a full disk): a later write
        # through this Tx would then commit on its own, outside any transaction
        if not self._sync.in_transaction:
            raise Unavailable("the SQLite store rolled this transaction back after an error; retry")

    def _run(self, sql: str, params: Iterable[Any], what: str = "row") -> sqlite3.Cursor:
        self._check_open()
        with _driver_errors(what):
            return self._sync.execute(_numbered(sql), tuple(params))

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        cursor = self._run(sql, params)
        with _driver_errors():
            found = cursor.fetchall()  # to the end: the statement is reset at once
        return found[0] if found else None

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        cursor = self._run(sql, params)
        with _driver_errors():
            return cursor.fetchall()

    async def _count(self, sql: str, params: Iterable[Any], what: str = "row") -> int:
        """Run a write; how many rows it changed."""
        return max(self._run(sql, params, what).rowcount, 0)

    async def _changed(self, sql: str, params: Iterable[Any], what: str = "row") -> bool:
        return await self._count(sql, params, what) > 0

    async def insert_key(self, key: SigningKey) -> None:
        await self._changed(_sql.INSERT_KEY, rows.key_values(key), f"key {key.kid!r}")

    async def append_event(self, tenant: str, type_: str, occurred_at: float, payload: str) -> int:
        cursor = self._run(
            "INSERT INTO events (tenant, type, occurred_at, payload) VALUES (?, ?, ?, ?)",
            (tenant, type_, occurred_at, payload),
            "event",
        )
        sequence = cursor.lastrowid
        assert sequence is not None
        self.appended = True
        self.events.append(StoredEvent(sequence, tenant, type_, occurred_at, payload))
        return sequence

    async def lock_keys(self, tenant: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE made this transaction the only writer."""

    async def holds_lease(self, name: str, holder: str, fencing: int, now: float) -> bool:
        return await self._one(_sql.HOLDS_LEASE, (name, holder, fencing, now)) is not None


@contextlib.contextmanager
def _driver_errors(what: str = "row") -> Iterator[None]:
    """Raise the store's own errors, never sqlite3's."""
    try:
        yield
    except sqlite3.IntegrityError as e:
        raise AlreadyExists(f"{what} already exists ({e})") from e
    except sqlite3.Error as e:
        raise Unavailable(f"the SQLite store failed: {e}") from e


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("rotor.store").joinpath("migrations/sqlite")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _pragmas() -> tuple[str, ...]:
    return (
        f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
        "PRAGMA foreign_keys = ON",
        "PRAGMA synchronous = FULL",
    )


async def _connect(path: Path, opened: list[aiosqlite.Connection]) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    opened.append(conn)
    for pragma in _pragmas():
        await conn.execute(pragma)
    return conn


def _connect_writer(path: Path) -> sqlite3.Connection:
    """The writer: used on the loop's thread, and for BEGIN and COMMIT in a worker thread (never
    both at once: the store's write lock is held throughout)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in _pragmas():
        conn.execute(pragma)
    # it never waits on the loop's thread: BEGIN IMMEDIATE is tried there without waiting, and
    # waits (BUSY_TIMEOUT_MS) only in a worker thread when another process holds the lock
    conn.execute("PRAGMA busy_timeout = 0")
    return conn


def _begin_waiting(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


@dataclass(eq=False)
class _Group:
    """Transactions committed together; `done` holds the outcome of their COMMIT."""

    done: asyncio.Future[None]
    members: list[_SqliteTx] = field(default_factory=list)


class SqliteStore(SharedStore):
    """The SQLite implementation of rotor.store.Store."""

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._group: _Group | None = None  # the open group transaction, if any
        self._commits: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Task[_Group] | None = None
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._reads = _Reads(reader)
        super().__init__()
        self._listeners: list[Callable[[], None]] = []
        self._committed_events: list[StoredEvent] = []  # see take_committed_events
        # one-row reads on the caller's thread, too small to be worth a hop to the reader's
        self._probe = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating and migrating if needed) the database at `path`."""
        path = Path(path)
        opened: list[aiosqlite.Connection] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            setup = await _connect(path, opened)
            await setup.execute("PRAGMA journal_mode = WAL")
            await _migrate(setup)
            await setup.close()
            opened.remove(setup)
            reader = await _connect(path, opened)
            writer = await asyncio.to_thread(_connect_writer, path)
        except (sqlite3.Error, OSError) as e:
            for conn in opened:  # an open connection's thread would keep the process alive
                with contextlib.suppress(sqlite3.Error):
                    await conn.close()
            raise Unavailable(f"cannot open the SQLite store at {path}: {e}") from e
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._write_lock, self._read_lock:
            self._probe.close()
            await self._reader.close()
            self._writer.close()

    def audit_sequence_nowait(self) -> int | None:
        """The audit head's sequence, read at once on this thread (a WAL read never waits for the
        writer); None if the file is busy all the same."""
        try:
            rows_ = self._probe.execute("SELECT sequence FROM audit_head WHERE id = 1").fetchall()
        except sqlite3.Error:
            return None
        return int(rows_[0][0]) if rows_ else None

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def take_committed_events(self) -> list[StoredEvent]:
        taken, self._committed_events = self._committed_events, []
        return taken

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        async with self._write_lock:
            group = self._group or await self._open_group()
            tx = _SqliteTx(self._writer)
            with _driver_errors():
                self._writer.execute("SAVEPOINT tx")
            try:
                yield tx
                with _driver_errors():
                    tx._check_open()
                    self._writer.execute("RELEASE tx")
                self._committed(tx)  # written in the group's order, before its COMMIT: see Store
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # gone with the group if SQLite rolled it back
                    self._writer.execute("ROLLBACK TO tx")
                    self._writer.execute("RELEASE tx")
                raise
            group.members.append(tx)
        await asyncio.shield(group.done)
        if tx.appended:
            if len(self._committed_events) < MAX_COMMITTED_EVENTS:
                self._committed_events += tx.events
            else:  # nobody takes them (no hub): the log has them all the same
                self._committed_events.clear()
            for listener in self._listeners:
                listener()
        self._committed(tx)

    async def _open_group(self) -> _Group:
        """The group transaction to join, begun if there is none. BEGIN runs as a task of its own:
        a caller cancelled meanwhile leaves it to finish, and the next caller joins its group."""
        if self._opening is None:
            self._opening = asyncio.create_task(self._begin(), name="rotor-sqlite-begin")
            self._opening.add_done_callback(lambda task: task.cancelled() or task.exception())
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done() and self._opening is opening:
                self._opening = None

    async def _begin(self) -> _Group:
        try:
            try:
                self._writer.execute("BEGIN IMMEDIATE")  # at once, unless another process writes
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                    raise
                await asyncio.to_thread(_begin_waiting, self._writer)
        except sqlite3.OperationalError as e:
            raise Unavailable(f"the SQLite store is busy: {e}") from e
        except sqlite3.Error as e:  # a damaged file: not INTERNAL, and the server goes on
            raise Unavailable(f"the SQLite store cannot begin a transaction: {e}") from e
        group = self._group = _Group(asyncio.get_running_loop().create_future())
        task = asyncio.create_task(self._commit(group), name="rotor-sqlite-commit")
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        return group

    async def _commit(self, group: _Group) -> None:
        async with self._write_lock:  # after every transaction that was waiting when the group began
            self._group = None
            try:
                if not self._writer.in_transaction:
                    raise sqlite3.OperationalError("SQLite rolled the transaction back after an error")
                await asyncio.shield(asyncio.to_thread(self._writer.execute, "COMMIT"))
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):  # none left to roll back
                    self._writer.execute("ROLLBACK")
                if any(tx.audited for tx in group.members):
                    for listener in self._audit_listeners:
                        listener(())  # what they were told of this group is void
                group.done.set_exception(Unavailable(f"the SQLite store could not commit: {e}; retry"))
                group.done.exception()  # retrieved here too: a group with no member left is fine
            else:
                group.done.set_result(None)

    async def _read(self, method: Callable[..., Any], *args: Any) -> Any:
        async with self._read_lock:
            await self._end_stray_read()
            try:
                return await method(*args)
            except sqlite3.Error as e:
                raise Unavailable(f"the SQLite store could not be read: {e}") from e

    async def get_client(self, client_id: str) -> Client | None:
        result: Client | None = await self._read(self._reads.get_client, client_id)
        return result

    async def get_client_by_cert_san(self, uri: str) -> Client | None:
        row = await self._read(self._reads._one, _numbered(_sql.GET_CLIENT_BY_CERT_SAN), (uri,))
        return rows.client(row) if row else None

    async def list_clients(self) -> list[Client]:
        found = await self._read(self._reads._all, _sql.LIST_CLIENTS)
        return [rows.client(r) for r in found]

    async def get_key(self, kid: str) -> SigningKey | None:
        result: SigningKey | None = await self._read(self._reads.get_key, kid)
        return result

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        result: list[SigningKey] = await self._read(self._reads.list_keys, tenant, states)
        return result

    async def list_tenants(self) -> list[str]:
        found = await self._read(self._reads._all, _sql.LIST_TENANTS)
        return sorted(r[0] for r in found)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        result: RefreshToken | None = await self._read(self._reads.get_refresh_token, token_hash)
        return result

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        result: RefreshFamily | None = await self._read(self._reads.get_family, family_id)
        return result

    async def get_revoked_token(self, jti: str) -> RevokedToken | None:
        result: RevokedToken | None = await self._read(self._reads.get_revoked_token, jti)
        return result

    async def get_client_revocation(self, client_id: str) -> ClientRevocation | None:
        result: ClientRevocation | None = await self._read(self._reads.get_client_revocation, client_id)
        return result

    async def snapshot(self, tenant: str, now: float) -> Snapshot:
        async with self._read_lock:
            await self._end_stray_read()
            try:
                try:
                    # BEGIN inside the try: a cancelled caller must still COMMIT, or the shared
                    # reader would stay in a stale read transaction for every later read.
                    await self._reader.execute("BEGIN")
                    return await self._reads.read_snapshot(tenant, now)
                finally:
                    await asyncio.shield(self._end_read())
            except (sqlite3.Error, Unavailable) as e:
                raise Unavailable(f"the SQLite store could not be read: {e}") from e

    async def _end_read(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # none open: BEGIN never ran
            await self._reader.execute("COMMIT")

    async def _end_stray_read(self) -> None:
        """Safety net: never start a read inside a transaction some cancelled caller left open."""
        if self._reader.in_transaction:
            await self._end_read()

    async def last_sequence(self, tenant: str | None = None) -> int:
        result: int = await self._read(self._reads.last_sequence, tenant)
        return result

    async def events_after(
        self, after: int, tenant: str | None = None, limit: int = 500
    ) -> list[StoredEvent]:
        if tenant is None:
            found = await self._read(self._reads._all, _sql.EVENTS_AFTER, (after, limit))
        else:
            found = await self._read(self._reads._all, _sql.EVENTS_OF_TENANT_AFTER, (tenant, after, limit))
        return [rows.event(r) for r in found]

    async def audit_head(self) -> tuple[int, str]:
        row = await self._read(self._reads._one, _sql.AUDIT_HEAD)
        return int(row[0]), str(row[1])

    async def audit_after(
        self, after: int, *, since: float = 0.0, tenant: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        if tenant is None:
            found = await self._read(self._reads._all, _sql.AUDIT_AFTER, (after, since, limit))
        else:
            found = await self._read(
                self._reads._all, _sql.AUDIT_OF_TENANT_AFTER, (after, since, tenant, limit)
            )
        return [rows.audit(r) for r in found]

    async def pruned_through(self) -> int:
        row = await self._read(self._reads._one, _sql.PRUNED_THROUGH)
        return int(row[0])

    async def fleet_watchers(
        self, seen_since: float, counts_since: float | None, tenant: str | None
    ) -> list[FleetWatcher]:
        async with self._read_lock:
            await self._end_stray_read()
            try:
                try:
                    await self._reader.execute("BEGIN")  # watchers and their counts read together
                    return await self._reads.read_fleet(seen_since, counts_since, tenant)
                finally:
                    await asyncio.shield(self._end_read())
            except (sqlite3.Error, Unavailable) as e:
                raise Unavailable(f"the SQLite store could not be read: {e}") from e

    async def fleet_totals(self) -> list[tuple[str, str, str, int]]:
        result: list[tuple[str, str, str, int]] = await self._read(self._reads.read_fleet_totals)
        return result


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Apply every numbered migration above the database's user_version, each in one transaction."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        for version, script in _migrations():
            if version <= current:
                continue
            for statement in _statements(script):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {version}")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    out, buf = [], ""
    for line in lines:
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]
