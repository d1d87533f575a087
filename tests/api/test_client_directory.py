"""The server keeps the client records it has read, yet no change to a client is missed.

Authenticating a known client waits on no store read; a change made by this process or by
another one on the same SQLite store (the CLI, another worker) applies to the very next call;
where the head cannot be read without waiting (PostgreSQL), another process's change applies
within a fraction of a second; a new client is accepted at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from rotor.clock import SystemClock
from rotor.core.clients import ClientDirectory, register_client, rotate_secret, set_disabled
from rotor.store import Store, open_store

from .support import Credentials, Rotor, assert_error, failure


@pytest.fixture
async def other_process(rotor: Rotor) -> AsyncIterator[Store]:
    """The same SQLite database opened separately, as the CLI or another worker does."""
    store = await open_store("", rotor.config.sqlite_path)
    yield store
    await store.close()


def count_client_reads(rotor: Rotor, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The client ids the server reads from its store from now on."""
    reads: list[str] = []
    real = rotor.server.store.get_client

    async def counted(client_id: str) -> object:
        reads.append(client_id)
        return await real(client_id)

    monkeypatch.setattr(rotor.server.store, "get_client", counted)
    return reads


async def test_a_known_client_is_authenticated_without_reading_the_store(
    rotor: Rotor, svc: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rotor.issue(svc)
    await asyncio.sleep(0.2)  # past the directory's look at the audit head that registering moved
    reads = count_client_reads(rotor, monkeypatch)
    for _ in range(20):
        await rotor.issue(svc)
    assert reads == []


async def test_a_client_disabled_by_this_process_is_refused_on_the_next_call(
    rotor: Rotor, svc: Credentials
) -> None:
    await rotor.issue(svc)
    await set_disabled(rotor.server.store, rotor.server.clock, svc.client_id, True)
    assert_error(await failure(rotor.issue(svc)), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")


async def test_a_client_disabled_by_another_process_is_refused_on_the_next_call(
    rotor: Rotor, svc: Credentials, other_process: Store
) -> None:
    await rotor.issue(svc)
    await set_disabled(other_process, SystemClock(), svc.client_id, True)
    assert_error(await failure(rotor.issue(svc)), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")


async def test_a_secret_replaced_by_another_process_stops_working_on_the_next_call(
    rotor: Rotor, svc: Credentials, other_process: Store
) -> None:
    await rotor.issue(svc)
    _, secret = await rotate_secret(other_process, SystemClock(), svc.client_id)
    assert_error(await failure(rotor.issue(svc)), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert (await rotor.issue(Credentials(svc.client_id, secret))).access_token


async def test_without_a_waitless_head_read_another_processs_change_applies_within_moments(
    rotor: Rotor, svc: Credentials, other_process: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on PostgreSQL: the directory watches the audit head instead."""
    store = rotor.server.store
    monkeypatch.setattr(store, "audit_sequence_nowait", lambda: None)
    directory = ClientDirectory(store)
    await directory.start()
    try:
        assert await directory.get_client(svc.client_id) is not None
        await set_disabled(other_process, SystemClock(), svc.client_id, True)
        deadline = time.monotonic() + 2
        while not (client := await directory.get_client(svc.client_id)) or not client.disabled:
            assert time.monotonic() < deadline, "the change made elsewhere was not seen in time"
            await asyncio.sleep(0.01)
    finally:
        await directory.stop()


async def test_a_client_registered_by_another_process_is_accepted_at_once(
    rotor: Rotor, other_process: Store
) -> None:
    unknown = Credentials("newcomer", "not-yet-registered-0123456789")
    assert_error(await failure(rotor.issue(unknown)), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    registration = await register_client(other_process, SystemClock(), "newcomer", audiences=("api",))
    assert (await rotor.issue(Credentials("newcomer", registration.secret))).access_token


async def test_an_audited_change_that_is_not_about_a_client_keeps_the_records(
    rotor: Rotor, svc: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Revoke appends to the audit log too; the records stay, so the next call reads nothing."""
    token = (await rotor.issue(svc)).access_token
    await asyncio.sleep(0.2)
    reads = count_client_reads(rotor, monkeypatch)
    assert await rotor.revoke(svc, token)
    await rotor.issue(svc)
    assert reads == []
