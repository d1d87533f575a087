"""Backends for the store conformance suite, and the fixtures that open them.

`backend` is parametrized over every backend registered in BACKENDS; a
backend's own test module pins one with
`pytest.mark.parametrize("backend", ["name"], indirect=True)`.

PostgreSQL runs at ROTOR_TEST_POSTGRES (by default the database `test` on
127.0.0.1:5432), each test in a fresh schema dropped afterwards. When the
server cannot be reached its tests are skipped, except in CI (the variable CI
is set), where they fail: there they must run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from rotor.store import Store
from rotor.store.postgres import PostgresStore
from rotor.store.sqlite import SqliteStore

from .conformance import Backend, OpenStore


async def _open_sqlite(where: Path) -> Store:
    return await SqliteStore.open(where / "rotor.db")


def _drop_every_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            conn.execute(f'DROP TABLE "{table}"')
        conn.commit()
    finally:
        conn.close()


async def _sabotage_sqlite(where: Path) -> None:
    await asyncio.to_thread(_drop_every_table, where / "rotor.db")


SQLITE = Backend(
    name="sqlite",
    open=_open_sqlite,
    sabotage=_sabotage_sqlite,
)

POSTGRES_URL = os.environ.get("ROTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_schemas: dict[Path, str] = {}  # each test directory's schema
_unreachable: list[str | None] = []  # the answer, once asked


def postgres_schema(where: Path) -> str:
    """The schema of the test whose directory is `where`."""
    return _schemas.setdefault(where, f"rotor_test_{secrets.token_hex(6)}")


def postgres_url(where: Path, **settings: str) -> str:
    """The URL of the test's own schema (a store creates it on first open), with server `settings`."""
    query = "&".join(
        f"{name}={value}" for name, value in {"search_path": postgres_schema(where), **settings}.items()
    )
    return f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}{query}"


async def admin_connection() -> asyncpg.Connection:
    """A plain connection to the test database, outside every store."""
    return await asyncpg.connect(POSTGRES_URL, timeout=5)


async def _postgres_unreachable() -> str | None:
    if not _unreachable:
        try:
            conn = await admin_connection()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            _unreachable.append(f"no PostgreSQL at {POSTGRES_URL} (set ROTOR_TEST_POSTGRES): {e}")
        else:
            await conn.close()
            _unreachable.append(None)
    return _unreachable[0]


async def _open_postgres(where: Path) -> Store:
    return await PostgresStore.open(postgres_url(where))


async def _sabotage_postgres(where: Path) -> None:
    schema = _schemas[where]
    conn = await admin_connection()
    try:
        for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema):
            await conn.execute(f'DROP TABLE IF EXISTS "{schema}"."{row[0]}" CASCADE')
    finally:
        await conn.close()


async def _drop_schema(where: Path) -> None:
    schema = _schemas.pop(where, None)
    if schema is None:
        return
    conn = await admin_connection()
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


POSTGRES = Backend(
    name="postgres",
    open=_open_postgres,
    sabotage=_sabotage_postgres,
    unreachable=_postgres_unreachable,
    cleanup=_drop_schema,
)

BACKENDS = {backend.name: backend for backend in (SQLITE, POSTGRES)}


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


class _Opener:
    def __init__(self, backend: Backend, where: Path) -> None:
        self._backend = backend
        self._where = where
        self.opened: list[Store] = []

    async def __call__(self) -> Store:
        store = await self._backend.open(self._where)
        self.opened.append(store)
        return store

    async def close(self, store: Store) -> None:
        self.opened.remove(store)
        await store.close()


@pytest.fixture
async def open_store(backend: Backend, tmp_path: Path) -> AsyncIterator[OpenStore]:
    reason = await backend.unreachable() if backend.unreachable is not None else None
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the {backend.name} tests")
        pytest.skip(reason)
    opener = _Opener(backend, tmp_path)
    yield opener
    for store in reversed(opener.opened):
        await store.close()
    if backend.cleanup is not None:
        await backend.cleanup(tmp_path)


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    """An empty store of the backend under test, closed after the test."""
    return await open_store()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark a backend's known bugs xfail (strict), so the suite stays the same for every backend."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend") if callspec is not None else None
        backend = BACKENDS.get(name) if isinstance(name, str) else None
        reason = backend.known_bugs.get(getattr(item, "originalname", item.name)) if backend else None
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
