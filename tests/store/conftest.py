"""Backends for the store conformance suite, and the fixtures that open them.

`backend` is parametrized over every backend registered in BACKENDS; a
backend's own test module pins one with
`pytest.mark.parametrize("backend", ["name"], indirect=True)`. A PostgreSQL
backend joins by adding a `Backend` here (skipping when no database is
configured) and a test_postgres.py like test_sqlite.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rotor.store import Store
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

BACKENDS = {backend.name: backend for backend in (SQLITE,)}


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
    opener = _Opener(backend, tmp_path)
    yield opener
    for store in reversed(opener.opened):
        await store.close()


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
