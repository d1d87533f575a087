"""Propagation you can see: named watchers in GetRotationStatus, and activation gated on them."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import pytest
import rotor_client
from grpc import aio
from rotor.clock import FakeClock
from rotor.v1 import key_admin_pb2, keys_pb2

from .conftest import MakeRotor
from .support import (
    Credentials,
    Rotor,
    Watcher,
    assert_error,
    event_type,
    failure,
    jwt_part,
    key_state,
    rotation_status,
    status_when,
)

WATCHER_HEADER = "x-rotor-watcher"
PUBLISH_LEAD = 2.0
MAX_ACK_WAIT = 30.0
# A watcher that stops reading fills its HTTP/2 window after a few events (see test_watch.py).
TIGHT_WINDOW = (("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0))


def named_watch(rotor: Rotor, name: str, tenant: str = "", channel: aio.Channel | None = None) -> Watcher:
    """A WatchKeyRotations stream that names itself with x-rotor-watcher."""
    stub = rotor_client.TokenServiceStub(channel) if channel is not None else rotor.tokens
    request = rotor_client.WatchKeyRotationsRequest(tenant=tenant)
    return Watcher(stub.WatchKeyRotations(request, metadata=((WATCHER_HEADER, name),)))


def seconds(stamp: Any) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


async def rotate(rotor: Rotor, admin: Credentials) -> keys_pb2.Key:
    """A scheduled (not immediate) rotation: the new key is PENDING for publish_lead."""
    response = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(reason="drill"), metadata=admin.metadata, timeout=30
    )
    assert key_state(response.key) == "PENDING"
    return response.key


async def key_state_of(rotor: Rotor, admin: Credentials, kid: str) -> str:
    listed = await rotor.admin.ListKeys(rotor_client.ListKeysRequest(), metadata=admin.metadata, timeout=10)
    (key,) = [k for k in listed.keys if k.kid == kid]
    return key_state(key)


async def activated(rotor: Rotor, admin: Credentials, kid: str, within: float = 10.0) -> keys_pb2.Key:
    """The key once it is ACTIVE (the rotator ticks at least every second)."""
    async with asyncio.timeout(within):
        while True:
            listed = await rotor.admin.ListKeys(
                rotor_client.ListKeysRequest(), metadata=admin.metadata, timeout=10
            )
            (key,) = [k for k in listed.keys if k.kid == kid]
            if key_state(key) == "ACTIVE":
                return key
            await asyncio.sleep(0.05)


async def activation_audit(rotor: Rotor, admin: Credentials, kid: str) -> key_admin_pb2.AuditEvent:
    """The key.activated audit entry of `kid`."""
    response = await rotor.admin.ListAuditEvents(
        key_admin_pb2.ListAuditEventsRequest(page_size=1000), metadata=admin.metadata, timeout=10
    )
    (entry,) = [e for e in response.events if e.action == "key.activated" and e.target == kid]
    return entry


# -- GetRotationStatus -----------------------------------------------------------------


async def test_a_named_watcher_is_listed_with_its_peer_connection_time_and_progress(
    make_rotor: MakeRotor,
) -> None:
    """The watcher appears under its name, and its sent_sequence follows what it was sent."""
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    ops = await rotor.add_client("ops", admin=True)
    opened_at = clock.now()
    watcher = named_watch(rotor, "billing")
    snapshot = await watcher.next()

    status = await status_when(
        rotor, ops, lambda s: [w.sent_sequence for w in s.watchers] == [snapshot.sequence]
    )
    (listed,) = status.watchers
    assert listed.name == "billing"
    assert listed.peer.startswith(("ipv4:127.0.0.1:", "ipv6:")), listed.peer
    assert seconds(listed.connected_at) == pytest.approx(opened_at, abs=1e-3)
    assert status.latest_sequence == snapshot.sequence

    clock.advance(1)
    await rotate(rotor, ops)
    published = await watcher.next()
    assert event_type(published) == "KEY_PUBLISHED"
    status = await status_when(
        rotor, ops, lambda s: [w.sent_sequence for w in s.watchers] == [published.sequence]
    )
    assert status.latest_sequence == published.sequence, "the watcher caught up with the latest sequence"
    assert seconds(status.watchers[0].connected_at) == pytest.approx(opened_at, abs=1e-3)


async def test_an_unnamed_watcher_is_not_listed(rotor: Rotor, ops: Credentials) -> None:
    """Only watchers that name themselves are tracked; an anonymous stream is not shown."""
    unnamed = await rotor.watch()
    await unnamed.next()
    named = named_watch(rotor, "billing")
    await named.next()
    status = await status_when(rotor, ops, lambda s: len(s.watchers) >= 1)
    assert [w.name for w in status.watchers] == ["billing"]


async def test_a_closed_watcher_disappears_from_the_status(rotor: Rotor, ops: Credentials) -> None:
    """Once its stream ends, a named watcher is no longer listed; another still is."""
    leaving, staying = named_watch(rotor, "leaving"), named_watch(rotor, "staying")
    await leaving.next()
    await staying.next()
    await status_when(rotor, ops, lambda s: sorted(w.name for w in s.watchers) == ["leaving", "staying"])
    leaving.cancel()
    await status_when(rotor, ops, lambda s: [w.name for w in s.watchers] == ["staying"])


async def test_a_watcher_is_listed_only_in_its_own_tenants_status(rotor: Rotor, ops: Credentials) -> None:
    """A named watcher of tenant acme shows in acme's status, not in the default tenant's."""
    await rotor.add_client("svc-acme", tenant="acme")
    async with asyncio.timeout(10):  # the rotator discovers the tenant at its next tick
        while True:
            try:
                await rotation_status(rotor, ops, "acme")
                break
            except aio.AioRpcError as e:
                assert_error(e, grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")
                await asyncio.sleep(0.05)
    watcher = named_watch(rotor, "acme-billing", tenant="acme")
    await watcher.next()
    acme = await rotation_status(rotor, ops, "acme")
    assert [w.name for w in acme.watchers] == ["acme-billing"]
    assert not (await rotation_status(rotor, ops, "")).watchers


async def test_latest_sequence_is_get_key_sets_sequence(
    rotor: Rotor, ops: Credentials, svc: Credentials
) -> None:
    """latest_sequence is the tenant's newest event, as GetKeySet reports it, also after a revocation."""
    assert (await rotation_status(rotor, ops)).latest_sequence == (await rotor.key_set()).sequence
    token = (await rotor.issue(svc)).access_token
    assert await rotor.revoke(svc, token)
    latest = (await rotation_status(rotor, ops)).latest_sequence
    assert latest == (await rotor.key_set()).sequence
    watcher = await rotor.watch(after_sequence=latest - 1)
    revoked = await watcher.next()
    assert (event_type(revoked), revoked.sequence) == ("TOKEN_REVOKED", latest)
    assert revoked.revoked_token.jti == jwt_part(token, 1)["jti"]


async def test_a_non_admin_may_not_read_the_rotation_status(rotor: Rotor, svc: Credentials) -> None:
    """GetRotationStatus is a KeyAdmin RPC: an ordinary client gets PERMISSION_DENIED."""
    err = await failure(rotation_status(rotor, svc))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")


async def test_an_unknown_tenants_status_is_not_found(rotor: Rotor, ops: Credentials) -> None:
    """GetRotationStatus for a tenant that does not exist is NOT_FOUND, TENANT_NOT_FOUND."""
    err = await failure(rotation_status(rotor, ops, "no-such-tenant"))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")


@pytest.mark.parametrize("name", ["b" * 300, "billing team"], ids=["300-characters", "with-a-space"])
async def test_a_bad_watcher_name_is_refused(rotor: Rotor, ops: Credentials, name: str) -> None:
    """An x-rotor-watcher that is not a short printable name ends the stream with INVALID_ARGUMENT."""
    watcher = named_watch(rotor, name)
    err = await watcher.ended()
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")
    message = err.details() or ""
    assert WATCHER_HEADER in message and len(message) < 300, message
    assert not (await rotation_status(rotor, ops)).watchers


# -- activation_requires_ack -------------------------------------------------------------


@pytest.fixture
async def gated(make_rotor: MakeRotor) -> tuple[Rotor, FakeClock, Credentials]:
    """A server whose pending keys wait for named watchers, on a fake clock, and an admin."""
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(
        clock=clock,
        keys={"activation_requires_ack": True, "max_ack_wait": MAX_ACK_WAIT, "publish_lead": PUBLISH_LEAD},
    )
    return rotor, clock, await rotor.add_client("ops", admin=True)


async def test_a_key_sent_to_every_named_watcher_activates_at_its_activates_at(
    gated: tuple[Rotor, FakeClock, Credentials],
) -> None:
    """With the watcher served, the pending key activates on time; the audit says every watcher had it."""
    rotor, clock, ops = gated
    watcher = named_watch(rotor, "billing")
    await watcher.next()
    pending = await rotate(rotor, ops)
    published = await watcher.next()
    assert (event_type(published), published.key.kid) == ("KEY_PUBLISHED", pending.kid)
    await status_when(rotor, ops, lambda s: any(w.sent_sequence >= published.sequence for w in s.watchers))

    clock.advance(PUBLISH_LEAD - 0.5)  # never before publish_lead, acknowledged or not
    await rotor.server.keys.apply_due("")
    assert await key_state_of(rotor, ops, pending.kid) == "PENDING"

    clock.advance(0.5)
    key = await activated(rotor, ops, pending.kid)
    assert seconds(key.activates_at) == pytest.approx(seconds(pending.activates_at), abs=1e-3)
    assert event_type(await watcher.next()) == "KEY_ACTIVATED"

    details = activation_audit_details(await activation_audit(rotor, ops, pending.kid))
    said = details.lower()
    assert "every" in said and "watcher" in said and "max_ack_wait" not in said, (
        f"the key.activated audit entry does not say every named watcher had been sent it: {details}"
    )


async def test_a_key_held_back_by_a_stalled_watcher_activates_when_max_ack_wait_runs_out(
    gated: tuple[Rotor, FakeClock, Credentials],
) -> None:
    """A named watcher that stopped reading never gets KEY_PUBLISHED: the key waits, then max_ack_wait ends it."""
    rotor, clock, ops = gated
    svc = await rotor.add_client("svc")
    stalled = named_watch(rotor, "stalled", channel=rotor.channel(options=TIGHT_WINDOW))
    await stalled.next()  # from now on it reads nothing; its HTTP/2 window fills
    for _ in range(60):
        token = (await rotor.issue(svc)).access_token
        assert await rotor.revoke(svc, token)
    pending = await rotate(rotor, ops)
    status = await rotation_status(rotor, ops)
    assert status.watchers[0].sent_sequence < status.latest_sequence

    clock.advance(PUBLISH_LEAD)  # due, but the stalled watcher has not been sent it
    next_at = await rotor.server.keys.apply_due("")
    assert await key_state_of(rotor, ops, pending.kid) == "PENDING", "it activated without the watcher"
    assert next_at is not None and clock.now() < next_at <= clock.now() + 1

    clock.advance(MAX_ACK_WAIT)
    await activated(rotor, ops, pending.kid)
    details = activation_audit_details(await activation_audit(rotor, ops, pending.kid))
    assert "max_ack_wait" in details and "stalled" in details, (
        f"the key.activated audit entry does not say max_ack_wait ran out, nor name the watcher: {details}"
    )


def activation_audit_details(entry: key_admin_pb2.AuditEvent) -> str:
    """The entry's details_json, checked to be a JSON object."""
    assert entry.outcome == "success" and entry.actor == "rotor", entry
    assert isinstance(json.loads(entry.details_json), dict), entry.details_json
    return entry.details_json
