"""WatchKeyRotations: snapshot, ordered key events, resume, heartbeats, slow watchers, shutdown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
import rotor_client
from rotor.clock import FakeClock
from rotor.core import events as event_hub

from .support import Credentials, Rotor, Watcher, assert_error, event_type, jwt_part, key_state, states

# A watcher that stops reading must fill its HTTP/2 window quickly, so that the server's
# writes block and its queue in the hub overflows; gRPC's default window (64 KiB and
# growing) would swallow thousands of small events first.
TIGHT_WINDOW = (("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0))


async def rotate_now(rotor: Rotor, admin: Credentials, reason: str = "drill") -> str:
    response = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(immediate=True, reason=reason), metadata=admin.metadata, timeout=30
    )
    return str(response.key.kid)


async def issue_and_revoke(rotor: Rotor, client: Credentials) -> str:
    """Revoke a fresh access token; its jti."""
    token = (await rotor.issue(client)).access_token
    assert await rotor.revoke(client, token, reason="test")
    return str(jwt_part(token, 1)["jti"])


def active_kid(keyset: Any) -> str:
    (kid,) = [kid for kid, state in states(keyset.keys).items() if state == "ACTIVE"]
    return kid


async def test_the_first_message_is_a_snapshot_at_get_key_sets_sequence(rotor: Rotor) -> None:
    key_set = await rotor.key_set()
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    assert event_type(snapshot) == "SNAPSHOT"
    assert snapshot.sequence == snapshot.keyset.sequence == key_set.sequence
    assert key_set.sequence >= 2, "the first key's KEY_PUBLISHED and KEY_ACTIVATED are events too"
    assert states(snapshot.keyset.keys) == states(key_set.keys)
    assert snapshot.keyset.jwks_json == key_set.jwks_json


async def test_an_immediate_rotation_is_pushed_as_published_activated_retired(
    rotor: Rotor, ops: Credentials
) -> None:
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    old = active_kid(snapshot.keyset)

    new = await rotate_now(rotor, ops)
    events = [await watcher.next() for _ in range(3)]

    assert [(event_type(e), e.key.kid) for e in events] == [
        ("KEY_PUBLISHED", new),
        ("KEY_ACTIVATED", new),
        ("KEY_RETIRED", old),
    ]
    sequences = [snapshot.sequence] + [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), f"sequences not strictly increasing: {sequences}"
    for event in events:
        # written in one transaction: each carries the key set as of its end, at its own sequence
        assert event.keyset.sequence == event.sequence
        assert states(event.keyset.keys) == {old: "RETIRED", new: "ACTIVE"}
        assert new in event.keyset.jwks_json and old in event.keyset.jwks_json
    assert (await rotor.key_set()).sequence == events[-1].sequence


async def test_an_immediate_rotation_expires_the_pending_key_it_supersedes(
    rotor: Rotor, ops: Credentials
) -> None:
    watcher = await rotor.watch()
    old = active_kid((await watcher.next()).keyset)
    pending = (
        await rotor.admin.RotateKeys(rotor_client.RotateKeysRequest(), metadata=ops.metadata, timeout=30)
    ).key.kid
    assert (event_type(await watcher.next()), pending) == ("KEY_PUBLISHED", pending)

    new = await rotate_now(rotor, ops)
    events = [await watcher.next() for _ in range(4)]
    assert [(event_type(e), e.key.kid) for e in events] == [
        ("KEY_PUBLISHED", new),
        ("KEY_ACTIVATED", new),
        ("KEY_RETIRED", old),
        ("KEY_EXPIRED", pending),
    ]
    assert key_state(events[-1].key) == "EXPIRED"
    for event in events:
        assert states(event.keyset.keys) == {old: "RETIRED", new: "ACTIVE"}, (
            "a superseded key stayed in the set"
        )


async def test_a_revoked_access_token_is_pushed_with_its_jti(rotor: Rotor, svc: Credentials) -> None:
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    token = (await rotor.issue(svc)).access_token
    assert await rotor.revoke(svc, token, reason="leaked")

    event = await watcher.next()
    assert event_type(event) == "TOKEN_REVOKED"
    assert event.sequence > snapshot.sequence
    assert event.revoked_token.jti == jwt_part(token, 1)["jti"]
    assert event.revoked_token.expires_at.seconds == jwt_part(token, 1)["exp"]
    assert not event.HasField("keyset") and not event.HasField("key")


async def test_resuming_with_after_sequence_replays_exactly_the_missed_events(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    live = await rotor.watch()
    await live.next()
    leaving = await rotor.watch()
    await leaving.next()
    await issue_and_revoke(rotor, svc)
    last_seen = (await leaving.next()).sequence
    leaving.cancel()

    await rotate_now(rotor, ops)  # three events
    await issue_and_revoke(rotor, svc)  # one more
    assert (await live.next()).sequence == last_seen
    missed = [await live.next() for _ in range(4)]

    resumed = await rotor.watch(after_sequence=last_seen)
    replayed = [await resumed.next() for _ in range(4)]
    assert replayed == missed, "the replay differs from what a connected watcher saw"
    assert [e.sequence for e in replayed] == [last_seen + i for i in range(1, 5)]

    # then live events, with nothing repeated
    jti = await issue_and_revoke(rotor, svc)
    after = await resumed.next()
    assert event_type(after) == "TOKEN_REVOKED" and after.revoked_token.jti == jti
    assert after.sequence == missed[-1].sequence + 1


async def test_after_sequence_beyond_the_newest_gets_a_snapshot(rotor: Rotor) -> None:
    key_set = await rotor.key_set()
    watcher = await rotor.watch(after_sequence=key_set.sequence + 1000)
    first = await watcher.next()
    assert event_type(first) == "SNAPSHOT"
    assert first.sequence == key_set.sequence
    assert states(first.keyset.keys) == states(key_set.keys)


async def test_after_sequence_at_the_newest_replays_nothing(make_rotor: Any) -> None:
    rotor = await make_rotor(heartbeat_interval=0.3)
    newest = (await rotor.key_set()).sequence
    watcher = await rotor.watch(after_sequence=newest)
    first = await watcher.next(heartbeats=True)
    assert event_type(first) == "HEARTBEAT", f"expected nothing before a heartbeat, got {event_type(first)}"
    assert first.sequence == newest


async def test_heartbeats_repeat_the_last_sequence_and_carry_no_key_set(make_rotor: Any) -> None:
    rotor = await make_rotor(heartbeat_interval=0.3)
    svc = await rotor.add_client("svc")
    watcher = await rotor.watch()
    snapshot = await watcher.next()

    beats = [await watcher.next(heartbeats=True) for _ in range(2)]
    for beat in beats:
        assert event_type(beat) == "HEARTBEAT"
        assert beat.sequence == snapshot.sequence
        assert not beat.HasField("keyset") and not beat.HasField("key") and not beat.revoked_tokens

    token = (await rotor.issue(svc)).access_token
    assert await rotor.revoke(svc, token)
    revoked = await watcher.next()
    assert event_type(revoked) == "TOKEN_REVOKED"
    beat = await watcher.next(heartbeats=True)
    assert event_type(beat) == "HEARTBEAT" and beat.sequence == revoked.sequence

    assert await rotor.revoke(svc, token), "revoking twice must still say revoked"
    for _ in range(2):  # a heartbeat sent before the second Revoke, then the next one
        beat = await watcher.next(heartbeats=True)
        assert event_type(beat) == "HEARTBEAT", "a second revocation of one token was pushed again"
        assert beat.sequence == revoked.sequence


async def test_a_slow_watcher_is_cut_off_while_a_reading_one_gets_every_event(
    make_rotor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_hub, "QUEUE_SIZE", 4)
    rotor = await make_rotor()
    svc = await rotor.add_client("svc")
    slow = await rotor.watch(channel=rotor.channel(options=TIGHT_WINDOW))
    reading = await rotor.watch()
    assert event_type(await slow.next()) == "SNAPSHOT"  # subscribed; from now on it reads nothing
    assert event_type(await reading.next()) == "SNAPSHOT"

    async def read_revocations(watcher: Watcher, count: int) -> list[str]:
        return [(await watcher.next(within=20)).revoked_token.jti for _ in range(count)]

    reader = asyncio.create_task(read_revocations(reading, 30))
    jtis = [await issue_and_revoke(rotor, svc) for _ in range(30)]
    assert await asyncio.wait_for(reader, 30) == jtis, "the reading watcher missed or reordered events"

    err = await slow.ended()
    assert_error(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "WATCHER_TOO_SLOW")
    got = [e.revoked_token.jti for e in slow.received[1:]]
    assert got == jtis[: len(got)] and len(got) < len(jtis)

    # it resumes from the last event it got, and misses nothing
    resumed = await rotor.watch(after_sequence=slow.received[-1].sequence)
    rest = await read_revocations(resumed, len(jtis) - len(got))
    assert got + rest == jtis


async def test_shutdown_ends_open_streams_with_unavailable(rotor: Rotor) -> None:
    watcher = await rotor.watch()
    snapshot = await watcher.next()
    ending = asyncio.create_task(watcher.ended(within=15))
    await rotor.stop()
    err = await ending
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    assert f"after_sequence={snapshot.sequence}" in err.details()


@pytest.mark.parametrize("successor", ["pending", "none"])
async def test_revoking_the_active_key_pushes_its_replacement_at_once(
    rotor: Rotor, ops: Credentials, successor: str
) -> None:
    watcher = await rotor.watch()
    old = active_kid((await watcher.next()).keyset)
    pending = ""
    if successor == "pending":
        pending = (
            await rotor.admin.RotateKeys(rotor_client.RotateKeysRequest(), metadata=ops.metadata, timeout=30)
        ).key.kid
        assert (event_type(await watcher.next()), pending) == ("KEY_PUBLISHED", pending)

    await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=old, reason="leaked"), metadata=ops.metadata, timeout=30
    )
    revoked = await watcher.next()
    assert (event_type(revoked), revoked.key.kid, key_state(revoked.key)) == ("KEY_REVOKED", old, "REVOKED")
    assert revoked.key.revocation_reason == "leaked" and revoked.key.HasField("revoked_at")
    if successor == "pending":
        activated = await watcher.next()
        assert (event_type(activated), activated.key.kid) == ("KEY_ACTIVATED", pending)
        new = pending
    else:
        published, activated = await watcher.next(), await watcher.next()
        assert event_type(published) == "KEY_PUBLISHED" and event_type(activated) == "KEY_ACTIVATED"
        assert published.key.kid == activated.key.kid != old
        new = activated.key.kid
    for event in (revoked, activated):  # one transaction: the set as of its end
        assert states(event.keyset.keys) == {new: "ACTIVE"}
        assert old not in event.keyset.jwks_json
    assert activated.sequence > revoked.sequence


async def test_watchers_are_limited_per_anonymous_peer_but_not_for_clients(
    rotor: Rotor, svc: Credentials
) -> None:
    channels = [rotor.channel() for _ in range(3)]  # spread the streams over connections
    watchers = []
    for i in range(100):
        watcher = await rotor.watch(channel=channels[i % 3])
        assert event_type(await watcher.next()) == "SNAPSHOT"
        watchers.append(watcher)

    one_too_many = await rotor.watch(channel=channels[0])
    assert_error(await one_too_many.ended(), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS")

    # an authenticated watcher counts against its client, not the peer
    call = rotor.tokens.WatchKeyRotations(rotor_client.WatchKeyRotationsRequest(), metadata=svc.metadata)
    assert event_type(await Watcher(call).next()) == "SNAPSHOT"

    watchers.pop().cancel()  # a closed stream frees its place
    async with asyncio.timeout(10):
        while True:
            retry = await rotor.watch(channel=channels[1])
            try:
                assert event_type(await retry.next()) == "SNAPSHOT"
                break
            except grpc.aio.AioRpcError as e:  # the server has not seen the cancellation yet
                assert_error(e, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_WATCHERS")
                await asyncio.sleep(0.05)


async def test_a_watcher_whose_events_were_pruned_gets_a_snapshot(make_rotor: Any) -> None:
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    svc = await rotor.add_client("svc")
    await issue_and_revoke(rotor, svc)
    old_sequence = (await rotor.key_set()).sequence
    watcher = await rotor.watch()
    await watcher.next()

    clock.advance(8 * 86400)  # past the event log's 7-day retention; the successor key is due too
    published = await watcher.next()
    assert event_type(published) == "KEY_PUBLISHED"

    async with asyncio.timeout(10):  # the rotator prunes right after it publishes
        while True:
            first = await (await rotor.watch(after_sequence=1)).next()
            if event_type(first) == "SNAPSHOT":
                break
            await asyncio.sleep(0.05)
    assert first.sequence == published.sequence
    assert states(first.keyset.keys)[published.key.kid] == "PENDING"

    # the newest event is always kept: resuming from just before it still replays it
    resumed = await rotor.watch(after_sequence=published.sequence - 1)
    assert await resumed.next() == published
    assert old_sequence < published.sequence
