"""The shared store: PostgreSQL through an asyncpg pool, for replicas on many hosts.

Transactions run at READ COMMITTED, so every statement sees what others have
committed, also after it waited for a lock. Under it the compare-and-set
updates (`... WHERE state = expected`) give exactly one winner; key changes
queue on a per-tenant advisory lock (`Tx.lock_keys`); `Tx.get_client` locks
its row (FOR UPDATE), since a client is read, changed and written back whole.
Snapshot isolation would not do: a snapshot taken before a lock wait is
stale once the wait ends.

Event sequences come from a one-row counter, whose row lock every appending
transaction holds until it ends, so events become visible in sequence order
(see migrations/postgres/0001_init.sql). Each append also NOTIFYs channel
`rotor_events`; one more connection per store LISTENs there and calls the
commit listeners for other processes' commits, reconnecting with backoff
when it is lost. A notification is only a wake-up (the event log is the
truth, and the hub also polls), so a lost one costs latency, never events.

The URL is asyncpg's: `postgresql://user@host:port/db?search_path=schema`;
other query parameters are server settings for every connection. A schema
named first in search_path is created if missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import asyncpg

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

log = logging.getLogger("rotor.store.postgres")

CHANNEL = "rotor_events"
CONNECT_TIMEOUT = 10.0  # seconds to open a connection
ACQUIRE_TIMEOUT = 10.0  # seconds to wait for a free pooled connection
CLOSE_TIMEOUT = 10.0
# Session settings, unless the URL sets them. lock_timeout bounds every lock wait (a tenant's
# key lock, the event counter, a row): past it the caller gets Unavailable, as SQLite's busy timeout.
DEFAULT_SETTINGS = {"application_name": "rotor", "lock_timeout": "10s"}
RECONNECT_DELAY = (0.1, 10.0)  # the listener's backoff: first and longest wait between attempts
HEARTBEAT_INTERVAL = 30.0  # how often an idle listener connection proves it is alive
HEARTBEAT_TIMEOUT = 10.0

# Advisory lock classes: the first int4 of pg_advisory_xact_lock(int4, int4), "RT" and a number.
LOCK_CLASS_MIGRATIONS = 0x5254_0001
LOCK_CLASS_KEY_CHANGES = 0x5254_0002

# What the database or the connection to it can raise; the store raises Unavailable instead.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

_KEYS_OF_TENANT = f"SELECT {rows.KEY_COLUMNS} FROM keys WHERE tenant = $1 ORDER BY created_at, kid"
_KEYS_OF_TENANT_IN_STATES = (
    f"SELECT {rows.KEY_COLUMNS} FROM keys WHERE tenant = $1 AND state = ANY($2::text[]) "
    "ORDER BY created_at, kid"
)
_NEXT_SEQUENCE = "UPDATE event_counter SET value = value + 1 RETURNING value"
_INSERT_EVENT = (
    f"INSERT INTO events ({rows.EVENT_COLUMNS}) VALUES ({_sql.marks(rows.count(rows.EVENT_COLUMNS))})"
)


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


@contextlib.contextmanager
def _driver_errors(what: str = "row") -> Iterator[None]:
    """Raise the store's own errors, never asyncpg's."""
    try:
        yield
    except asyncpg.UniqueViolationError as e:
        raise AlreadyExists(f"{what} already exists ({e})") from e
    except _DRIVER_ERRORS as e:
        raise Unavailable(f"the PostgreSQL store failed: {_describe(e)}") from e


class _Queries(Protocol):
    """What reads need: an asyncpg connection, or the pool through `_Pooled`."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


class _Pooled:
    """Runs each query on a pooled connection of its own: a read outside any transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return await conn.fetchrow(query, *args)


class _Reads(SharedReads):
    """Queries shared by transactions and plain reads."""

    def __init__(self, db: _Queries) -> None:
        self._db = db

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with _driver_errors():
            return await self._db.fetchrow(sql, *params)

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with _driver_errors():
            return await self._db.fetch(sql, *params)

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        if states is None:
            found = await self._all(_KEYS_OF_TENANT, (tenant,))
        else:
            found = await self._all(_KEYS_OF_TENANT_IN_STATES, (tenant, [s.value for s in states]))
        return [rows.key(r) for r in found]


class _PostgresTx(_Reads, SharedTx):
    """A transaction on one pooled connection (see rotor.store.Tx)."""

    LOCK_HEAD = " FOR UPDATE"  # audit appenders queue on the head row until commit

    def __init__(self, conn: asyncpg.Connection) -> None:
        super().__init__(conn)
        self._conn = conn
        self.appended = False

    async def _count(self, sql: str, params: Iterable[Any], what: str = "row") -> int:
        """Run a write; how many rows it changed."""
        with _driver_errors(what):
            status: str = await self._conn.execute(sql, *params)
        return int(status.rsplit(" ", 1)[-1])  # "UPDATE 1", "INSERT 0 1", "DELETE 3"

    async def _changed(self, sql: str, params: Iterable[Any], what: str = "row") -> bool:
        return await self._count(sql, params, what) > 0

    async def _many(self, sql: str, values: Iterable[Iterable[Any]]) -> None:
        batch = [tuple(v) for v in values]
        if batch:
            with _driver_errors():
                await self._conn.executemany(sql, batch)

    async def get_client(self, client_id: str) -> Client | None:
        # locked until the transaction ends: update_client writes the whole client back
        row = await self._one(_sql.GET_CLIENT + " FOR UPDATE", (client_id,))
        return rows.client(row) if row else None

    async def insert_key(self, key: SigningKey) -> None:
        what = (
            f"an active key of tenant {key.tenant!r}" if key.state is KeyState.ACTIVE else f"key {key.kid!r}"
        )
        await self._changed(_sql.INSERT_KEY, rows.key_values(key), what)

    async def append_event(self, tenant: str, type_: str, occurred_at: float, payload: str) -> int:
        with _driver_errors("event"):
            # the counter's row lock queues every other appender until this transaction ends
            sequence = int(await self._conn.fetchval(_NEXT_SEQUENCE))
            await self._conn.execute(_INSERT_EVENT, sequence, tenant, type_, occurred_at, payload)
            await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, tenant)  # sent on commit
        self.appended = True
        return sequence

    async def lock_keys(self, tenant: str) -> None:
        with _driver_errors():
            await self._conn.execute(
                f"SELECT pg_advisory_xact_lock({LOCK_CLASS_KEY_CHANGES}, hashtext($1))", tenant
            )

    async def holds_lease(self, name: str, holder: str, fencing: int, now: float) -> bool:
        # FOR SHARE: the lease cannot change hands before this transaction ends
        row = await self._one(_sql.HOLDS_LEASE + " FOR SHARE", (name, holder, fencing, now))
        return row is not None


class PostgresStore(SharedStore):
    """The PostgreSQL implementation of rotor.store.Store."""

    def __init__(self, url: str) -> None:
        self._url = url
        query = dict(parse_qsl(urlsplit(url).query))
        self._settings = {name: value for name, value in DEFAULT_SETTINGS.items() if name not in query}
        self._schema = _schema_to_create(query.get("search_path", ""))
        self._pool: asyncpg.Pool | None = None
        self._reads: _Reads | None = None
        super().__init__()
        self._listeners: list[Callable[[], None]] = []
        self._listener: asyncpg.Connection | None = None  # the connection that LISTENs, while it lives
        self._listening: asyncio.Task[None] | None = None
        self._own_pids: set[int] = set()  # backends of our pool: their NOTIFYs are our own commits

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> PostgresStore:
        """Open the database at `url` (creating the search_path schema and migrating if needed)."""
        store = cls(url)
        try:
            conn = await store._connect()
            try:
                await _migrate(conn, store._schema)
                lost = await store._listen_on(conn)
            except BaseException:
                conn.terminate()
                raise
            store._pool = await asyncpg.create_pool(
                url,
                min_size=min(1, pool_size),
                max_size=pool_size,
                init=store._adopt,
                timeout=CONNECT_TIMEOUT,
                server_settings=store._settings,
            )
        except (*_DRIVER_ERRORS, ValueError) as e:
            await store.close()
            raise Unavailable(f"cannot open the PostgreSQL store at {_where(url)}: {_describe(e)}") from e
        store._reads = _Reads(_Pooled(store._pool))
        store._listening = asyncio.create_task(store._keep_listening(conn, lost), name="rotor-store-listener")
        return store

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._listener is not None:
            await _close(self._listener)
            self._listener = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
            except _DRIVER_ERRORS:
                self._pool.terminate()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def take_committed_events(self) -> list[StoredEvent]:
        """None kept: sequences come from a shared counter, so the log is read in any case."""
        return []

    def audit_sequence_nowait(self) -> int | None:
        """None: every PostgreSQL read is a round trip (the ClientDirectory polls instead)."""
        return None

    # -- connections -------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT, server_settings=self._settings)

    async def _adopt(self, conn: asyncpg.Connection) -> None:
        """Remember a new pooled connection's backend, whose notifications are our own commits."""
        pid = conn.get_server_pid()
        self._own_pids.add(pid)
        conn.add_termination_listener(lambda _conn: self._own_pids.discard(pid))

    def _pooled(self) -> _Reads:
        if self._reads is None:
            raise Unavailable("the PostgreSQL store is not open")
        return self._reads

    def _acquire(self) -> Any:
        if self._pool is None:
            raise Unavailable("the PostgreSQL store is not open")
        return self._pool.acquire(timeout=ACQUIRE_TIMEOUT)

    # -- other processes' commits ------------------------------------------

    async def _listen_on(self, conn: asyncpg.Connection) -> asyncio.Event:
        """LISTEN on `conn`; the event is set once the connection is lost."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._on_notification)
        self._listener = conn
        return lost

    async def _keep_listening(self, conn: asyncpg.Connection | None, lost: asyncio.Event) -> None:
        """Keep one connection listening: when it is lost, reconnect with backoff, forever."""
        delay = RECONNECT_DELAY[0]
        while True:
            if conn is None:
                try:
                    conn = await self._connect()
                    try:
                        lost = await self._listen_on(conn)
                    except BaseException:
                        conn.terminate()
                        raise
                except _DRIVER_ERRORS as e:
                    conn = None
                    log.warning(
                        "cannot listen for other processes' commits (retrying in %.1fs): %s", delay, e
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_DELAY[1])
                    continue
                log.info("listening for other processes' commits again")
                delay = RECONNECT_DELAY[0]
                self._wake()  # whatever was notified while nobody listened: the hub should look now
            await _until_lost(conn, lost)
            log.warning("lost the connection that listens for other processes' commits; reconnecting")
            self._listener = None
            conn.terminate()
            conn = None

    def _on_notification(self, _conn: object, pid: int, _channel: str, _payload: str) -> None:
        if pid not in self._own_pids:  # our own commits have woken the listeners already
            self._wake()

    def _wake(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("a commit listener raised (it must not)")

    # -- transactions ------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTx]:
        # asyncpg rolls back on any exception (a cancellation too) and the pool takes the
        # connection back, resetting it if the rollback could not run
        with _driver_errors():  # taking a connection, BEGIN, COMMIT
            async with self._acquire() as conn, conn.transaction(isolation="read_committed"):
                tx = _PostgresTx(conn)
                yield tx
        if tx.appended:
            self._wake()
        self._committed(tx)

    # -- reads -------------------------------------------------------------

    async def get_client(self, client_id: str) -> Client | None:
        return await self._pooled().get_client(client_id)

    async def list_clients(self) -> list[Client]:
        return [rows.client(r) for r in await self._pooled()._all(_sql.LIST_CLIENTS)]

    async def get_client_by_cert_san(self, uri: str) -> Client | None:
        row = await self._pooled()._one(_sql.GET_CLIENT_BY_CERT_SAN, (uri,))
        return rows.client(row) if row else None

    async def get_key(self, kid: str) -> SigningKey | None:
        return await self._pooled().get_key(kid)

    async def list_keys(self, tenant: str, states: Collection[KeyState] | None = None) -> list[SigningKey]:
        return await self._pooled().list_keys(tenant, states)

    async def list_tenants(self) -> list[str]:
        return sorted(r[0] for r in await self._pooled()._all(_sql.LIST_TENANTS))

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        return await self._pooled().get_refresh_token(token_hash)

    async def get_family(self, family_id: str) -> RefreshFamily | None:
        return await self._pooled().get_family(family_id)

    async def get_revoked_token(self, jti: str) -> RevokedToken | None:
        return await self._pooled().get_revoked_token(jti)

    async def get_client_revocation(self, client_id: str) -> ClientRevocation | None:
        return await self._pooled().get_client_revocation(client_id)

    async def snapshot(self, tenant: str, now: float) -> Snapshot:
        with _driver_errors():
            async with self._acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                return await _Reads(conn).read_snapshot(tenant, now)

    async def last_sequence(self, tenant: str | None = None) -> int:
        return await self._pooled().last_sequence(tenant)

    async def events_after(
        self, after: int, tenant: str | None = None, limit: int = 500
    ) -> list[StoredEvent]:
        if tenant is None:
            found = await self._pooled()._all(_sql.EVENTS_AFTER, (after, limit))
        else:
            found = await self._pooled()._all(_sql.EVENTS_OF_TENANT_AFTER, (tenant, after, limit))
        return [rows.event(r) for r in found]

    async def audit_head(self) -> tuple[int, str]:
        row = await self._pooled()._one(_sql.AUDIT_HEAD)
        return int(row[0]), str(row[1])

    async def audit_after(
        self, after: int, *, since: float = 0.0, tenant: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        if tenant is None:
            found = await self._pooled()._all(_sql.AUDIT_AFTER, (after, since, limit))
        else:
            found = await self._pooled()._all(_sql.AUDIT_OF_TENANT_AFTER, (after, since, tenant, limit))
        return [rows.audit(r) for r in found]

    async def pruned_through(self) -> int:
        row = await self._pooled()._one(_sql.PRUNED_THROUGH)
        return int(row[0])

    async def fleet_watchers(
        self, seen_since: float, counts_since: float | None, tenant: str | None
    ) -> list[FleetWatcher]:
        with _driver_errors():
            async with self._acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                return await _Reads(conn).read_fleet(seen_since, counts_since, tenant)

    async def fleet_totals(self) -> list[tuple[str, str, str, int]]:
        return await self._pooled().read_fleet_totals()


async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
    """Return once `conn` is lost, or fails a heartbeat (a silently dead peer sends no FIN)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), HEARTBEAT_INTERVAL)
            return
        try:
            await conn.execute("SELECT 1", timeout=HEARTBEAT_TIMEOUT)
        except _DRIVER_ERRORS as e:
            log.warning("the connection that listens for other processes' commits failed: %s", _describe(e))
            return


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except _DRIVER_ERRORS:
        conn.terminate()


def _where(url: str) -> str:
    """The database, for messages: never a password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def _schema_to_create(search_path: str) -> str | None:
    """The schema search_path names first, as PostgreSQL reads it (unquoted names fold to lower case)."""
    first = search_path.split(",")[0].strip()
    if len(first) >= 2 and first[0] == first[-1] == '"':
        return first[1:-1].replace('""', '"')
    if not first or first == "$user":
        return None
    return first.lower()


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("rotor.store").joinpath("migrations/postgres")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


async def _migrate(conn: asyncpg.Connection, schema: str | None) -> None:
    """Create the schema if missing and apply every numbered migration above the recorded version,
    all in one transaction under an advisory lock: replicas starting together migrate once."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_CLASS_MIGRATIONS}, 0)")
        # CREATE SCHEMA IF NOT EXISTS would still need the right to create one: ask first
        if schema and not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f"CREATE SCHEMA {_quoted(schema)}")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        for version, script in _migrations():
            if version > current:
                await conn.execute(script)  # no arguments: the simple protocol runs every statement
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
