"""Concurrent writers never break what the contract promises.

- a refresh token raced by its owner and a thief: the thief never wins, and the grant ends;
- Refresh racing the revocation of its own grant: once Revoke said revoked, no refresh token of the
  family works, whichever committed first;
- RotateKeys racing RevokeKey: one active key, every key RevokeKey revoked is out of every key set
  and never comes back, watchers see a gap-free run of events, new tokens verify;
- two admins racing to approve one operation (the requester too): it is applied once, the other
  approval is refused with FAILED_PRECONDITION, and the audit log records one application.

(Fifty concurrent refreshes by the owner alone: test_refresh_race.py.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import rotor_client
from grpc import aio
from rotor.v1 import key_admin_pb2, keys_pb2
from rotor_client._keys import KeyCache

from .conftest import MakeRotor
from .support import (
    AUDIENCE,
    ISSUER,
    Credentials,
    Rotor,
    Watcher,
    assert_error,
    event_type,
    failure,
    jwt_part,
    key_state,
    states,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ROUNDS = 5
# the requester approving its own operation: refused as such, or as applied if an approval won first
REQUESTER_REFUSED = {
    grpc.StatusCode.PERMISSION_DENIED: "SELF_APPROVAL",
    PRECONDITION: "OPERATION_ALREADY_APPLIED",
}


def refresh(rotor: Rotor, client: Credentials, token: str) -> Any:
    request = rotor_client.RefreshRequest(refresh_token=token)
    return rotor.tokens.Refresh(request, metadata=client.metadata, timeout=60)


def outcomes(results: list[Any]) -> tuple[list[Any], list[aio.AioRpcError]]:
    """Successes and gRPC failures; anything else fails the test."""
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, aio.AioRpcError)]
    assert not others, others
    return (
        [r for r in results if not isinstance(r, BaseException)],
        [r for r in results if isinstance(r, aio.AioRpcError)],
    )


async def audit_log(rotor: Rotor, admin: Credentials) -> list[key_admin_pb2.AuditEvent]:
    events: list[key_admin_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await rotor.admin.ListAuditEvents(
            key_admin_pb2.ListAuditEventsRequest(page_size=1000, page_token=token),
            metadata=admin.metadata,
            timeout=30,
        )
        events += page.events
        if not (token := page.next_page_token):
            return events


# -- refresh tokens ------------------------------------------------------------------------------


async def test_a_refresh_token_raced_by_its_owner_and_a_thief_is_never_won_by_the_thief(
    rotor: Rotor, svc: Credentials
) -> None:
    thief = await rotor.add_client("svc-thief")
    for _ in range(ROUNDS):
        granted = await rotor.issue(svc)
        callers = [svc, thief] * 15
        results = await asyncio.gather(
            *(refresh(rotor, c, granted.refresh_token) for c in callers), return_exceptions=True
        )
        by_thief = [r for c, r in zip(callers, results, strict=True) if c is thief]
        assert not any(isinstance(r, rotor_client.TokenResponse) for r in by_thief), "the thief refreshed"
        winners, losers = outcomes(results)
        assert len(winners) <= 1, f"{len(winners)} uses of one refresh token succeeded"
        reasons = Counter(
            assert_error(
                e,
                UNAUTHENTICATED,
                "REFRESH_TOKEN_REUSED",
                "REFRESH_TOKEN_REVOKED",
                "REFRESH_TOKEN_CLIENT_MISMATCH",
            ).reason
            for e in losers
        )
        assert reasons["REFRESH_TOKEN_REUSED"] + reasons["REFRESH_TOKEN_CLIENT_MISMATCH"] >= 1, reasons
        for winner in winners:  # the grant ended: the winner's successor is dead too
            assert_error(
                await failure(refresh(rotor, svc, winner.refresh_token)),
                UNAUTHENTICATED,
                "REFRESH_TOKEN_REVOKED",
            )


async def test_a_refresh_racing_the_revocation_of_its_grant_does_not_outlive_it(
    rotor: Rotor, svc: Credentials
) -> None:
    grants = [await rotor.issue(svc) for _ in range(10)]
    races = [
        asyncio.gather(
            refresh(rotor, svc, g.refresh_token),
            rotor.revoke(svc, g.refresh_token, "race"),
            return_exceptions=True,
        )
        for g in grants
    ]
    for refreshed, revoked in await asyncio.gather(*races):
        assert revoked is True, revoked
        if isinstance(refreshed, aio.AioRpcError):
            assert_error(refreshed, UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
            continue
        assert isinstance(refreshed, rotor_client.TokenResponse), refreshed
        err = await failure(refresh(rotor, svc, refreshed.refresh_token))
        assert_error(err, UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")


# -- keys ----------------------------------------------------------------------------------------


async def read_through(watcher: Watcher, sequence: int) -> list[keys_pb2.KeyEvent]:
    """Events (heartbeats skipped) until one with `sequence`."""
    events: list[keys_pb2.KeyEvent] = []
    while not events or events[-1].sequence < sequence:
        events.append(await watcher.next(within=30))
    return events


def assert_gap_free(events: list[keys_pb2.KeyEvent], after: int) -> None:
    sequences = [e.sequence for e in events]
    assert sequences == list(range(after + 1, after + 1 + len(events))), sequences


def summary(event: keys_pb2.KeyEvent) -> tuple[int, str, str, dict[str, str]]:
    return event.sequence, event_type(event), event.key.kid, states(event.keyset.keys)


def assert_revoked_keys_never_return(events: list[keys_pb2.KeyEvent]) -> None:
    """Along the stream, a kid once revoked is in no later key set."""
    revoked: set[str] = set()
    for event in events:
        if event_type(event) == "KEY_REVOKED":
            revoked.add(event.key.kid)
        if event.HasField("keyset"):
            back = revoked & {k.kid for k in event.keyset.keys}
            assert not back, f"event {event.sequence} ({event_type(event)}) carries revoked keys {back}"
            assert [key_state(k) for k in event.keyset.keys].count("ACTIVE") == 1, event


async def test_rotations_racing_revocations_leave_one_active_key_and_a_gap_free_log(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    from_start = await rotor.watch()
    snapshot = await from_start.next()
    revoked_ok: set[str] = set()
    for _ in range(ROUNDS):
        for immediate in (True, True, False):
            await rotor.admin.RotateKeys(
                rotor_client.RotateKeysRequest(immediate=immediate), metadata=ops.metadata, timeout=60
            )
        listed = await rotor.admin.ListKeys(rotor_client.ListKeysRequest(), metadata=ops.metadata, timeout=30)
        live = [k.kid for k in listed.keys if key_state(k) in ("PENDING", "ACTIVE", "RETIRED")]
        revocations = [
            rotor.admin.RevokeKey(
                rotor_client.RevokeKeyRequest(kid=kid, reason="race"), metadata=ops.metadata, timeout=60
            )
            for kid in live
        ]
        rotations = [
            rotor.admin.RotateKeys(
                rotor_client.RotateKeysRequest(immediate=i % 2 == 0, reason="race"),
                metadata=ops.metadata,
                timeout=60,
            )
            for i in range(6)
        ]
        results = await asyncio.gather(*revocations, *rotations, return_exceptions=True)
        done, failed = outcomes(results)
        for err in failed:  # a pending key an immediate rotation superseded has expired
            assert_error(err, PRECONDITION, "KEY_NOT_REVOCABLE")
        revoked_ok |= {r.key.kid for r in done if isinstance(r, key_admin_pb2.RevokeKeyResponse)}
        assert all(
            key_state(r.key) == "REVOKED" for r in done if isinstance(r, key_admin_pb2.RevokeKeyResponse)
        )

    listed = await rotor.admin.ListKeys(
        rotor_client.ListKeysRequest(include_expired=True), metadata=ops.metadata, timeout=30
    )
    assert list(states(listed.keys).values()).count("ACTIVE") == 1, states(listed.keys)
    assert all(states(listed.keys)[kid] == "REVOKED" for kid in revoked_ok)
    final = await rotor.key_set()
    assert not revoked_ok & set(states(final.keys)), "a revoked key is in the key set"
    snapshot_now = await (await rotor.watch()).next()
    assert not revoked_ok & set(states(snapshot_now.keyset.keys)), "a revoked key is in a new snapshot"
    assert list(states(final.keys).values()).count("ACTIVE") == 1

    live_events = await read_through(from_start, final.sequence)
    assert_gap_free(live_events, snapshot.sequence)
    replay = await rotor.watch(after_sequence=1)
    replayed = await read_through(replay, final.sequence)
    assert_gap_free(replayed, 1)
    assert [summary(e) for e in replayed[-len(live_events) :]] == [summary(e) for e in live_events], (
        "the live stream and the replay disagree"
    )
    assert_revoked_keys_never_return(replayed)
    assert {e.key.kid for e in replayed if event_type(e) == "KEY_REVOKED"} == revoked_ok
    assert set(states(live_events[-1].keyset.keys)) == set(states(final.keys))

    cache = KeyCache()
    cache.install(live_events[-1].keyset)
    verifier = rotor_client.Verifier(cache, issuer=ISSUER, audience=AUDIENCE)
    for _ in range(3):
        token = (await rotor.issue(svc)).access_token
        assert jwt_part(token, 0)["kid"] not in revoked_ok
        assert verifier.verify(token)["client_id"] == svc.client_id


# -- approvals ------------------------------------------------------------------------------------


async def test_two_admins_racing_to_approve_one_operation_apply_it_once(make_rotor: MakeRotor) -> None:
    rotor = await make_rotor(keys={"require_approval": True})
    requester, *approvers = [await rotor.add_client(f"admin-{n}", admin=True) for n in "abc"]
    for round_ in range(ROUNDS):
        await rotor.admin.RotateKeys(
            rotor_client.RotateKeysRequest(immediate=True), metadata=requester.metadata, timeout=60
        )
        keys = states((await rotor.key_set()).keys)
        wanted = "ACTIVE" if round_ % 2 == 0 else "RETIRED"  # the active key needs a successor made
        kid = next(k for k, state in keys.items() if state == wanted)
        asked = await rotor.admin.RevokeKey(
            rotor_client.RevokeKeyRequest(kid=kid, reason="race"), metadata=requester.metadata, timeout=60
        )
        assert asked.pending_approval and asked.operation_id
        approve = rotor_client.ApproveOperationRequest(operation_id=asked.operation_id)
        results = await asyncio.gather(
            *(rotor.admin.ApproveOperation(approve, metadata=a.metadata, timeout=60) for a in approvers),
            rotor.admin.ApproveOperation(approve, metadata=requester.metadata, timeout=60),
            return_exceptions=True,
        )
        *by_approvers, by_requester = results
        applied, refused = outcomes(by_approvers)
        assert len(applied) == 1, f"{len(applied)} approvals applied one operation"
        assert applied[0].key.kid == kid and key_state(applied[0].key) == "REVOKED"
        assert_error(refused[0], PRECONDITION, "OPERATION_ALREADY_APPLIED")
        assert isinstance(by_requester, aio.AioRpcError), by_requester
        assert by_requester.code() in REQUESTER_REFUSED, by_requester
        assert_error(by_requester, by_requester.code(), REQUESTER_REFUSED[by_requester.code()])

        log = Counter((e.action, e.target) for e in await audit_log(rotor, requester))
        assert log["approval.given", kid] == 1, log
        assert log["key.revoked", kid] == 1, log
        after = states((await rotor.key_set()).keys)
        assert kid not in after and list(after.values()).count("ACTIVE") == 1
