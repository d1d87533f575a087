"""The embedded store: SQLite through aiosqlite, in WAL mode.

One writer connection (transactions take `BEGIN IMMEDIATE`, so writers in
other processes, such as the `rotor` CLI, queue behind it on the database
lock) and one reader connection (WAL lets it read while a write is open).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import astuple
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

from rotor.core.model import (
    Client,
    KeyState,
    Operation,
    OperationState,
    RefreshFamily,
    RefreshToken,
    RevokedToken,
    SigningKey,
    Snapshot,
    StoredEvent,
)
from rotor.store import AlreadyExists, Unavailable

BUSY_TIMEOUT_MS = 10_000

_KEY_COLUMNS = (
    "kid, tenant, alg, state, public_jwk, sealed_private, created_at, activates_at, retires_at, "
    "expires_at, revoked_at, revocation_reason"
)
_CLIENT_COLUMNS = (
    "client_id, tenant, secret_hash, scopes, audiences, admin, allow_any_subject, disabled, created_at"
)
_FAMILY_COLUMNS = "family_id, client_id, tenant, subject, scopes, audiences, created_at, expires_at, revoked_at, revoke_reason"
_TOKEN_COLUMNS = "token_hash, family_id, client_id, issued_at, expires_at, used_at"
_REVOKED_COLUMNS = "jti, tenant, client_id, expires_at, revoked_at, reason"
_OPERATION_COLUMNS = (
    "operation_id, tenant, kind, target, reason, requested_by, created_at, expires_at, state, "
    "approved_by, applied_at"
)


def _key(row: Iterable[Any]) -> SigningKey:
    r = tuple(row)
    return SigningKey(r[0], r[1], r[2], KeyState(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11])


def _client(row: Iterable[Any]) -> Client:
    r = tuple(row)
    return Client(
        r[0],
        r[1],
        r[2],
        tuple(json.loads(r[3])),
        tuple(json.loads(r[4])),
        bool(r[5]),
        bool(r[6]),
        bool(r[7]),
        r[8],
    )


def _family(row: Iterable[Any]) -> RefreshFamily:
    r = tuple(row)
    return RefreshFamily(
        r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), tuple(json.loads(r[5])), r[6], r[7], r[8], r[9]
    )


def _token(row: Iterable[Any]) -> RefreshToken:
    return RefreshToken(*tuple(row))


def _revoked(row: Iterable[Any]) -> RevokedToken:
    return RevokedToken(*tuple(row))


def _operation(row: Iterable[Any]) -> Operation:
    r = tuple(row)
    return Operation(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], OperationState(r[8]), r[9], r[10])


def _marks(values: tuple[Any, ...]) -> str:
    return ", ".join("?" * len(values))


# Encoders: each returns the values of its record in its _COLUMNS order.


def _key_values(k: SigningKey) -> tuple[Any, ...]:
    values = astuple(k)
    return (*values[:3], k.state.value, *values[4:])


def _client_values(c: Client) -> tuple[Any, ...]:
    return (
        c.client_id,
        c.tenant,
        c.secret_hash,
        json.dumps(list(c.scopes)),
        json.dumps(list(c.audiences)),
        int(c.admin),
        int(c.allow_any_subject),
        int(c.disabled),
        c.created_at,
    )


def _family_values(f: RefreshFamily) -> tuple[Any, ...]:
    values = astuple(f)
    return (*values[:4], json.dumps(list(f.scopes)), json.dumps(list(f.audiences)), *values[6:])


def _operation_values(o: Operation) -> tuple[Any, ...]:
    values = astuple(o)
    return (*values[:8], o.state.value, *values[9:])


def _states_clause(states: Collection[KeyState] | None) -> tuple[str, list[str]]:
    if states is None:
        return "", []
    values = [s.value for s in states]
    return f" AND state IN ({', '.join('?' * len(values))})", values


class _Reads:
    """Queries shared by transactions (writer connection) and plain reads (reader connection)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with _driver_errors():
            async with self._conn.execute(sql, tuple(params)) as cursor:
                return await cursor.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with _driver_errors():
            return list(await self._conn.execute_fetchall(sql, tuple(params)))

    async def get_client(self, client_id: str) -> Client | None:
        row = await self._one(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,))
        return _client(row) if row else None

    async def get_key(self, kid: str) -> SigningKey | None:
        row = await self._one(f"SELECT {_KEY_COLUMNS} FROM keys WHERE kid = ?", (kid,))
        return _key(row) if row else None

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        clause, values = _states_clause(states)
        rows = await self._all(
            f"SELECT {_KEY_COLUMNS} FROM keys WHERE tenant = ?{clause} ORDER BY created_at, kid",
            (tenant, *values),
        )
        return [_key(r) for r in rows]

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        row = await self._one(
            f"SELECT {_FAMILY_COLUMNS} FROM refresh_families WHERE family_id = ?", (family_id,)
        )
        return _family(row) if row else None

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        row = await self._one(
            f"SELECT {_TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
        )
        return _token(row) if row else None

    async def get_revoked_token(self, jti: str) -> RevokedToken | None:
        row = await self._one(f"SELECT {_REVOKED_COLUMNS} FROM revoked_tokens WHERE jti = ?", (jti,))
        return _revoked(row) if row else None

    async def get_operation(self, operation_id: str) -> Operation | None:
        row = await self._one(
            f"SELECT {_OPERATION_COLUMNS} FROM operations WHERE operation_id = ?", (operation_id,)
        )
        return _operation(row) if row else None

    async def last_sequence(self, tenant: str | None = None) -> int:
        if tenant is None:
            row = await self._one("SELECT COALESCE(MAX(sequence), 0) FROM events")
        else:
            row = await self._one("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE tenant = ?", (tenant,))
        return int(row[0])


class _SqliteTx(_Reads):
    """A transaction on the writer connection (see rotor.store.Tx)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        super().__init__(conn)
        self.appended = False

    async def _changed(self, sql: str, params: Iterable[Any], what: str = "row") -> bool:
        with _driver_errors(what):
            async with self._conn.execute(sql, tuple(params)) as cursor:
                return cursor.rowcount > 0

    async def _insert(self, table: str, columns: str, values: tuple[Any, ...], what: str) -> None:
        await self._changed(f"INSERT INTO {table} ({columns}) VALUES ({_marks(values)})", values, what)

    async def _replace(
        self,
        table: str,
        columns: str,
        values: tuple[Any, ...],
        where: str,
        params: tuple[Any, ...],
        what: str,
    ) -> bool:
        """Write every column of one row, if it matches `where`."""
        sql = f"UPDATE {table} SET ({columns}) = ({_marks(values)}) WHERE {where}"
        return await self._changed(sql, (*values, *params), what)

    async def insert_client(self, client: Client) -> None:
        await self._insert("clients", _CLIENT_COLUMNS, _client_values(client), f"client {client.client_id!r}")

    async def update_client(self, client: Client) -> bool:
        values = _client_values(client)
        return await self._replace(
            "clients", _CLIENT_COLUMNS, values, "client_id = ?", (client.client_id,), "client"
        )

    async def insert_key(self, key: SigningKey) -> None:
        await self._insert("keys", _KEY_COLUMNS, _key_values(key), f"key {key.kid!r}")

    async def update_key(self, key: SigningKey, expected: KeyState) -> bool:
        # the one-active-key index refuses a second ACTIVE key of a tenant: AlreadyExists
        what = (
            f"an active key of tenant {key.tenant!r}" if key.state is KeyState.ACTIVE else f"key {key.kid!r}"
        )
        where, params = "kid = ? AND state = ?", (key.kid, expected.value)
        return await self._replace("keys", _KEY_COLUMNS, _key_values(key), where, params, what)

    async def insert_family(self, family: RefreshFamily) -> None:
        await self._insert("refresh_families", _FAMILY_COLUMNS, _family_values(family), "refresh family")

    async def revoke_family(self, family_id: str, at: float, reason: str) -> bool:
        return await self._changed(
            "UPDATE refresh_families SET revoked_at = ?, revoke_reason = ? WHERE family_id = ? AND revoked_at IS NULL",
            (at, reason, family_id),
        )

    async def insert_refresh_token(self, token: RefreshToken) -> None:
        await self._insert("refresh_tokens", _TOKEN_COLUMNS, astuple(token), "refresh token")

    async def mark_refresh_token_used(self, token_hash: str, at: float) -> bool:
        return await self._changed(
            "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL", (at, token_hash)
        )

    async def insert_revoked_token(self, revoked: RevokedToken) -> bool:
        values = astuple(revoked)
        return await self._changed(
            f"INSERT INTO revoked_tokens ({_REVOKED_COLUMNS}) VALUES ({_marks(values)}) ON CONFLICT (jti) DO NOTHING",
            values,
        )

    async def insert_operation(self, operation: Operation) -> None:
        what = f"operation {operation.operation_id!r}"
        await self._insert("operations", _OPERATION_COLUMNS, _operation_values(operation), what)

    async def update_operation(self, operation: Operation, expected_state: str) -> bool:
        where, params = "operation_id = ? AND state = ?", (operation.operation_id, expected_state)
        return await self._replace(
            "operations", _OPERATION_COLUMNS, _operation_values(operation), where, params, "operation"
        )

    async def append_event(self, tenant: str, type_: str, occurred_at: float, payload: str) -> int:
        with _driver_errors("event"):
            async with self._conn.execute(
                "INSERT INTO events (tenant, type, occurred_at, payload) VALUES (?, ?, ?, ?)",
                (tenant, type_, occurred_at, payload),
            ) as cursor:
                sequence = cursor.lastrowid
        assert sequence is not None
        self.appended = True
        return sequence


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


async def _connect(path: Path, opened: list[aiosqlite.Connection]) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    opened.append(conn)
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA synchronous = FULL")
    return conn


class SqliteStore:
    """The SQLite implementation of rotor.store.Store."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._reads = _Reads(reader)
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    async def open(cls, path: str | Path) -> SqliteStore:
        """Open (creating and migrating if needed) the database at `path`."""
        path = Path(path)
        opened: list[aiosqlite.Connection] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = await _connect(path, opened)
            await writer.execute("PRAGMA journal_mode = WAL")
            await _migrate(writer)
            reader = await _connect(path, opened)
        except (sqlite3.Error, OSError) as e:
            for conn in opened:  # an open connection's thread would keep the process alive
                with contextlib.suppress(sqlite3.Error):
                    await conn.close()
            raise Unavailable(f"cannot open the SQLite store at {path}: {e}") from e
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._write_lock, self._read_lock:
            await self._reader.close()
            await self._writer.close()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        async with self._write_lock:
            if self._writer.in_transaction:  # safety net: a cancelled caller's transaction is never joined
                await self._rollback()
            tx = _SqliteTx(self._writer)
            try:
                try:  # BEGIN inside: a caller cancelled while it runs must still roll back
                    await self._writer.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as e:
                    raise Unavailable(f"the SQLite store is busy: {e}") from e
                yield tx
            except BaseException:
                await asyncio.shield(self._rollback())
                raise
            try:
                await asyncio.shield(self._writer.execute("COMMIT"))
            except sqlite3.Error as e:
                await asyncio.shield(self._rollback())
                raise Unavailable(f"the SQLite store could not commit: {e}") from e
        if tx.appended:
            for listener in self._listeners:
                listener()

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction left to roll back
            await self._writer.execute("ROLLBACK")

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

    async def list_clients(self) -> list[Client]:
        rows = await self._read(self._reads._all, f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY client_id")
        return [_client(r) for r in rows]

    async def get_key(self, kid: str) -> SigningKey | None:
        result: SigningKey | None = await self._read(self._reads.get_key, kid)
        return result

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        result: list[SigningKey] = await self._read(self._reads.list_keys, tenant, states)
        return result

    async def list_tenants(self) -> list[str]:
        rows = await self._read(
            self._reads._all, "SELECT tenant FROM keys UNION SELECT tenant FROM clients UNION SELECT ''"
        )
        return sorted(r[0] for r in rows)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        result: RefreshToken | None = await self._read(self._reads.get_refresh_token, token_hash)
        return result

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        result: RefreshFamily | None = await self._read(self._reads.get_family, family_id)
        return result

    async def get_revoked_token(self, jti: str) -> RevokedToken | None:
        result: RevokedToken | None = await self._read(self._reads.get_revoked_token, jti)
        return result

    async def snapshot(self, tenant: str, now: float) -> Snapshot:
        async with self._read_lock:
            await self._end_stray_read()
            try:
                try:
                    # BEGIN inside the try: a cancelled caller must still COMMIT, or the shared
                    # reader would stay in a stale read transaction for every later read.
                    await self._reader.execute("BEGIN")
                    keys = await self._reads.list_keys(
                        tenant, (KeyState.PENDING, KeyState.ACTIVE, KeyState.RETIRED)
                    )
                    rows = await self._reads._all(
                        f"SELECT {_REVOKED_COLUMNS} FROM revoked_tokens WHERE tenant = ? AND expires_at > ? "
                        "ORDER BY revoked_at",
                        (tenant, now),
                    )
                    sequence = await self._reads.last_sequence(tenant)
                finally:
                    await asyncio.shield(self._end_read())
            except (sqlite3.Error, Unavailable) as e:
                raise Unavailable(f"the SQLite store could not be read: {e}") from e
        return Snapshot(tenant, sequence, tuple(keys), tuple(_revoked(r) for r in rows))

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
            sql, params = "SELECT * FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, limit)
        else:
            sql = "SELECT * FROM events WHERE tenant = ? AND sequence > ? ORDER BY sequence LIMIT ?"
            params = (tenant, after, limit)  # type: ignore[assignment]
        rows = await self._read(self._reads._all, sql, params)
        return [StoredEvent(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows]

    async def pruned_through(self) -> int:
        row = await self._read(self._reads._one, "SELECT value FROM store_meta WHERE name = 'pruned_through'")
        return int(row[0])

    async def prune(self, now: float, event_horizon: float) -> int:
        removed = 0
        async with self.transaction() as tx:
            for sql, params in (
                ("DELETE FROM revoked_tokens WHERE expires_at <= ?", (now,)),
                # a used token stays as long as its family, so replaying it is still detected as reuse
                ("DELETE FROM refresh_tokens WHERE expires_at <= ? AND used_at IS NULL", (now,)),
                (
                    "DELETE FROM refresh_families WHERE expires_at <= ? "
                    "OR (revoked_at IS NOT NULL AND NOT EXISTS "
                    "(SELECT 1 FROM refresh_tokens t WHERE t.family_id = refresh_families.family_id))",
                    (now,),
                ),
                ("DELETE FROM operations WHERE expires_at <= ?", (now - 30 * 86400,)),
            ):
                async with tx._conn.execute(sql, params) as cursor:
                    removed += max(cursor.rowcount, 0)
            doomed = await tx._one(
                "SELECT MAX(sequence) FROM events e WHERE occurred_at < ? "
                "AND sequence < (SELECT MAX(sequence) FROM events WHERE tenant = e.tenant)",
                (event_horizon,),
            )
            if doomed and doomed[0] is not None:
                async with tx._conn.execute(
                    "DELETE FROM events WHERE sequence <= ? AND sequence < "
                    "(SELECT MAX(sequence) FROM events e2 WHERE e2.tenant = events.tenant)",
                    (doomed[0],),
                ) as cursor:
                    removed += max(cursor.rowcount, 0)
                await tx._conn.execute(
                    "UPDATE store_meta SET value = MAX(value, ?) WHERE name = 'pruned_through'", (doomed[0],)
                )
        return removed


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
