"""A store that is locked, full or cut off gives UNAVAILABLE with reason STORE_UNAVAILABLE and a
message that says to retry, never INTERNAL; a write that failed changed nothing (the old refresh
token still works, the keys, key set, event log and audit chain are as they were, a revocation did
not happen); and once the fault clears the same calls succeed.

SQLite: another process holding the write lock past the busy timeout; a full disk, injected at
every statement of each write, and for real (max_page_count). PostgreSQL: the server's backends
killed under it, mid-call and idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import rotor_client
from grpc import aio
from rotor import cli
from rotor.app import RotorServer
from rotor.config import Config, TlsConfig
from rotor.store import sqlite as sqlite_store
from rotor.store.sqlite import SqliteStore
from rotor.v1 import key_admin_pb2
from store.locks import write_lock_held

from .support import BASE_KEYS, BASE_TOKENS, ISSUER, Credentials, Rotor, assert_error, failure, jwt_part

BUSY_TIMEOUT_MS = 200
DISK_FULL = "database or disk is full"
POSTGRES = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def short_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SQLite connection opened from here on gives up waiting for the write lock after 200 ms."""
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", BUSY_TIMEOUT_MS)


def assert_store_unavailable(err: aio.AioRpcError) -> None:
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert "retry" in err.details(), err.details()


# -- what the store holds ----------------------------------------------------------


def _contents(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'leases'")
        ]
        return {t: sorted(repr(row) for row in conn.execute(f'SELECT * FROM "{t}"')) for t in tables}
    finally:
        conn.close()


async def state_of(rotor: Rotor) -> tuple[dict[str, list[str]], bytes]:
    """Every committed row (the rotator's lease aside), and the key set the server hands out."""
    rows = await asyncio.to_thread(_contents, rotor.config.sqlite_path)
    return rows, (await rotor.key_set()).SerializeToString()


# -- the writes under test -----------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One write through the API, re-runnable with the same inputs for as long as it fails."""

    call: Callable[[], Awaitable[Any]]
    took_effect: Callable[[Any], Awaitable[None]]  # given what the call returned


async def refresh(rotor: Rotor, client: Credentials, token: str) -> rotor_client.TokenResponse:
    request = rotor_client.RefreshRequest(refresh_token=token)
    return await rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)


async def assert_reused(rotor: Rotor, client: Credentials, token: str) -> None:
    err = await failure(refresh(rotor, client, token))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")


async def rotate_keys(rotor: Rotor, admin: Credentials, immediate: bool) -> key_admin_pb2.RotateKeysResponse:
    request = rotor_client.RotateKeysRequest(immediate=immediate, reason="drill")
    return await rotor.admin.RotateKeys(request, metadata=admin.metadata, timeout=30)


async def issue_write(rotor: Rotor, svc: Credentials, ops: Credentials) -> Write:
    async def took_effect(issued: rotor_client.TokenResponse) -> None:
        assert (await refresh(rotor, svc, issued.refresh_token)).access_token

    return Write(lambda: rotor.issue(svc), took_effect)


async def refresh_write(rotor: Rotor, svc: Credentials, ops: Credentials) -> Write:
    old = (await rotor.issue(svc)).refresh_token

    async def took_effect(renewed: rotor_client.TokenResponse) -> None:
        assert (await refresh(rotor, svc, renewed.refresh_token)).access_token
        await assert_reused(rotor, svc, old)

    return Write(lambda: refresh(rotor, svc, old), took_effect)


async def revoke_access_write(rotor: Rotor, svc: Credentials, ops: Credentials) -> Write:
    token = (await rotor.issue(svc)).access_token
    jti = jwt_part(token, 1)["jti"]

    async def took_effect(revoked: bool) -> None:
        assert revoked
        assert await rotor.server.store.get_revoked_token(jti) is not None
        snapshot = await (await rotor.watch()).next()
        assert jti in {r.jti for r in snapshot.revoked_tokens}

    return Write(lambda: rotor.revoke(svc, token), took_effect)


async def revoke_refresh_write(rotor: Rotor, svc: Credentials, ops: Credentials) -> Write:
    token = (await rotor.issue(svc)).refresh_token

    async def took_effect(revoked: bool) -> None:
        assert revoked
        err = await failure(refresh(rotor, svc, token))
        assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")

    return Write(lambda: rotor.revoke(svc, token), took_effect)


def rotate_write(immediate: bool) -> Callable[[Rotor, Credentials, Credentials], Awaitable[Write]]:
    async def make(rotor: Rotor, svc: Credentials, ops: Credentials) -> Write:
        async def took_effect(response: key_admin_pb2.RotateKeysResponse) -> None:
            kids = {k.kid for k in (await rotor.key_set()).keys}
            assert response.key.kid in kids
            signing = (await rotor.issue(svc)).key_id
            assert (signing == response.key.kid) == immediate

        return Write(lambda: rotate_keys(rotor, ops, immediate), took_effect)

    return make


WRITES = {
    "Issue": issue_write,
    "Refresh": refresh_write,
    "Revoke-access-token": revoke_access_write,
    "Revoke-refresh-token": revoke_refresh_write,
    "RotateKeys-immediate": rotate_write(immediate=True),
    "RotateKeys-scheduled": rotate_write(immediate=False),
}


# -- the client CLI, run in this process (its SQLite connections see the patches) -----


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str


@pytest.fixture
def clients_add(rotor: Rotor, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Any]:
    """`rotor clients add NAME --json` on the server's store, in a thread of this process."""
    config = tmp_path / "cli.toml"
    config.write_text(f"data_dir = {str(rotor.config.data_dir)!r}\n")

    async def run(name: str) -> CliRun:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, ["clients", "add", name, "--json", "--config", str(config)])
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    return run


def assert_refused_in_one_line(run: CliRun) -> None:
    assert run.code == 1, run
    assert run.out == "" and run.err.startswith("rotor: ") and run.err.count("\n") == 1, run


# -- SQLite: the write lock held by another process ------------------------------------


async def test_writes_while_another_process_holds_the_lock_fail_retryably_and_change_nothing(
    rotor: Rotor, svc: Credentials, ops: Credentials, clients_add: Callable[..., Any]
) -> None:
    writes = {name: await make(rotor, svc, ops) for name, make in WRITES.items()}
    before = await state_of(rotor)

    async with write_lock_held(rotor.config.sqlite_path):
        for name, write in writes.items():
            with pytest.raises(aio.AioRpcError) as caught:
                await write.call()
            assert_store_unavailable(caught.value)
            assert await state_of(rotor) == before, f"{name} changed the store while it was locked"
        refused = await clients_add("svc-new")
        assert_refused_in_one_line(refused)
        assert "locked" in refused.err

    assert await state_of(rotor) == before
    for write in writes.values():
        await write.took_effect(await write.call())
    added = await clients_add("svc-new")
    assert added.code == 0, added
    assert await rotor.server.store.get_client("svc-new") is not None


# -- SQLite: a full disk, injected at each statement of a write -------------------------


class FullDiskAt:
    """Stands in for a store's writer connection: counting from the next BEGIN (itself, then each
    SAVEPOINT, statement, RELEASE and COMMIT of every transaction after it), the `at`-th statement
    fails as SQLite fails on a full disk: it rolls the whole transaction back and raises."""

    def __init__(self, conn: sqlite3.Connection, at: int) -> None:
        self._conn = conn
        self._at = at
        self._count: int | None = None  # statements since the first BEGIN; None until then
        self.tripped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def _due(self, sql: str) -> bool:
        if self.tripped:
            return False
        if self._count is None:
            if not sql.startswith("BEGIN"):
                return False
            self._count = 0
        self._count += 1
        return self._count == self._at

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if self._due(sql):
            self.tripped = True
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise sqlite3.OperationalError(DISK_FULL)
        return self._conn.execute(sql, parameters)


@contextlib.contextmanager
def full_disk_at(store: Any, at: int) -> Iterator[FullDiskAt]:
    fault = FullDiskAt(store._writer, at)
    store._writer = fault
    try:
        yield fault
    finally:
        store._writer = fault._conn


@pytest.mark.parametrize("name", list(WRITES))
async def test_a_write_that_meets_a_full_disk_at_any_statement_changes_nothing(
    rotor: Rotor, svc: Credentials, ops: Credentials, name: str
) -> None:
    """The disk fills at the 1st, 2nd, ... statement of the write (its BEGIN and COMMIT too):
    each time STORE_UNAVAILABLE and the store as before; then, past its last statement, it works."""
    await rotor.server.rotator.stop()  # no background transaction to take the fault instead
    write = await WRITES[name](rotor, svc, ops)
    before = await state_of(rotor)
    at = 1
    while True:
        with full_disk_at(rotor.server.store, at) as fault:
            try:
                result = await write.call()
            except aio.AioRpcError as err:
                assert fault.tripped, f"{name} failed with no fault injected: {err.details()}"
                assert_store_unavailable(err)
                assert await state_of(rotor) == before, f"{name} was half applied (full at statement {at})"
                at += 1
                continue
        assert not fault.tripped, f"{name} succeeded although statement {at} failed"
        break
    assert at > 2, f"{name} wrote in fewer statements than expected"
    await write.took_effect(result)


async def test_a_cli_write_that_meets_a_full_disk_at_any_statement_changes_nothing(
    rotor: Rotor, clients_add: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    await rotor.server.rotator.stop()
    opened = SqliteStore.open
    faults: list[FullDiskAt] = []
    at = 0

    async def open_with_fault(path: str | Path) -> SqliteStore:
        store = await opened(path)
        faults.append(FullDiskAt(store._writer, at))
        store._writer = faults[-1]
        return store

    monkeypatch.setattr(SqliteStore, "open", open_with_fault)
    before = await state_of(rotor)
    while True:
        at += 1
        run = await clients_add("svc-new")
        if not faults[-1].tripped:
            break
        assert_refused_in_one_line(run)
        assert DISK_FULL in run.err
        assert await state_of(rotor) == before, f"clients add was half applied (full at statement {at})"
    assert run.code == 0 and at > 2, run
    assert await rotor.server.store.get_client("svc-new") is not None


# -- SQLite: a database that is really full ------------------------------------------


async def set_max_pages(rotor: Rotor, pages: int | None) -> None:
    """Cap the server's database at `pages` pages (its current size when None), as a full disk would."""
    writer = rotor.server.store._writer
    if pages is None:
        (pages,) = writer.execute("PRAGMA page_count").fetchone()
    writer.execute(f"PRAGMA max_page_count = {int(pages)}")


async def fill_until_refused(rotor: Rotor, write: Callable[[], Awaitable[Any]], what: str) -> None:
    """Repeat `write` until the capped database has no room for it; that refusal must be clean."""
    for _ in range(1000):
        before = await state_of(rotor)
        try:
            await write()
        except aio.AioRpcError as err:
            assert_store_unavailable(err)
            assert await state_of(rotor) == before, f"{what} was half applied on a full database"
            return
    raise AssertionError(f"the capped database never filled up with {what}")


async def test_a_really_full_database_refuses_writes_retryably_and_recovers(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """Capped at its current size, the database takes writes until its pages are full (rotations
    fill the key and event pages, grants the refresh ones); from then on every write either works
    or is STORE_UNAVAILABLE and leaves the store as it was; with room again, each works."""
    await rotor.server.rotator.stop()
    writes = {name: await make(rotor, svc, ops) for name, make in WRITES.items()}
    await set_max_pages(rotor, None)
    await fill_until_refused(rotor, lambda: rotate_keys(rotor, ops, immediate=True), "a rotation")
    await fill_until_refused(rotor, lambda: rotor.issue(svc), "a grant")

    done: dict[str, Any] = {}
    for name, write in writes.items():
        before = await state_of(rotor)
        try:
            done[name] = await write.call()
        except aio.AioRpcError as err:
            assert_store_unavailable(err)
            assert await state_of(rotor) == before, f"{name} was half applied on a full database"

    await set_max_pages(rotor, 1_000_000_000)
    # in reverse: a scheduled rotation's new key is checked before a retried immediate one supersedes it
    for name, write in reversed(writes.items()):
        await write.took_effect(done[name] if name in done else await write.call())


# -- PostgreSQL: the server's backends killed under it ---------------------------------


@dataclass
class Postgres:
    """A server on a schema of its own, and a way to see and kill its backends from outside."""

    rotor: Rotor
    schema: str
    application_name: str

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(POSTGRES, timeout=5, server_settings={"search_path": self.schema})

    async def contents(self) -> dict[str, list[str]]:
        conn = await self.connect()
        try:
            tables = await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename != 'leases'", self.schema
            )
            return {
                t[0]: sorted(repr(tuple(r.values())) for r in await conn.fetch(f'SELECT * FROM "{t[0]}"'))
                for t in tables
            }
        finally:
            await conn.close()

    async def backends(self, condition: str = "TRUE") -> list[int]:
        conn = await self.connect()
        try:
            rows = await conn.fetch(
                f"SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND {condition}",
                self.application_name,
            )
            return [r[0] for r in rows]
        finally:
            await conn.close()

    async def terminate(self, pids: list[int]) -> None:
        conn = await self.connect()
        try:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
        finally:
            await conn.close()

    async def state(self) -> tuple[dict[str, list[str]], bytes]:
        return await self.contents(), (await self.rotor.key_set()).SerializeToString()


@pytest.fixture
async def postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Postgres]:
    """A started server on PostgreSQL (a fresh schema, dropped afterwards); absent PostgreSQL
    skips, except in CI."""
    monkeypatch.delenv("ROTOR_KEK", raising=False)
    try:
        admin = await asyncpg.connect(POSTGRES, timeout=5)
    except (OSError, asyncpg.PostgresError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES} is required in CI: {e}")
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {e}")
    suffix = os.urandom(6).hex()
    schema, name = f"rotor_faults_{suffix}", f"rotor-faults-{suffix}"
    config = Config(
        listen="127.0.0.1:0",
        tls=TlsConfig(),
        data_dir=str(tmp_path / "pg"),
        issuer=ISSUER,
        keys=BASE_KEYS,
        tokens=BASE_TOKENS,
        database_url=f"{POSTGRES}?search_path={schema}&application_name={name}",
    )
    server = RotorServer(config)
    rotor: Rotor | None = None
    try:
        await server.start()
        rotor = Rotor(server)
        yield Postgres(rotor, schema, name)
    finally:
        if rotor is not None:
            await rotor.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


# the table each write changes first: a lock on it holds the write inside its transaction
BLOCKED_ON = {
    "Issue": "refresh_families",
    "Refresh": "refresh_tokens",
    "Revoke-access-token": "revoked_tokens",
    "Revoke-refresh-token": "refresh_families",
    "RotateKeys-immediate": "keys",
    "RotateKeys-scheduled": "keys",
}


@contextlib.asynccontextmanager
async def table_locked(pg: Postgres, table: str) -> AsyncIterator[None]:
    """Another session holding `table` in SHARE mode: reads go on, writes wait."""
    conn = await pg.connect()
    try:
        async with conn.transaction():
            await conn.execute(f'LOCK TABLE "{table}" IN SHARE MODE')
            yield
    finally:
        await conn.close()


async def waiting_backend(pg: Postgres) -> int:
    for _ in range(500):
        waiting = await pg.backends("wait_event_type = 'Lock'")
        if waiting:
            return waiting[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the write never waited for the lock")


@pytest.mark.parametrize("name", list(WRITES))
async def test_a_postgres_backend_killed_mid_write_gives_unavailable_and_changes_nothing(
    postgres: Postgres, name: str
) -> None:
    rotor = postgres.rotor
    svc = await rotor.add_client("svc-orders")
    ops = await rotor.add_client("ops-admin", admin=True)
    write = await WRITES[name](rotor, svc, ops)
    before = await postgres.state()

    async with table_locked(postgres, BLOCKED_ON[name]):
        call = asyncio.ensure_future(write.call())
        await postgres.terminate([await waiting_backend(postgres)])
        err = await failure(call)
    assert_store_unavailable(err)
    assert await postgres.state() == before, f"{name} was half applied"
    await write.took_effect(await write.call())


async def test_every_postgres_backend_killed_gives_unavailable_at_worst_and_the_server_recovers(
    postgres: Postgres,
) -> None:
    rotor = postgres.rotor
    svc = await rotor.add_client("svc-orders")
    ops = await rotor.add_client("ops-admin", admin=True)
    writes = {name: await make(rotor, svc, ops) for name, make in WRITES.items()}
    killed = await postgres.backends()
    assert killed, "no backend of the server to kill"
    await postgres.terminate(killed)

    done: dict[str, Any] = {}
    for name, write in writes.items():
        for _ in range(rotor.config.cluster.pool_size + 1):  # a dead pooled connection fails one call
            try:
                done[name] = await write.call()
                break
            except aio.AioRpcError as err:
                assert_store_unavailable(err)
        assert name in done, f"{name} still failed after the pool had time to reconnect"
    for name, write in reversed(writes.items()):
        await write.took_effect(done[name])
    assert not set(killed) & set(await postgres.backends()), "a killed backend is still there"
