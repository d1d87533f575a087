"""The audit log over gRPC: every security event is one chained entry, readable with ListAuditEvents.

Each test does one kind of thing and reads back, as an admin, exactly the entries it added
(actor, action, target, tenant, outcome). Issuing tokens adds none. When the audit entry
cannot be written (the table is taken away under the running server), the change does not
happen either.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import rotor_client
from google.protobuf import timestamp_pb2
from rotor.clock import FakeClock
from rotor.config import TlsConfig
from rotor.core.audit import GENESIS, entry_hash
from rotor.core.clients import register_client, rotate_secret, set_disabled
from rotor.core.model import AuditEntry
from rotor.core.tokens import refresh_token_hash
from rotor.store import StoreError
from rotor.v1 import key_admin_pb2

from .certs import CertificateAuthority
from .conftest import MakeRotor
from .support import Credentials, Rotor, assert_error, failure, jwt_part, states

Row = tuple[str, str, str, str, str]  # (actor, action, target, tenant, outcome)


# -- reading the log ------------------------------------------------------------


async def list_page(
    rotor: Rotor, admin: Credentials, **request: Any
) -> key_admin_pb2.ListAuditEventsResponse:
    response: key_admin_pb2.ListAuditEventsResponse = await rotor.admin.ListAuditEvents(
        key_admin_pb2.ListAuditEventsRequest(**request), metadata=admin.metadata, timeout=10
    )
    return response


async def pages(
    rotor: Rotor, admin: Credentials, page_size: int = 1000, **request: Any
) -> list[list[key_admin_pb2.AuditEvent]]:
    """Every page of ListAuditEvents, following next_page_token to the end."""
    found: list[list[key_admin_pb2.AuditEvent]] = []
    token = ""
    for _ in range(10_000):
        page = await list_page(rotor, admin, page_size=page_size, page_token=token, **request)
        most = page_size or 100  # 0: the default page size
        assert len(page.events) <= most, f"{len(page.events)} events on a page of {most}"
        found.append(list(page.events))
        if not page.next_page_token:
            return found
        assert page.next_page_token != token, "next_page_token did not move"
        token = page.next_page_token
    raise AssertionError("ListAuditEvents never gave an empty next_page_token")


async def audit_log(rotor: Rotor, admin: Credentials, **request: Any) -> list[key_admin_pb2.AuditEvent]:
    return [event for page in await pages(rotor, admin, **request) for event in page]


async def head(rotor: Rotor) -> int:
    """The last sequence of the audit log (from the store: reading it must not add to it)."""
    sequence, _ = await rotor.server.store.audit_head()
    return sequence


async def entries_after(rotor: Rotor, admin: Credentials, mark: int) -> list[key_admin_pb2.AuditEvent]:
    """The entries after sequence `mark`, read with ListAuditEvents."""
    return [e for e in await audit_log(rotor, admin) if e.sequence > mark]


async def rows_after(rotor: Rotor, admin: Credentials, mark: int) -> list[Row]:
    return [row(e) for e in await entries_after(rotor, admin, mark)]


def row(event: key_admin_pb2.AuditEvent) -> Row:
    return (event.actor, event.action, event.target, event.tenant, event.outcome)


def details(event: key_admin_pb2.AuditEvent) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(event.details_json)
    return doc


def as_entry(event: key_admin_pb2.AuditEvent) -> AuditEntry:
    """The store's AuditEntry that an AuditEvent describes (to recompute its hash)."""
    return AuditEntry(
        sequence=event.sequence,
        occurred_at=event.occurred_at.seconds + event.occurred_at.nanos / 1e9,
        actor=event.actor,
        action=event.action,
        target=event.target,
        outcome=event.outcome,
        tenant=event.tenant,
        details_json=event.details_json,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def assert_chained(events: list[key_admin_pb2.AuditEvent]) -> None:
    """Each prev_hash is the previous event's hash, and each hash recomputes from the event."""
    for previous, event in itertools.pairwise(events):
        assert event.sequence == previous.sequence + 1, f"a gap after {previous.sequence}"
        assert event.prev_hash == previous.hash, (
            f"entry {event.sequence} does not chain to {previous.sequence}"
        )
    for event in events:
        assert entry_hash(as_entry(event)) == event.hash, f"entry {event.sequence}'s hash does not recompute"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def rows_once(rotor: Rotor, admin: Credentials, mark: int, count: int, what: str) -> list[Row]:
    """The rows after `mark`, once there are `count` of them (the rotator writes in the background)."""

    async def arrived() -> bool:
        return await head(rotor) >= mark + count

    await eventually(arrived, what)
    return await rows_after(rotor, admin, mark)


async def first_keys(rotor: Rotor, admin: Credentials, *tenants: str) -> None:
    """Until the rotator has given each new tenant its first key (and written that down)."""

    async def activated() -> bool:
        log = await audit_log(rotor, admin)
        return all(any(e.action == "key.activated" and e.tenant == t for e in log) for t in tenants)

    await eventually(activated, f"the first keys of {', '.join(tenants)}")


# -- actions ------------------------------------------------------------------------


async def rotate(rotor: Rotor, admin: Credentials, immediate: bool, reason: str = "drill") -> str:
    response = await rotor.admin.RotateKeys(
        rotor_client.RotateKeysRequest(immediate=immediate, reason=reason),
        metadata=admin.metadata,
        timeout=30,
    )
    return str(response.key.kid)


async def active_kid(rotor: Rotor) -> str:
    (kid,) = [k for k, state in states((await rotor.key_set()).keys).items() if state == "ACTIVE"]
    return kid


async def refresh(rotor: Rotor, client: Credentials, token: str) -> Any:
    request = rotor_client.RefreshRequest(refresh_token=token)
    return await rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)


async def family_of(rotor: Rotor, refresh_token: str) -> str:
    stored = await rotor.server.store.get_refresh_token(refresh_token_hash(refresh_token))
    assert stored is not None
    return stored.family_id


# -- every security event is an entry ----------------------------------------------


async def test_the_first_key_is_audited_as_published_and_activated_by_rotor(
    rotor: Rotor, ops: Credentials
) -> None:
    """Starting a new store writes key.published and key.activated for the first key, actor "rotor"."""
    kid = await active_kid(rotor)
    log = await audit_log(rotor, ops)
    assert [row(e) for e in log][:2] == [
        ("rotor", "key.published", kid, "", "success"),
        ("rotor", "key.activated", kid, "", "success"),
    ]
    assert log[0].sequence == 1 and log[0].prev_hash == GENESIS


async def test_registering_a_client_is_audited_with_the_cli_as_actor(rotor: Rotor) -> None:
    """register_client writes client.created (actor "cli") with the client's tenant and grant."""
    mark = await head(rotor)
    ops = await rotor.add_client("ops-admin", admin=True)
    await rotor.add_client("svc-orders")
    await register_client(
        rotor.server.store, rotor.server.clock, "acme-billing", scopes=("bill",), tenant="acme"
    )
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log][:3] == [
        ("cli", "client.created", "ops-admin", "", "success"),
        ("cli", "client.created", "svc-orders", "", "success"),
        ("cli", "client.created", "acme-billing", "acme", "success"),
    ]
    assert details(log[0])["admin"] is True
    assert details(log[1])["scopes"] == ["orders.read", "orders.write"] and "admin" not in details(log[1])
    for event in log[:3]:
        assert "secret" not in event.details_json.replace("secret_expires_at", ""), event.details_json


async def test_disabling_enabling_and_rotating_a_secret_are_audited(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """client.disabled (with the families it revoked), client.enabled and client.secret_rotated."""
    await rotor.issue(svc)  # a refresh family for disable to revoke
    store, clock = rotor.server.store, rotor.server.clock
    mark = await head(rotor)
    await set_disabled(store, clock, "svc-orders", True)
    await set_disabled(store, clock, "svc-orders", False)
    await rotate_secret(store, clock, "svc-orders", overlap=3600)
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [
        ("cli", "client.disabled", "svc-orders", "", "success"),
        ("cli", "client.enabled", "svc-orders", "", "success"),
        ("cli", "client.secret_rotated", "svc-orders", "", "success"),
    ]
    assert details(log[0])["families_revoked"] == 1
    assert details(log[2])["overlap_seconds"] == 3600


async def test_an_immediate_rotation_is_audited_with_the_admin_as_actor(
    rotor: Rotor, ops: Credentials
) -> None:
    """RotateKeys immediate: the new key published and activated, the old one retired, by the admin."""
    old = await active_kid(rotor)
    mark = await head(rotor)
    new = await rotate(rotor, ops, immediate=True, reason="quarterly drill")
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [
        ("ops-admin", "key.published", new, "", "success"),
        ("ops-admin", "key.activated", new, "", "success"),
        ("ops-admin", "key.retired", old, "", "success"),
    ]
    assert all(details(e)["reason"] == "quarterly drill" for e in log)


async def test_a_pending_key_superseded_by_an_immediate_rotation_is_audited_as_expired(
    rotor: Rotor, ops: Credentials
) -> None:
    """A published key that never signed expires when an immediate rotation supersedes it."""
    old = await active_kid(rotor)
    mark = await head(rotor)
    pending = await rotate(rotor, ops, immediate=False)
    new = await rotate(rotor, ops, immediate=True)
    assert await rows_after(rotor, ops, mark) == [
        ("ops-admin", "key.published", pending, "", "success"),
        ("ops-admin", "key.published", new, "", "success"),
        ("ops-admin", "key.activated", new, "", "success"),
        ("ops-admin", "key.retired", old, "", "success"),
        ("ops-admin", "key.expired", pending, "", "success"),
    ]


async def test_the_schedule_is_audited_with_rotor_as_actor(make_rotor: MakeRotor) -> None:
    """On the clock: the successor published, activated, its predecessor retired, then expired."""
    clock = FakeClock(start=time.time())
    rotor = await make_rotor(clock=clock)
    ops = await rotor.add_client("ops", admin=True)
    old = await active_kid(rotor)
    mark = await head(rotor)

    clock.advance(3600 - 2)  # rotation_period - publish_lead
    [published] = await rows_once(rotor, ops, mark, 1, "the successor's key.published")
    new = published[2]
    assert published == ("rotor", "key.published", new, "", "success") and new != old

    clock.advance(2)
    assert (await rows_once(rotor, ops, mark, 3, "the activation"))[1:] == [
        ("rotor", "key.activated", new, "", "success"),
        ("rotor", "key.retired", old, "", "success"),
    ]

    clock.advance(600 + 1)  # max_access_ttl + clock_skew after retiring
    assert (await rows_once(rotor, ops, mark, 4, "the expiry"))[3:] == [
        ("rotor", "key.expired", old, "", "success")
    ]


async def test_revoking_a_key_is_audited_with_its_replacement(rotor: Rotor, ops: Credentials) -> None:
    """RevokeKey of the active key: key.revoked, then the replacement published and activated."""
    old = await active_kid(rotor)
    mark = await head(rotor)
    await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=old, reason="leaked"), metadata=ops.metadata, timeout=30
    )
    new = await active_kid(rotor)
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [
        ("ops-admin", "key.revoked", old, "", "success"),
        ("ops-admin", "key.published", new, "", "success"),
        ("ops-admin", "key.activated", new, "", "success"),
    ]
    assert details(log[0])["reason"] == "leaked"


async def test_an_approved_key_revocation_is_audited_as_requested_then_given(make_rotor: MakeRotor) -> None:
    """With require_approval: approval.requested by the first admin; the revocation and
    approval.given by the second."""
    rotor = await make_rotor(keys={"require_approval": True})
    first = await rotor.add_client("admin-a", admin=True)
    second = await rotor.add_client("admin-b", admin=True)
    kid = await active_kid(rotor)
    mark = await head(rotor)

    asked = await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=kid, reason="suspected"), metadata=first.metadata, timeout=30
    )
    assert asked.pending_approval
    [requested] = await entries_after(rotor, first, mark)
    assert row(requested) == ("admin-a", "approval.requested", kid, "", "success")
    assert details(requested)["operation_id"] == asked.operation_id

    await rotor.admin.ApproveOperation(
        rotor_client.ApproveOperationRequest(operation_id=asked.operation_id),
        metadata=second.metadata,
        timeout=30,
    )
    new = await active_kid(rotor)
    log = await entries_after(rotor, first, requested.sequence)
    assert [row(e) for e in log] == [
        ("admin-b", "key.revoked", kid, "", "success"),
        ("admin-b", "key.published", new, "", "success"),
        ("admin-b", "key.activated", new, "", "success"),
        ("admin-b", "approval.given", kid, "", "success"),
    ]
    assert details(log[-1]) == {"operation_id": asked.operation_id, "requested_by": "admin-a"}


async def test_revoking_an_access_token_is_audited_once_with_its_jti(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """token.revoked names the jti and who revoked it; revoking it again adds nothing."""
    own = (await rotor.issue(svc)).access_token
    other = (await rotor.issue(svc)).access_token
    mark = await head(rotor)
    assert await rotor.revoke(svc, own, reason="rotated out")
    assert await rotor.revoke(svc, own)  # already revoked: no second entry
    assert await rotor.revoke(ops, other)  # an admin may revoke anyone's
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [
        ("svc-orders", "token.revoked", jwt_part(own, 1)["jti"], "", "success"),
        ("ops-admin", "token.revoked", jwt_part(other, 1)["jti"], "", "success"),
    ]
    assert details(log[0])["client_id"] == "svc-orders" and details(log[0])["reason"] == "rotated out"
    assert details(log[1])["client_id"] == "svc-orders"


async def test_revoking_a_refresh_token_is_audited_as_its_family_revoked(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """Revoke of a refresh token writes family.revoked naming the family."""
    granted = await rotor.issue(svc)
    family = await family_of(rotor, granted.refresh_token)
    mark = await head(rotor)
    assert await rotor.revoke(svc, granted.refresh_token, reason="logout")
    assert await rotor.revoke(svc, granted.refresh_token)  # already dead: no second entry
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [("svc-orders", "family.revoked", family, "", "success")]
    assert details(log[0]) == {"client_id": "svc-orders", "reason": "logout"}


async def test_a_reused_refresh_token_is_audited_as_reuse_detected(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """Using one refresh token twice: the refusal commits a refresh.reuse_detected entry."""
    granted = await rotor.issue(svc)
    family = await family_of(rotor, granted.refresh_token)
    mark = await head(rotor)
    await refresh(rotor, svc, granted.refresh_token)  # a success: no entry
    assert await head(rotor) == mark, "a successful refresh wrote an audit entry"
    err = await failure(refresh(rotor, svc, granted.refresh_token))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
    assert await rows_after(rotor, ops, mark) == [
        ("svc-orders", "refresh.reuse_detected", family, "", "success")
    ]


async def test_a_refresh_token_presented_by_another_client_is_audited(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """A stolen refresh token: refresh.stolen_token_detected, actor the client that presented it."""
    thief = await rotor.add_client("svc-thief")
    granted = await rotor.issue(svc)
    family = await family_of(rotor, granted.refresh_token)
    mark = await head(rotor)
    err = await failure(refresh(rotor, thief, granted.refresh_token))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [("svc-thief", "refresh.stolen_token_detected", family, "", "success")]
    assert details(log[0])["owner"] == "svc-orders"


async def test_revoke_client_tokens_is_audited(rotor: Rotor, svc: Credentials, ops: Credentials) -> None:
    """RevokeClientTokens writes client.tokens_revoked by the admin, with the families and not_before."""
    await rotor.issue(svc)
    await rotor.issue(svc)
    mark = await head(rotor)
    response = await rotor.admin.RevokeClientTokens(
        key_admin_pb2.RevokeClientTokensRequest(client_id="svc-orders", reason="offboarded"),
        metadata=ops.metadata,
        timeout=30,
    )
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [("ops-admin", "client.tokens_revoked", "svc-orders", "", "success")]
    assert details(log[0]) == {
        "families_revoked": response.families_revoked,
        "not_before": response.not_before.seconds,
        "reason": "offboarded",
    }
    assert response.families_revoked == 2


ADMIN_CALLS: dict[str, Callable[[Any, tuple[tuple[str, str], ...]], Awaitable[Any]]] = {
    "RotateKeys": lambda stub, md: stub.RotateKeys(
        rotor_client.RotateKeysRequest(immediate=True), metadata=md, timeout=10
    ),
    "RevokeKey": lambda stub, md: stub.RevokeKey(
        rotor_client.RevokeKeyRequest(kid="k1"), metadata=md, timeout=10
    ),
    "ApproveOperation": lambda stub, md: stub.ApproveOperation(
        rotor_client.ApproveOperationRequest(operation_id="op"), metadata=md, timeout=10
    ),
    "ListKeys": lambda stub, md: stub.ListKeys(rotor_client.ListKeysRequest(), metadata=md, timeout=10),
    "ListAuditEvents": lambda stub, md: stub.ListAuditEvents(
        key_admin_pb2.ListAuditEventsRequest(), metadata=md, timeout=10
    ),
    "RevokeClientTokens": lambda stub, md: stub.RevokeClientTokens(
        key_admin_pb2.RevokeClientTokensRequest(client_id="svc-orders"), metadata=md, timeout=10
    ),
    "GetRotationStatus": lambda stub, md: stub.GetRotationStatus(
        key_admin_pb2.GetRotationStatusRequest(), metadata=md, timeout=10
    ),
}

# caller -> (metadata for the call, the actor the entry names, status code, reason)
CALLERS: dict[str, tuple[tuple[tuple[str, str], ...], str, grpc.StatusCode, str]] = {
    "non-admin": ((), "svc-orders", grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED"),  # svc's own
    "anonymous": ((), "anonymous", grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT"),
    "wrong-secret": (
        rotor_client.basic_auth("ops-admin", "not-the-secret-0123456789"),
        "ops-admin",
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CLIENT",
    ),
    "unknown-client": (
        rotor_client.basic_auth("ghost", "whatever-secret-0123456789"),
        "ghost",
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CLIENT",
    ),
}


@pytest.mark.parametrize("caller", list(CALLERS))
async def test_a_refused_admin_call_is_audited_as_denied(
    rotor: Rotor, svc: Credentials, ops: Credentials, caller: str
) -> None:
    """Every KeyAdmin RPC called by a non-admin or an unauthenticated caller: refused, and one
    admin.denied entry with the claimed client id (or "anonymous") as actor, the RPC as target,
    outcome "denied"; the key set does not change."""
    metadata, actor, code, reason = CALLERS[caller]
    if caller == "non-admin":
        metadata = svc.metadata
    keys_before = states((await rotor.key_set()).keys)
    for rpc, call in ADMIN_CALLS.items():
        mark = await head(rotor)
        err = await failure(call(rotor.admin, metadata))
        assert_error(err, code, reason)
        log = await entries_after(rotor, ops, mark)
        assert [row(e) for e in log] == [(actor, "admin.denied", rpc, "", "denied")]
        assert details(log[0])["reason"] == reason
        assert "not-the-secret" not in log[0].details_json + log[0].actor, "the wrong secret was written down"
    assert states((await rotor.key_set()).keys) == keys_before


async def test_a_disabled_admin_is_refused_and_audited_as_denied(rotor: Rotor, ops: Credentials) -> None:
    """A disabled admin's KeyAdmin call is refused (CLIENT_DISABLED) and written as admin.denied."""
    other = await rotor.add_client("ops-other", admin=True)
    await set_disabled(rotor.server.store, rotor.server.clock, "ops-other", True)
    mark = await head(rotor)
    err = await failure(ADMIN_CALLS["RotateKeys"](rotor.admin, other.metadata))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "CLIENT_DISABLED")
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [("ops-other", "admin.denied", "RotateKeys", "", "denied")]
    assert details(log[0])["reason"] == "CLIENT_DISABLED"


async def test_a_non_admin_authenticated_by_certificate_is_named_in_admin_denied(
    make_rotor: MakeRotor, tmp_path: Path
) -> None:
    """Over mTLS, a client authenticated by its certificate (no Basic credentials) calling KeyAdmin
    is refused, and the admin.denied entry names that client, not "anonymous"."""
    ca = CertificateAuthority()
    server_cert, server_key = ca.server().write(tmp_path, "server")
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    tls = TlsConfig(
        cert_file=str(server_cert),
        key_file=str(server_key),
        client_ca_file=str(tmp_path / "ca.pem"),
        require_client_cert=True,
    )
    rotor = await make_rotor(tls=tls)
    await rotor.add_client("orders", cert_san="spiffe://example.org/orders")
    client = ca.client("spiffe://example.org/orders")
    mark = await head(rotor)
    credentials = grpc.ssl_channel_credentials(ca.pem, client.key_pem, client.cert_pem)
    async with grpc.aio.secure_channel(rotor.address, credentials) as channel:
        err = await failure(ADMIN_CALLS["RotateKeys"](rotor_client.KeyAdminStub(channel), ()))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    entries = await rotor.server.store.audit_after(mark)
    assert [(e.actor, e.action, e.target, e.outcome) for e in entries] == [
        ("orders", "admin.denied", "RotateKeys", "denied")
    ]


async def test_issuing_and_refreshing_tokens_add_no_audit_entries(rotor: Rotor, svc: Credentials) -> None:
    """Issuance is counted, not logged: 20 Issues and their refreshes leave the log as it was."""
    mark = await head(rotor)
    issued = [await rotor.issue(svc) for _ in range(20)]
    for granted in issued[:5]:
        await refresh(rotor, svc, granted.refresh_token)
    assert await head(rotor) == mark


# -- ListAuditEvents ------------------------------------------------------------------


async def busy_log(rotor: Rotor, admin: Credentials, clients: int = 20) -> int:
    """Some of every kind of entry; the head after them."""
    for i in range(clients):
        await rotor.add_client(f"svc-{i:02d}")
    await rotate(rotor, admin, immediate=True)
    await rotate(rotor, admin, immediate=False)
    return await head(rotor)


async def test_pages_cover_every_entry_once_in_order(rotor: Rotor, ops: Credentials) -> None:
    """page_size with next_page_token walks sequences 1..head, each once, oldest first."""
    last = await busy_log(rotor, ops)
    for page_size in (1, 4, 7, last, last + 1):
        found = await pages(rotor, ops, page_size=page_size)
        sequences = [e.sequence for page in found for e in page]
        assert sequences == list(range(1, last + 1)), f"page_size {page_size}"
        assert all(len(page) == page_size for page in found[:-1]), (
            f"a short page before the end ({page_size})"
        )
    assert len(await audit_log(rotor, ops, page_size=0)) == last, "page_size 0: the default size"


async def test_every_page_chains_and_every_hash_recomputes(rotor: Rotor, ops: Credentials) -> None:
    """On each page, every prev_hash is the previous entry's hash and entry_hash recomputes every
    hash from the fields ListAuditEvents returns; the pages chain to each other."""
    await busy_log(rotor, ops)
    found = await pages(rotor, ops, page_size=5)
    assert found[0][0].prev_hash == GENESIS
    for page in found:
        assert_chained(page)
    assert_chained([e for page in found for e in page])
    sequence, last_hash = await rotor.server.store.audit_head()
    assert (found[-1][-1].sequence, found[-1][-1].hash) == (sequence, last_hash)


async def test_since_returns_the_entries_at_or_after_it(make_rotor: MakeRotor) -> None:
    """`since` filters by occurred_at (inclusive), pages too, and a future `since` returns nothing."""
    clock = FakeClock(start=float(int(time.time())))  # whole and half seconds: exact as Timestamps
    rotor = await make_rotor(clock=clock)
    ops = await rotor.add_client("ops", admin=True)
    clock.advance(100)
    since = timestamp_pb2.Timestamp(seconds=int(clock.now()))
    for i in range(6):
        await rotor.add_client(f"late-{i}")
        clock.advance(0.5)

    late = await audit_log(rotor, ops, since=since, page_size=4)
    assert [e.target for e in late] == [f"late-{i}" for i in range(6)]
    assert all(e.occurred_at.ToNanoseconds() >= since.ToNanoseconds() for e in late)
    assert_chained(late)
    everything = await audit_log(rotor, ops)
    assert late[0].prev_hash == everything[len(everything) - 7].hash  # the entry just before the cut

    at_one = await audit_log(rotor, ops, since=late[2].occurred_at)
    assert [e.target for e in at_one] == [f"late-{i}" for i in range(2, 6)]

    future = timestamp_pb2.Timestamp(seconds=int(clock.now()) + 3600)
    page = await list_page(rotor, ops, since=future)
    assert list(page.events) == [] and page.next_page_token == ""


async def test_tenant_returns_only_that_tenants_entries(rotor: Rotor, ops: Credentials) -> None:
    """`tenant` keeps one tenant's entries (its client and the first key the rotator gives it);
    an empty tenant means every tenant."""
    await rotor.add_client("svc-default")
    await register_client(
        rotor.server.store, rotor.server.clock, "acme-billing", scopes=("bill",), tenant="acme"
    )
    await first_keys(rotor, ops, "acme")
    acme = await audit_log(rotor, ops, tenant="acme", page_size=1)
    assert {e.tenant for e in acme} == {"acme"}
    assert [(e.actor, e.action) for e in acme][:3] == [
        ("cli", "client.created"),
        ("rotor", "key.published"),
        ("rotor", "key.activated"),
    ]
    assert acme[0].target == "acme-billing"
    everything = await audit_log(rotor, ops)
    assert [e.sequence for e in acme] == [e.sequence for e in everything if e.tenant == "acme"]
    assert {e.tenant for e in everything} == {"", "acme"}


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_token": "-5"}, "page_token"),
        ({"page_token": "12abc"}, "page_token"),
        ({"page_token": "9" * 40}, "page_token"),
        ({"page_size": 5000}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"tenant": "t" * 5000}, "tenant"),
    ],
    ids=[
        "word",
        "negative",
        "trailing-junk",
        "forty-digits",
        "page-size-5000",
        "page-size-negative",
        "huge-tenant",
    ],
)
async def test_a_bad_page_token_or_page_size_is_invalid_argument(
    rotor: Rotor, ops: Credentials, request_fields: dict[str, Any], field: str
) -> None:
    """A page_token this server never gave, a page_size outside 1..1000, an oversized tenant:
    INVALID_ARGUMENT naming the field, with a short message."""
    err = await failure(list_page(rotor, ops, **request_fields))
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")
    assert field in (err.details() or "") and len(err.details() or "") < 400


async def test_a_page_token_past_the_end_of_any_database_integer_is_refused_cleanly(
    rotor: Rotor, ops: Credentials
) -> None:
    """A 20-digit page_token (past a 64-bit integer) is INVALID_ARGUMENT or an empty last page,
    never INTERNAL or UNAVAILABLE."""
    try:
        page = await list_page(rotor, ops, page_token="9" * 20)
    except grpc.aio.AioRpcError as err:
        assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")
    else:
        assert list(page.events) == [] and page.next_page_token == ""


async def test_a_non_admin_cannot_list_audit_events(rotor: Rotor, svc: Credentials) -> None:
    """ListAuditEvents is for admins: anyone else gets PERMISSION_DENIED and no entries."""
    err = await failure(list_page(rotor, svc))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")


# -- fail closed ------------------------------------------------------------------------


def _rename_table(path: Path, old: str, new: str) -> None:
    conn = sqlite3.connect(path, timeout=10)
    try:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        conn.commit()
    finally:
        conn.close()


async def take_audit_table_away(rotor: Rotor) -> None:
    """Rename audit_events under the running server (in a thread: the server shares this loop)."""
    await asyncio.to_thread(_rename_table, rotor.config.sqlite_path, "audit_events", "audit_events_away")


async def give_audit_table_back(rotor: Rotor) -> None:
    await asyncio.to_thread(_rename_table, rotor.config.sqlite_path, "audit_events_away", "audit_events")


async def key_state_of(rotor: Rotor, admin: Credentials) -> tuple[Any, ...]:
    """What a rotation would change: the listed keys, the key set and its sequence, the event log."""
    listed = await rotor.admin.ListKeys(
        rotor_client.ListKeysRequest(include_expired=True), metadata=admin.metadata, timeout=10
    )
    key_set = await rotor.key_set()
    return (
        [(k.kid, k.state) for k in listed.keys],
        key_set.jwks_json,
        key_set.sequence,
        await rotor.server.store.last_sequence(),
    )


async def test_a_rotation_whose_audit_entry_cannot_be_written_does_not_happen(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """No audit table: RotateKeys fails UNAVAILABLE and the keys, key set and event log stay as they were;
    with the table back, the next rotation chains on from the old head."""
    before = await key_state_of(rotor, ops)
    old_head = await rotor.server.store.audit_head()
    signing = (await rotor.issue(svc)).key_id
    failures = rotor.server.metrics.registry.get_sample_value("rotor_audit_write_failures_total") or 0.0

    await take_audit_table_away(rotor)
    for immediate in (True, False):
        err = await failure(rotate(rotor, ops, immediate=immediate))
        assert_error(err, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
        assert await key_state_of(rotor, ops) == before
    err = await failure(
        rotor.admin.RevokeKey(rotor_client.RevokeKeyRequest(kid=signing), metadata=ops.metadata, timeout=10)
    )
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    denied = await failure(ADMIN_CALLS["RotateKeys"](rotor.admin, svc.metadata))
    assert denied.code() != grpc.StatusCode.OK  # refused even when the refusal cannot be written
    assert await key_state_of(rotor, ops) == before
    assert (await rotor.issue(svc)).key_id == signing, "the server signs with a key the store never got"
    assert await rotor.server.store.audit_head() == old_head
    after = rotor.server.metrics.registry.get_sample_value("rotor_audit_write_failures_total")
    assert after is not None and after >= failures + 3, (
        "the failed audit writes were not counted for the alert"
    )

    await give_audit_table_back(rotor)
    await rotate(rotor, ops, immediate=True)
    log = await audit_log(rotor, ops)
    assert_chained(log)
    assert log[old_head[0]].prev_hash == old_head[1]
    assert [e.action for e in log[old_head[0] :]] == ["key.published", "key.activated", "key.retired"]


async def test_a_token_revocation_whose_audit_entry_cannot_be_written_does_not_happen(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """No audit table: Revoke of an access token fails UNAVAILABLE, the jti is not revoked and no
    TOKEN_REVOKED event is written; with the table back, it can be revoked."""
    token = (await rotor.issue(svc)).access_token
    jti = jwt_part(token, 1)["jti"]
    store = rotor.server.store
    last_event = await store.last_sequence()

    await take_audit_table_away(rotor)
    err = await failure(rotor.revoke(svc, token, reason="leaked"))
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert await store.get_revoked_token(jti) is None
    assert await store.events_after(last_event) == []
    snapshot = await (await rotor.watch()).next()
    assert jti not in {r.jti for r in snapshot.revoked_tokens}

    await give_audit_table_back(rotor)
    mark = await head(rotor)
    assert await rotor.revoke(svc, token, reason="leaked")
    assert await rows_after(rotor, ops, mark) == [("svc-orders", "token.revoked", jti, "", "success")]
    assert [e.type for e in await store.events_after(last_event)] == ["TOKEN_REVOKED"]


async def test_client_changes_whose_audit_entry_cannot_be_written_do_not_happen(
    rotor: Rotor, svc: Credentials, ops: Credentials
) -> None:
    """No audit table: registering, disabling, rotating a secret and RevokeClientTokens all fail,
    and the clients and their grants are as they were."""
    store, clock = rotor.server.store, rotor.server.clock
    granted = await rotor.issue(svc)
    await take_audit_table_away(rotor)

    with pytest.raises(StoreError):
        await register_client(store, clock, "svc-new", scopes=("orders.read",))
    with pytest.raises(StoreError):
        await set_disabled(store, clock, "svc-orders", True)
    with pytest.raises(StoreError):
        await rotate_secret(store, clock, "svc-orders")
    err = await failure(
        rotor.admin.RevokeClientTokens(
            key_admin_pb2.RevokeClientTokensRequest(client_id="svc-orders"), metadata=ops.metadata, timeout=10
        )
    )
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE")
    assert await store.get_client("svc-new") is None

    await give_audit_table_back(rotor)
    assert (await rotor.issue(svc)).access_token, "the old secret stopped working, or the client was disabled"
    assert (await refresh(rotor, svc, granted.refresh_token)).access_token, "its refresh family was revoked"


async def test_a_tenant_admin_reads_only_its_tenants_entries(rotor: Rotor, ops: Credentials) -> None:
    """An admin of tenant acme gets acme's entries only (also when it names no tenant); asking for
    another tenant is refused and written as admin.denied."""
    acme_ops = await rotor.add_client("acme-ops", admin=True, tenant="acme")
    await rotor.add_client("zeta-svc", tenant="zeta")
    await first_keys(rotor, ops, "acme", "zeta")  # the rotator's entries, before any comparison
    own = await audit_log(rotor, acme_ops)
    assert own and {e.tenant for e in own} == {"acme"}
    assert await audit_log(rotor, acme_ops, tenant="acme") == own

    mark = await head(rotor)
    err = await failure(list_page(rotor, acme_ops, tenant="zeta"))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_REQUIRED")
    log = await entries_after(rotor, ops, mark)
    assert [row(e) for e in log] == [("acme-ops", "admin.denied", "ListAuditEvents", "zeta", "denied")]
    assert details(log[0])["reason"] == "TENANT_SCOPE"
