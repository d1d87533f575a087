"""The store conformance suite on PostgreSQL, and what only a database shared by many
processes shows: two stores on one schema stand for two replicas, racing for rows and
locks, waking each other with NOTIFY, losing connections."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from rotor.core.model import KeyState
from rotor.store import AlreadyExists, Store, Unavailable
from rotor.store.postgres import LOCK_CLASS_KEY_CHANGES, PostgresStore

from .conformance import *  # noqa: F403  (the suite, run here against PostgreSQL)
from .conformance import T0, Boom, OpenStore, a_client, a_family, a_key, a_refresh_token, append
from .conftest import POSTGRES_URL, admin_connection, postgres_schema, postgres_url

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

MIGRATIONS = sorted(
    int(f.name.split("_", 1)[0])
    for f in resources.files("rotor.store").joinpath("migrations/postgres").iterdir()
    if f.name.endswith(".sql")
)


async def eventually(condition: Callable[[], Awaitable[bool] | bool], what: str, within: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.01)


class Replicas:
    """Opens stores on the test's schema, each under an application_name of its own, so the
    test can see (and terminate) a replica's backends from outside."""

    def __init__(self, where: Path, admin: asyncpg.Connection) -> None:
        self._where = where
        self.admin = admin
        self.names: dict[Store, str] = {}
        self.schema = postgres_schema(where)

    async def open(self, **settings: str) -> PostgresStore:
        name = f"rotor-test-{secrets.token_hex(4)}"
        store = await PostgresStore.open(postgres_url(self._where, application_name=name, **settings))
        self.names[store] = name
        return store

    async def backends(self, store: Store, query_like: str = "%") -> list[int]:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2",
            self.names[store],
            query_like,
        )
        return [r[0] for r in rows]

    async def terminate(self, pids: list[int]) -> None:
        """Kill these backends, and wait until they are gone."""
        await self.admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)

        async def gone() -> bool:
            alive = await self.admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids
            )
            return bool(alive == 0)

        await eventually(gone, f"backends {pids} to exit")

    async def schema_versions(self) -> list[int]:
        rows = await self.admin.fetch(f'SELECT version FROM "{self.schema}".schema_version ORDER BY version')
        return [r[0] for r in rows]

    async def hears(self, listening: Store, heard: list[str], writer: Store, dead: set[int]) -> None:
        """Once `listening` listens on a connection other than the `dead` ones, commits on `writer`
        reach its listeners (which append to `heard`) again."""

        async def listening_again() -> bool:
            return bool(set(await self.backends(listening, "LISTEN%")) - dead)

        await eventually(listening_again, "the store to listen again on a new connection")
        # it wakes its listeners once on reconnecting (it may have missed something); past that,
        # only NOTIFYs on the new connection can wake them
        for _ in range(2):
            before = len(heard)
            await append(writer, ("", T0))
            await eventually(lambda: len(heard) > before, "a commit to reach the listener")  # noqa: B023

    async def waiting_for_a_lock(self, store: Store) -> bool:
        """Whether one of the store's backends waits for a lock (a row, an index entry, an advisory lock)."""
        waiting = await self.admin.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.application_name = $1",
            self.names[store],
        )
        return bool(waiting)


@pytest.fixture
async def replicas(open_store: OpenStore, tmp_path: Path) -> AsyncIterator[Replicas]:
    """Requests open_store for its skip-or-fail and for dropping the schema once these are closed."""
    admin = await admin_connection()
    replicas = Replicas(tmp_path, admin)
    try:
        yield replicas
    finally:
        for store in replicas.names:
            await store.close()
        await admin.close()


async def race(
    replicas: Replicas,
    first: tuple[Store, Callable[[Any], Awaitable[object]]],
    second: tuple[Store, Callable[[Any], Awaitable[object]]],
) -> tuple[object, object]:
    """Run `first`'s work in a transaction and keep it open until `second`'s transaction is
    blocked behind it, then commit: the second runs its work on what the first committed."""
    first_done = asyncio.Event()

    async def run_first() -> object:
        store, work = first
        async with store.transaction() as tx:
            result = await work(tx)
            first_done.set()
            await eventually(lambda: replicas.waiting_for_a_lock(second[0]), "the second transaction to wait")
        return result

    async def run_second() -> object:
        await first_done.wait()
        store, work = second
        async with store.transaction() as tx:
            return await work(tx)

    first_result, second_result = await asyncio.gather(run_first(), run_second(), return_exceptions=True)
    return first_result, second_result


# -- compare-and-set between replicas -----------------------------------------------


async def test_a_refresh_token_used_by_two_replicas_at_once_has_one_winner(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    hashes = [f"{i:02x}" * 32 for i in range(10)]
    async with a.transaction() as tx:
        await tx.insert_family(a_family())
        for token_hash in hashes:
            await tx.insert_refresh_token(a_refresh_token(token_hash))

    async def use(store: Store, token_hash: str) -> bool:
        async with store.transaction() as tx:
            return await tx.mark_refresh_token_used(token_hash, T0 + 1)

    for token_hash in hashes[1:]:  # free-running
        assert sorted(await asyncio.gather(use(a, token_hash), use(b, token_hash))) == [False, True]

    def mark(tx: Any) -> Awaitable[object]:
        return tx.mark_refresh_token_used(hashes[0], T0 + 1)

    assert await race(replicas, (a, mark), (b, mark)) == (True, False)  # b waited, then saw it used


async def test_a_family_revoked_by_two_replicas_at_once_is_revoked_once(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    families = [f"fam-{i}" for i in range(10)]
    async with a.transaction() as tx:
        for family_id in families:
            await tx.insert_family(a_family(family_id))

    async def revoke(store: Store, family_id: str) -> bool:
        async with store.transaction() as tx:
            return await tx.revoke_family(family_id, T0 + 1, "reused")

    for family_id in families[1:]:
        assert sorted(await asyncio.gather(revoke(a, family_id), revoke(b, family_id))) == [False, True]

    def revoke_first(tx: Any) -> Awaitable[object]:
        return tx.revoke_family(families[0], T0 + 1, "reused")

    assert await race(replicas, (a, revoke_first), (b, revoke_first)) == (True, False)


async def test_two_replicas_activating_two_keys_at_once_get_one_active_key(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    async with a.transaction() as tx:
        await tx.insert_key(a_key("k1", KeyState.PENDING))
        await tx.insert_key(a_key("k2", KeyState.PENDING))

    def activate(kid: str) -> Callable[[Any], Awaitable[object]]:
        return lambda tx: tx.update_key(a_key(kid, KeyState.ACTIVE), KeyState.PENDING)

    first, second = await race(replicas, (a, activate("k1")), (b, activate("k2")))
    assert first is True
    assert isinstance(second, AlreadyExists)  # the one-active-key index, after a waited
    assert [k.kid for k in await b.list_keys("", [KeyState.ACTIVE])] == ["k1"]


async def test_the_one_active_key_index_refuses_a_second_active_key(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.insert_key(a_key("first", KeyState.ACTIVE))
        await tx.insert_key(a_key("second", KeyState.PENDING))
    with pytest.raises(AlreadyExists):
        async with store.transaction() as tx:
            await tx.insert_key(a_key("third", KeyState.ACTIVE))
    with pytest.raises(AlreadyExists):
        async with store.transaction() as tx:
            await tx.update_key(a_key("second", KeyState.ACTIVE), KeyState.PENDING)


async def test_a_lease_checked_in_a_transaction_changes_hands_only_after_it(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    token = await a.acquire_lease("rotator", "a", 10, T0)
    assert token is not None
    async with a.transaction() as tx:
        assert await tx.holds_lease("rotator", "a", token, T0 + 9.9)
        # expired by b's clock, but a's transaction still acts on its answer: b waits for it
        taking = asyncio.create_task(b.acquire_lease("rotator", "b", 10, T0 + 10))
        try:
            await eventually(lambda: replicas.waiting_for_a_lock(b), "b to wait for a's transaction")
            assert not taking.done()
        except BaseException:
            taking.cancel()
            raise
    new_token = await taking
    assert new_token is not None and new_token > token


# -- the event log across replicas ---------------------------------------------------


async def test_a_reader_never_sees_a_sequence_appear_below_one_it_has_seen(replicas: Replicas) -> None:
    a, b, reader = await replicas.open(), await replicas.open(), await replicas.open()
    jitter = random.Random(7)
    writers_done = asyncio.Event()
    seen: list[int] = []  # in the order the reader first saw them

    async def append_one(store: Store, i: int) -> int:
        async with store.transaction() as tx:
            sequence = await tx.append_event("", "KEY_PUBLISHED", T0, f'{{"i":{i}}}')
            # hold the commit a moment: with sequences handed out at append (BIGSERIAL), a later
            # number could commit first and the reader would see 7 before 6
            await asyncio.sleep(jitter.random() / 100)
        return sequence

    async def writers() -> list[int]:
        try:
            return await asyncio.gather(*(append_one(a if i % 2 else b, i) for i in range(20)))
        finally:
            writers_done.set()

    async def read() -> None:
        while True:
            finished = writers_done.is_set()  # read once more after the last commit
            for event in await reader.events_after(0, limit=1000):
                if event.sequence not in seen:
                    assert not seen or event.sequence > max(seen), (
                        f"sequence {event.sequence} appeared after the reader had seen {max(seen)}"
                    )
                    seen.append(event.sequence)
            if finished:
                return
            await asyncio.sleep(0)

    sequences, _ = await asyncio.gather(writers(), read())
    assert sorted(sequences) == seen and len(set(seen)) == 20


async def test_a_commit_on_one_replica_wakes_the_others_listeners(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    heard_by_b: list[str] = []
    b.add_commit_listener(lambda: heard_by_b.append("b"))
    await append(a, ("acme", T0))
    await eventually(lambda: len(heard_by_b) == 1, "b's listener to hear a's commit")


async def test_commits_notify_their_event_tenants_and_nothing_else(replicas: Replicas) -> None:
    a = await replicas.open()
    payloads: list[str] = []
    listening = await admin_connection()
    try:
        await listening.add_listener(
            "rotor_events", lambda _c, _pid, _channel, tenant: payloads.append(tenant)
        )
        async with a.transaction() as tx:
            await tx.insert_client(a_client())  # no event: no notification
        with pytest.raises(Boom):
            async with a.transaction() as tx:
                await tx.append_event("rolled-back", "KEY_PUBLISHED", T0, "{}")
                raise Boom
        await append(a, ("acme", T0), ("acme", T0), ("zeta", T0))
        await append(a, ("", T0))  # the last: notifications arrive in commit order
        await eventually(lambda: "" in payloads, "the last commit's notification")
        assert payloads == ["acme", "zeta", ""]  # one per tenant and transaction
    finally:
        await listening.close()


async def test_a_listener_that_raises_does_not_stop_the_others(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    heard: list[str] = []

    def broken() -> None:
        raise RuntimeError("a listener bug")

    b.add_commit_listener(broken)
    b.add_commit_listener(lambda: heard.append("b"))
    await append(a, ("", T0))
    await append(a, ("", T0))
    await eventually(lambda: len(heard) == 2, "both commits to reach b's second listener")
    a.add_commit_listener(broken)
    await append(a, ("", T0))  # the committing caller does not see the listener's error either


async def test_the_listener_reconnects_after_its_connection_is_killed(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    heard: list[str] = []
    b.add_commit_listener(lambda: heard.append("b"))
    [listening] = await replicas.backends(b, "LISTEN%")
    await replicas.terminate([listening])
    await replicas.hears(b, heard, a, dead={listening})


# -- the per-tenant key lock -----------------------------------------------------


async def test_lock_keys_of_one_tenant_makes_another_replica_wait(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    order: list[str] = []
    held = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with a.transaction() as tx:
            await tx.lock_keys("acme")
            order.append("a locked")
            held.set()
            await release.wait()
            order.append("a commits")

    async def second() -> None:
        await held.wait()
        async with b.transaction() as tx:
            await tx.lock_keys("acme")
            order.append("b locked")

    async def b_waits_for_the_key_lock() -> bool:
        waiting = await replicas.admin.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = $1 AND NOT l.granted AND s.application_name = $2",
            LOCK_CLASS_KEY_CHANGES,
            replicas.names[b],
        )
        return bool(waiting)

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    try:
        await held.wait()
        await eventually(b_waits_for_the_key_lock, "b to wait for a's lock")
        assert order == ["a locked"]
    finally:
        release.set()
        await asyncio.gather(*tasks)
    assert order == ["a locked", "a commits", "b locked"]


async def test_lock_keys_of_different_tenants_do_not_block_each_other(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    async with a.transaction() as tx:
        await tx.lock_keys("acme")
        async with b.transaction() as other, asyncio.timeout(5):
            await other.lock_keys("zeta")
            await other.lock_keys("")


async def test_key_changes_of_one_tenant_never_overlap(replicas: Replicas) -> None:
    a, b = await replicas.open(), await replicas.open()
    inside = 0
    most_inside = 0

    async def change_keys(store: Store, i: int) -> None:
        nonlocal inside, most_inside
        async with store.transaction() as tx:
            await tx.lock_keys("acme")
            inside += 1
            most_inside = max(most_inside, inside)
            await tx.list_keys("acme")  # a round trip: a chance for another to slip in
            await tx.insert_key(a_key(f"k{i}", tenant="acme"))
            inside -= 1

    await asyncio.gather(*(change_keys(a if i % 2 else b, i) for i in range(12)))
    assert most_inside == 1
    assert len(await a.list_keys("acme")) == 12


async def test_a_lock_wait_past_lock_timeout_raises_unavailable(replicas: Replicas) -> None:
    a, impatient = await replicas.open(), await replicas.open(lock_timeout="100ms")
    async with a.transaction() as tx:
        await tx.lock_keys("acme")
        with pytest.raises(Unavailable):
            async with impatient.transaction() as other:
                await other.lock_keys("acme")


# -- failures --------------------------------------------------------------------


async def test_a_killed_connection_raises_unavailable_and_the_store_recovers(replicas: Replicas) -> None:
    store, other = await replicas.open(), await replicas.open()
    heard: list[str] = []
    store.add_commit_listener(lambda: heard.append("store"))
    with pytest.raises(Unavailable):
        async with store.transaction() as tx:
            await tx.insert_client(a_client())
            killed = await replicas.backends(store)  # every one, the listener's too
            await replicas.terminate(killed)
            await tx.insert_client(a_client("svc-b"))
    assert await other.get_client("svc-a") is None, "the broken transaction committed nothing"

    async with store.transaction() as tx:  # a fresh connection from the pool
        await tx.insert_client(a_client())
    assert await store.get_client("svc-a") == a_client()
    await replicas.hears(store, heard, other, dead=set(killed))


async def test_reads_after_the_servers_connections_die_recover(replicas: Replicas) -> None:
    store = await replicas.open()
    await append(store, ("", T0))
    await replicas.terminate(await replicas.backends(store))
    with contextlib.suppress(Unavailable):  # it may find a dead pooled connection: only the store's error
        await store.last_sequence()
    assert await store.last_sequence() > 0


async def test_opening_an_unreachable_server_raises_unavailable(backend: object) -> None:
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1/test"):
        await PostgresStore.open("postgresql://postgres@127.0.0.1:1/test")


# -- opening ---------------------------------------------------------------------


async def test_replicas_opening_together_migrate_once(replicas: Replicas) -> None:
    [a, *_] = await asyncio.gather(*(replicas.open() for _ in range(4)))  # on a schema not yet there
    async with a.transaction() as tx:
        await tx.insert_client(a_client())
    assert await replicas.schema_versions() == MIGRATIONS
    reopened = await replicas.open()
    assert await reopened.get_client("svc-a") == a_client()
    assert await replicas.schema_versions() == MIGRATIONS


async def test_a_quoted_mixed_case_schema_is_created_as_named(backend: object, open_store: OpenStore) -> None:
    schema = f"Rotor Test {secrets.token_hex(4)}"
    quoted = f"%22{schema.replace(' ', '%20')}%22"  # "Rotor Test ...": PostgreSQL keeps its case
    admin = await admin_connection()
    try:
        store = await PostgresStore.open(
            f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}search_path={quoted}"
        )
        try:
            await append(store, ("", T0))
        finally:
            await store.close()
        versions = await admin.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
        assert [r[0] for r in versions] == MIGRATIONS
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
