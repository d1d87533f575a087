"""Client credential lifecycle and RevokeClientTokens, against a real server in this process.

Secret rotation with an overlap, secret expiry, disable/enable, and the admin's
RevokeClientTokens: what it kills at the server, what it pushes to watchers, and
how long a snapshot keeps it. Time travel uses a FakeClock the server follows.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.clock import FakeClock
from rotor.core.clients import rotate_secret, set_disabled
from rotor.v1 import key_admin_pb2, keys_pb2

from .support import Credentials, Rotor, Watcher, assert_error, event_type, failure

MakeRotor = Any
CACHE_TTL = 300.0  # the Authenticator skips scrypt this long for a verified secret


# -- helpers ------------------------------------------------------------------------


async def refresh(rotor: Rotor, client: Credentials, token: str) -> rotor_client.TokenResponse:
    request = rotor_client.RefreshRequest(refresh_token=token)
    return await rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)


async def revoke_client_tokens(
    rotor: Rotor, admin: Credentials, client_id: str, reason: str = "test"
) -> key_admin_pb2.RevokeClientTokensResponse:
    request = key_admin_pb2.RevokeClientTokensRequest(client_id=client_id, reason=reason)
    return await rotor.admin.RevokeClientTokens(request, metadata=admin.metadata, timeout=30)


async def add_expiring_client(rotor: Rotor, name: str, expires_in: float) -> Credentials:
    return await rotor.add_client(name, expires_in=expires_in)


async def rotate(rotor: Rotor, client: Credentials, **options: Any) -> Credentials:
    """rotate_secret on the server's store and clock; the client with its new secret."""
    _, secret = await rotate_secret(rotor.server.store, rotor.server.clock, client.client_id, **options)
    return Credentials(client.client_id, secret)


async def grants(rotor: Rotor, client: Credentials, count: int) -> list[str]:
    """`count` fresh refresh families of `client`; their refresh tokens."""
    return [(await rotor.issue(client)).refresh_token for _ in range(count)]


def revocations(snapshot: keys_pb2.KeyEvent) -> dict[str, int]:
    """client_id -> not_before (seconds) listed in a SNAPSHOT."""
    assert event_type(snapshot) == "SNAPSHOT", event_type(snapshot)
    return {c.client_id: c.not_before.seconds for c in snapshot.client_revocations}


async def snapshot_of_a_new_watcher(rotor: Rotor) -> keys_pb2.KeyEvent:
    watcher = await rotor.watch()
    try:
        return await watcher.next()
    finally:
        watcher.cancel()


def stored_client_revocations(rotor: Rotor) -> int:
    """Rows in the SQLite store's client_revocations table (read-only, beside the server)."""
    with sqlite3.connect(f"file:{rotor.config.sqlite_path}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM client_revocations").fetchone()
    return int(count)


async def fake_clock_rotor(make_rotor: MakeRotor, start: float | None = None, **options: Any) -> Rotor:
    rotor: Rotor = await make_rotor(clock=FakeClock(start=start or time.time()), **options)
    return rotor


def clock_of(rotor: Rotor) -> FakeClock:
    clock = rotor.server.clock
    assert isinstance(clock, FakeClock)
    return clock


# -- secret rotation ----------------------------------------------------------------


async def test_the_old_secret_works_during_the_overlap_and_fails_after_it(make_rotor: MakeRotor) -> None:
    """rotate_secret(overlap=100): old and new both Issue; past the overlap only the new one, cache or not."""
    rotor = await fake_clock_rotor(make_rotor)
    old = await rotor.add_client("svc")
    await rotor.issue(old)  # the old secret is now in the Authenticator's 300 s cache

    new = await rotate(rotor, old, overlap=100)
    assert new.secret != old.secret
    assert (await rotor.issue(old)).access_token
    assert (await rotor.issue(new)).access_token

    clock_of(rotor).advance(99)
    assert (await rotor.issue(old)).access_token  # still inside the overlap

    clock_of(rotor).advance(2)  # 101 s: past the overlap, well inside the cache's 300 s
    err = await failure(rotor.issue(old))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert (await rotor.issue(new)).access_token


async def test_rotation_without_overlap_stops_the_old_secret_at_once(make_rotor: MakeRotor) -> None:
    """rotate_secret(overlap=0): the cached old secret fails on the very next call; the new one works."""
    rotor = await fake_clock_rotor(make_rotor)
    old = await rotor.add_client("svc")
    await rotor.issue(old)

    new = await rotate(rotor, old, overlap=0)
    err = await failure(rotor.issue(old))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert (await rotor.issue(new)).access_token


async def test_a_second_rotation_ends_the_first_secret_even_inside_its_overlap(make_rotor: MakeRotor) -> None:
    """Rotating twice keeps at most one previous secret: the first one stops at the second rotation."""
    rotor = await fake_clock_rotor(make_rotor)
    first = await rotor.add_client("svc")
    second = await rotate(rotor, first, overlap=3600)
    third = await rotate(rotor, second, overlap=3600)

    err = await failure(rotor.issue(first))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    assert (await rotor.issue(second)).access_token
    assert (await rotor.issue(third)).access_token


# -- secret expiry ------------------------------------------------------------------


async def test_a_secret_works_until_its_expiry_then_the_error_says_to_rotate_it(
    make_rotor: MakeRotor,
) -> None:
    """register_client(expires_in=100): Issue works before; after, INVALID_CLIENT naming rotate-secret."""
    rotor = await fake_clock_rotor(make_rotor)
    svc = await add_expiring_client(rotor, "svc", expires_in=100)
    assert (await rotor.issue(svc)).access_token  # verified, and cached for 300 s

    clock_of(rotor).advance(99)
    assert (await rotor.issue(svc)).access_token

    clock_of(rotor).advance(2)
    err = await failure(rotor.issue(svc))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    message = err.details() or ""
    assert "expired" in message and "rotate-secret" in message, message


async def test_rotate_secret_with_expires_in_bounds_the_new_secret(make_rotor: MakeRotor) -> None:
    """rotate_secret(expires_in=50): the new secret works for 50 s and then fails with the rotate hint."""
    rotor = await fake_clock_rotor(make_rotor)
    old = await rotor.add_client("svc")
    new = await rotate(rotor, old, expires_in=50)
    assert (await rotor.issue(new)).access_token

    clock_of(rotor).advance(51)
    err = await failure(rotor.issue(new))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    message = err.details() or ""
    assert "rotate-secret" in message, message


async def test_a_rotation_overlap_never_revives_or_extends_an_expired_secret(make_rotor: MakeRotor) -> None:
    """An old secret past its own expiry stays dead when rotated with a long overlap."""
    rotor = await fake_clock_rotor(make_rotor)
    old = await add_expiring_client(rotor, "svc", expires_in=100)
    clock_of(rotor).advance(150)
    assert_error(await failure(rotor.issue(old)), grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")

    new = await rotate(rotor, old, overlap=86400)
    assert (await rotor.issue(new)).access_token
    err = await failure(rotor.issue(old))  # expired 50 s ago: the overlap must not bring it back
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


# -- disable and enable -------------------------------------------------------------


async def test_disabling_a_client_refuses_it_and_revokes_exactly_its_live_families(rotor: Rotor) -> None:
    """set_disabled(True): Issue and Refresh fail CLIENT_DISABLED; the count is its live families only."""
    svc = await rotor.add_client("svc")
    other = await rotor.add_client("svc-other")
    refresh_tokens = await grants(rotor, svc, 3)
    assert await rotor.revoke(svc, refresh_tokens[0])  # one family already dead: not counted again
    other_refresh = (await rotor.issue(other)).refresh_token

    _, families = await set_disabled(rotor.server.store, rotor.server.clock, "svc", True)
    assert families == 2

    assert_error(await failure(rotor.issue(svc)), grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")
    err = await failure(refresh(rotor, svc, refresh_tokens[1]))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")
    assert (await refresh(rotor, other, other_refresh)).access_token  # another client's grant lives on


async def test_enabling_again_lets_it_issue_but_its_old_refresh_tokens_stay_dead(rotor: Rotor) -> None:
    """set_disabled(False) after a disable: Issue works; refresh tokens from before are REFRESH_TOKEN_REVOKED."""
    svc = await rotor.add_client("svc")
    before = await grants(rotor, svc, 2)
    await set_disabled(rotor.server.store, rotor.server.clock, "svc", True)
    _, families = await set_disabled(rotor.server.store, rotor.server.clock, "svc", False)
    assert families == 0

    fresh = await rotor.issue(svc)
    for token in before:
        err = await failure(refresh(rotor, svc, token))
        assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
    assert (await refresh(rotor, svc, fresh.refresh_token)).access_token  # a grant made after lives


# -- RevokeClientTokens: the server side ----------------------------------------------


async def test_revoke_client_tokens_ends_every_live_family_of_that_client_only(
    rotor: Rotor, ops: Credentials
) -> None:
    """families_revoked is the client's live families; its refresh tokens die, another client's live."""
    svc = await rotor.add_client("svc")
    other = await rotor.add_client("svc-other")
    refresh_tokens = await grants(rotor, svc, 3)
    assert await rotor.revoke(svc, refresh_tokens[0])
    other_refresh = (await rotor.issue(other)).refresh_token

    called_at = time.time()
    response = await revoke_client_tokens(rotor, ops, "svc", reason="credentials leaked")
    assert response.families_revoked == 2
    assert response.not_before.seconds >= called_at
    assert response.not_before.nanos == 0 and response.not_before.seconds <= math.floor(time.time()) + 1

    for token in refresh_tokens[1:]:
        err = await failure(refresh(rotor, svc, token))
        assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
    assert (await refresh(rotor, other, other_refresh)).access_token
    assert (await rotor.issue(svc)).access_token  # the client itself is not disabled

    again = await revoke_client_tokens(rotor, ops, "svc")
    assert again.families_revoked == 1  # only the grant made since


@pytest.mark.parametrize("operation", ["revoke-client-tokens", "disable"])
async def test_families_past_their_end_are_not_counted_as_revoked(
    make_rotor: MakeRotor, operation: str
) -> None:
    """A family past refresh_family_ttl, not yet pruned, is no live family: the count leaves it out."""
    rotor = await fake_clock_rotor(make_rotor, tokens={"refresh_ttl": 5, "refresh_family_ttl": 10})
    ops = await rotor.add_client("ops", admin=True)
    svc = await rotor.add_client("svc")
    await grants(rotor, svc, 2)
    clock_of(rotor).advance(20)  # both families ended; the rotator prunes only every 60 s
    await grants(rotor, svc, 1)

    if operation == "disable":
        _, families = await set_disabled(rotor.server.store, rotor.server.clock, "svc", True)
    else:
        families = (await revoke_client_tokens(rotor, ops, "svc")).families_revoked
    assert families == 1, f"{families} families counted; the client had 1 live family (2 had ended)"


async def test_not_before_is_the_next_whole_second_even_on_a_whole_second(make_rotor: MakeRotor) -> None:
    """At an instant with no fraction, not_before is still later than the iat of a token issued at it."""
    rotor = await fake_clock_rotor(make_rotor, start=float(math.floor(time.time())))
    ops = await rotor.add_client("ops", admin=True)
    svc = await rotor.add_client("svc")
    issued = await rotor.issue(svc)  # iat = now, exactly
    response = await revoke_client_tokens(rotor, ops, "svc")
    iat = int(rotor.server.clock.now())
    assert response.not_before.seconds == iat + 1, (
        f"not_before {response.not_before.seconds} does not cover a token issued at {iat} "
        f"(expires {issued.expires_at.seconds}) before the revocation"
    )


async def test_revoke_client_tokens_on_a_fractional_instant_is_the_next_second(make_rotor: MakeRotor) -> None:
    """At t + 0.25, not_before is t + 1: a token issued in the same second is covered."""
    start = float(math.floor(time.time())) + 0.25
    rotor = await fake_clock_rotor(make_rotor, start=start)
    ops = await rotor.add_client("ops", admin=True)
    await rotor.add_client("svc")
    response = await revoke_client_tokens(rotor, ops, "svc")
    assert response.not_before.seconds == math.floor(start) + 1 and response.not_before.nanos == 0


# -- RevokeClientTokens: what watchers see --------------------------------------------


async def test_revoke_client_tokens_is_pushed_to_a_watcher_as_client_revoked(
    rotor: Rotor, ops: Credentials
) -> None:
    """A connected watcher receives KEY_EVENT_TYPE_CLIENT_REVOKED with client_revocation{client_id, not_before}."""
    await rotor.add_client("svc")
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    assert revocations(snapshot) == {}

    response = await revoke_client_tokens(rotor, ops, "svc")
    event = await watcher.next()
    assert event_type(event) == "CLIENT_REVOKED"
    assert event.sequence > snapshot.sequence
    assert event.client_revocation.client_id == "svc"
    assert event.client_revocation.not_before == response.not_before
    assert event.sequence == (await rotor.key_set()).sequence  # resumable like any event

    resumed = await rotor.watch(after_sequence=snapshot.sequence)
    assert await resumed.next() == event  # a watcher resuming after_sequence gets it too
    resumed.cancel()


async def test_a_new_watchers_snapshot_lists_a_live_revocation_until_it_expires(
    make_rotor: MakeRotor,
) -> None:
    """SNAPSHOT.client_revocations holds it for max_access_ttl + clock_skew, then it is gone and pruned."""
    rotor = await fake_clock_rotor(make_rotor)
    ops = await rotor.add_client("ops", admin=True)
    await rotor.add_client("svc")
    response = await revoke_client_tokens(rotor, ops, "svc")
    not_before = response.not_before.seconds
    assert revocations(await snapshot_of_a_new_watcher(rotor)) == {"svc": not_before}

    policy = rotor.config.tokens.max_access_ttl + rotor.config.keys.clock_skew
    clock = clock_of(rotor)
    # just before it could lapse: a token issued before not_before may still verify
    clock.set(not_before + policy - rotor.config.keys.clock_skew - 0.5)
    assert revocations(await snapshot_of_a_new_watcher(rotor)) == {"svc": not_before}

    # well past it (the store also allows clock skew when it reads a snapshot): no longer listed
    clock.set(not_before + policy + 2 * rotor.config.keys.clock_skew + 1)
    assert revocations(await snapshot_of_a_new_watcher(rotor)) == {}
    async with asyncio.timeout(10):  # the rotator's prune removes the row itself
        while True:
            if stored_client_revocations(rotor) == 0:
                break
            await asyncio.sleep(0.05)


async def test_a_watcher_resuming_after_the_revocation_event_was_pruned_gets_it_in_the_snapshot(
    make_rotor: MakeRotor,
) -> None:
    """Only the snapshot remembers a revocation whose event left the log: it is listed there."""
    rotor = await fake_clock_rotor(make_rotor, tokens={"max_access_ttl": 30 * 86400})
    ops = await rotor.add_client("ops", admin=True)
    await rotor.add_client("svc")
    old_sequence = (await rotor.key_set()).sequence
    response = await revoke_client_tokens(rotor, ops, "svc")

    clock_of(rotor).advance(8 * 86400)  # past the 7-day event retention, not past the revocation
    async with asyncio.timeout(10):
        while True:
            first = await (await rotor.watch(after_sequence=old_sequence)).next()
            if event_type(first) == "SNAPSHOT":
                break
            await asyncio.sleep(0.05)
    assert revocations(first) == {"svc": response.not_before.seconds}


# -- RevokeClientTokens: refusals -----------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "client_id", "code", "reason"),
    [
        ("admin", "no-such-client", grpc.StatusCode.NOT_FOUND, "CLIENT_NOT_FOUND"),
        ("admin", "", grpc.StatusCode.INVALID_ARGUMENT, "FIELD_REQUIRED"),
        ("service", "svc", grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED"),
    ],
    ids=["unknown-client", "empty-client-id", "non-admin"],
)
async def test_revoke_client_tokens_refuses_bad_requests_and_changes_nothing(
    rotor: Rotor, ops: Credentials, caller: str, client_id: str, code: grpc.StatusCode, reason: str
) -> None:
    """Unknown client NOT_FOUND, empty id INVALID_ARGUMENT, non-admin PERMISSION_DENIED; nothing revoked."""
    svc = await rotor.add_client("svc")
    token = (await rotor.issue(svc)).refresh_token
    watcher: Watcher = await rotor.watch()
    sequence = (await watcher.next()).sequence

    err = await failure(revoke_client_tokens(rotor, ops if caller == "admin" else svc, client_id))
    assert_error(err, code, reason)

    assert (await refresh(rotor, svc, token)).access_token
    assert (await rotor.key_set()).sequence == sequence
    assert revocations(await snapshot_of_a_new_watcher(rotor)) == {}
    watcher.cancel()
