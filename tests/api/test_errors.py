"""Every failure carries a status, an actionable message and ErrorInfo(domain="rotor", reason)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import rotor_client
from google.protobuf import duration_pb2
from grpc import aio
from rotor.core.clients import set_disabled

from .support import Credentials, Rotor, assert_error, failure, status_details

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

MEGABYTE = 1024 * 1024


@dataclass
class World:
    """A server with an ordinary client (svc), a second one (other) and an admin (ops)."""

    rotor: Rotor
    svc: Credentials
    other: Credentials
    ops: Credentials

    def issue(self, as_: Credentials | None = None, **fields: Any) -> Awaitable[Any]:
        return self.rotor.tokens.Issue(
            rotor_client.IssueRequest(**fields), metadata=(as_ or self.svc).metadata, timeout=10
        )

    def refresh(self, token: str, as_: Credentials | None = None, **fields: Any) -> Awaitable[Any]:
        return self.rotor.tokens.Refresh(
            rotor_client.RefreshRequest(refresh_token=token, **fields),
            metadata=(as_ or self.svc).metadata,
            timeout=10,
        )

    def revoke(self, token: str, as_: Credentials | None = None, **fields: Any) -> Awaitable[Any]:
        return self.rotor.tokens.Revoke(
            rotor_client.RevokeRequest(token=token, **fields), metadata=(as_ or self.svc).metadata, timeout=10
        )

    def key_admin(self, method: str, request: Any, as_: Credentials | None = None) -> Awaitable[Any]:
        return getattr(self.rotor.admin, method)(request, metadata=(as_ or self.ops).metadata, timeout=10)

    async def first_message(self, **fields: Any) -> Any:
        """WatchKeyRotations' first message (errors surface on the first read)."""
        call = self.rotor.tokens.WatchKeyRotations(
            rotor_client.WatchKeyRotationsRequest(**fields), timeout=10
        )
        try:
            return await call.read()
        finally:
            call.cancel()

    def raw(self, path: str, blob: bytes, streaming: bool = False) -> Awaitable[Any]:
        """Send bytes that are not a valid request message."""
        channel = self.rotor.channel()
        if streaming:
            call = channel.unary_stream(path)(blob, metadata=self.svc.metadata, timeout=10)
            return call.read()
        return channel.unary_unary(path)(blob, metadata=self.svc.metadata, timeout=10)


@pytest.fixture
async def world(rotor: Rotor, svc: Credentials, ops: Credentials) -> World:
    other = await rotor.add_client("svc-billing", scopes=("billing.read",), audiences=("api", "billing"))
    return World(rotor, svc, other, ops)


Case = Callable[[World], Awaitable[Any]]
CASES: list[Any] = []


def case(code: grpc.StatusCode, *reasons: str) -> Callable[[Case], Case]:
    def register(call: Case) -> Case:
        CASES.append(pytest.param(call, code, reasons, id=call.__name__))
        return call

    return register


# -- who is calling ------------------------------------------------------------


@case(UNAUTHENTICATED, "INVALID_CLIENT")
def wrong_secret(w: World) -> Awaitable[Any]:
    return w.issue(as_=Credentials(w.svc.client_id, "not-the-secret"))


@case(UNAUTHENTICATED, "INVALID_CLIENT")
def unknown_client(w: World) -> Awaitable[Any]:
    return w.issue(as_=Credentials("nobody", "whatever"))


@case(UNAUTHENTICATED, "INVALID_CLIENT")
def no_credentials(w: World) -> Awaitable[Any]:
    return w.rotor.tokens.Issue(rotor_client.IssueRequest(), timeout=10)


@case(UNAUTHENTICATED, "INVALID_CLIENT")
def bearer_instead_of_basic(w: World) -> Awaitable[Any]:
    return w.rotor.tokens.Issue(
        rotor_client.IssueRequest(), metadata=(("authorization", "Bearer abc.def.ghi"),), timeout=10
    )


@case(UNAUTHENTICATED, "CLIENT_DISABLED")
async def disabled_client(w: World) -> Any:
    await set_disabled(w.rotor.server.store, w.rotor.server.clock, w.other.client_id, True)
    return await w.issue(as_=w.other, audience=["api"])


@case(DENIED, "ADMIN_REQUIRED")
def list_keys_as_non_admin(w: World) -> Awaitable[Any]:
    return w.key_admin("ListKeys", rotor_client.ListKeysRequest(), as_=w.svc)


@case(DENIED, "ADMIN_REQUIRED")
def rotate_keys_as_non_admin(w: World) -> Awaitable[Any]:
    return w.key_admin("RotateKeys", rotor_client.RotateKeysRequest(immediate=True), as_=w.svc)


@case(DENIED, "ADMIN_REQUIRED")
def revoke_key_as_non_admin(w: World) -> Awaitable[Any]:
    return w.key_admin("RevokeKey", rotor_client.RevokeKeyRequest(kid="some-kid"), as_=w.svc)


@case(DENIED, "ADMIN_REQUIRED")
def approve_as_non_admin(w: World) -> Awaitable[Any]:
    return w.key_admin("ApproveOperation", rotor_client.ApproveOperationRequest(operation_id="x"), as_=w.svc)


# -- least privilege -------------------------------------------------------------


@case(DENIED, "SCOPE_NOT_ALLOWED")
def unregistered_scope(w: World) -> Awaitable[Any]:
    return w.issue(scope=["orders.read", "orders.delete"])


@case(DENIED, "SCOPE_NOT_ALLOWED")
async def refresh_widening_the_grant(w: World) -> Any:
    granted = await w.issue(scope=["orders.read"])
    return await w.refresh(granted.refresh_token, scope=["orders.write"])


@case(DENIED, "AUDIENCE_NOT_ALLOWED")
def unregistered_audience(w: World) -> Awaitable[Any]:
    return w.issue(audience=["billing"])


@case(DENIED, "AUDIENCE_NOT_ALLOWED")
async def client_without_audiences(w: World) -> Any:
    loner = await w.rotor.add_client("no-audience", audiences=())
    return await w.issue(as_=loner)


@case(INVALID, "AUDIENCE_REQUIRED")
def several_audiences_none_named(w: World) -> Awaitable[Any]:
    return w.issue(as_=w.other)


@case(DENIED, "SUBJECT_NOT_ALLOWED")
def another_subject(w: World) -> Awaitable[Any]:
    return w.issue(subject="someone-else")


# -- ttl ---------------------------------------------------------------------------


@case(INVALID, "TTL_TOO_LONG")
def ttl_above_max_access_ttl(w: World) -> Awaitable[Any]:
    return w.issue(ttl=duration_pb2.Duration(seconds=601))


@case(INVALID, "INVALID_TTL")
def negative_ttl(w: World) -> Awaitable[Any]:
    return w.issue(ttl=duration_pb2.Duration(seconds=-5))


@case(INVALID, "INVALID_TTL")
def zero_ttl_set_explicitly(w: World) -> Awaitable[Any]:
    return w.issue(ttl=duration_pb2.Duration(seconds=0))


@case(INVALID, "INVALID_DURATION")
def ttl_with_mixed_signs(w: World) -> Awaitable[Any]:
    return w.issue(ttl=duration_pb2.Duration(seconds=1, nanos=-5))


@case(INVALID, "INVALID_DURATION")
def ttl_with_a_second_of_nanos(w: World) -> Awaitable[Any]:
    return w.issue(ttl=duration_pb2.Duration(seconds=1, nanos=1_000_000_000))


# -- required and ill-formed fields ------------------------------------------------


@case(INVALID, "FIELD_REQUIRED")
def refresh_without_token(w: World) -> Awaitable[Any]:
    return w.refresh("")


@case(INVALID, "FIELD_REQUIRED")
def revoke_without_token(w: World) -> Awaitable[Any]:
    return w.revoke("")


@case(INVALID, "FIELD_REQUIRED")
def revoke_key_without_kid(w: World) -> Awaitable[Any]:
    return w.key_admin("RevokeKey", rotor_client.RevokeKeyRequest(kid=""))


@case(INVALID, "FIELD_REQUIRED")
def approve_without_operation_id(w: World) -> Awaitable[Any]:
    return w.key_admin("ApproveOperation", rotor_client.ApproveOperationRequest())


@case(INVALID, "EMPTY_VALUE")
def empty_scope(w: World) -> Awaitable[Any]:
    return w.issue(scope=["orders.read", ""])


@case(INVALID, "INVALID_VALUE")
def scope_with_a_space(w: World) -> Awaitable[Any]:
    return w.issue(scope=["orders.read orders.write"])


@case(INVALID, "TOO_MANY_VALUES")
def too_many_audiences(w: World) -> Awaitable[Any]:
    return w.issue(audience=[f"aud-{i}" for i in range(21)])


# -- refresh tokens ------------------------------------------------------------------


@case(UNAUTHENTICATED, "REFRESH_TOKEN_INVALID")
def unknown_refresh_token(w: World) -> Awaitable[Any]:
    return w.refresh("A" * 43)


@case(UNAUTHENTICATED, "REFRESH_TOKEN_CLIENT_MISMATCH")
async def refresh_token_of_another_client(w: World) -> Any:
    granted = await w.issue()
    return await w.refresh(granted.refresh_token, as_=w.other)


@case(UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")
async def refresh_token_used_twice(w: World) -> Any:
    granted = await w.issue()
    await w.refresh(granted.refresh_token)
    return await w.refresh(granted.refresh_token)


@case(UNAUTHENTICATED, "REFRESH_TOKEN_REVOKED")
async def refresh_token_of_a_revoked_grant(w: World) -> Any:
    granted = await w.issue()
    assert (await w.revoke(granted.refresh_token)).revoked
    return await w.refresh(granted.refresh_token)


@case(DENIED, "TOKEN_NOT_OWNED")
async def revoking_another_clients_access_token(w: World) -> Any:
    granted = await w.issue()
    return await w.revoke(granted.access_token, as_=w.other)


@case(DENIED, "TOKEN_NOT_OWNED")
async def revoking_another_clients_refresh_token(w: World) -> Any:
    granted = await w.issue()
    return await w.revoke(granted.refresh_token, as_=w.other)


# -- keys, operations, tenants -----------------------------------------------------


@case(NOT_FOUND, "KEY_NOT_FOUND")
def revoking_an_unknown_kid(w: World) -> Awaitable[Any]:
    return w.key_admin("RevokeKey", rotor_client.RevokeKeyRequest(kid="no-such-kid", reason="typo"))


@case(NOT_FOUND, "OPERATION_NOT_FOUND")
def approving_an_unknown_operation(w: World) -> Awaitable[Any]:
    return w.key_admin("ApproveOperation", rotor_client.ApproveOperationRequest(operation_id="no-such-op"))


@case(NOT_FOUND, "TENANT_NOT_FOUND")
def get_key_set_of_another_tenant(w: World) -> Awaitable[Any]:
    return w.rotor.tokens.GetKeySet(rotor_client.GetKeySetRequest(tenant="other"), timeout=10)


@case(NOT_FOUND, "TENANT_NOT_FOUND")
def watch_another_tenant(w: World) -> Awaitable[Any]:
    return w.first_message(tenant="other")


@case(NOT_FOUND, "TENANT_NOT_FOUND")
def list_keys_of_another_tenant(w: World) -> Awaitable[Any]:
    return w.key_admin("ListKeys", rotor_client.ListKeysRequest(tenant="other"))


@case(NOT_FOUND, "TENANT_NOT_FOUND")
def rotate_keys_of_another_tenant(w: World) -> Awaitable[Any]:
    return w.key_admin("RotateKeys", rotor_client.RotateKeysRequest(tenant="other"))


# -- bytes that are not a message ----------------------------------------------------

NOT_A_MESSAGE = b"\xff" * 16
BAD_UTF8_IN_FIELD_1 = b"\x0a\x04\xc3\x28\xa0\xa1"  # field 1, length 4, not UTF-8


@case(INVALID, "MALFORMED_REQUEST")
def garbage_issue_request(w: World) -> Awaitable[Any]:
    return w.raw("/rotor.v1.TokenService/Issue", NOT_A_MESSAGE)


@case(INVALID, "MALFORMED_REQUEST")
def invalid_utf8_audience(w: World) -> Awaitable[Any]:
    return w.raw("/rotor.v1.TokenService/Issue", BAD_UTF8_IN_FIELD_1)


@case(INVALID, "MALFORMED_REQUEST")
def truncated_refresh_request(w: World) -> Awaitable[Any]:
    return w.raw("/rotor.v1.TokenService/Refresh", b"\x0a\x7f" + b"x" * 10)


@case(INVALID, "MALFORMED_REQUEST")
def garbage_get_key_set_request(w: World) -> Awaitable[Any]:
    return w.raw("/rotor.v1.TokenService/GetKeySet", NOT_A_MESSAGE)


@case(INVALID, "MALFORMED_REQUEST")
def garbage_list_keys_request(w: World) -> Awaitable[Any]:
    return w.raw("/rotor.v1.KeyAdmin/ListKeys", NOT_A_MESSAGE)


@case(INVALID, "MALFORMED_REQUEST")
def garbage_watch_request(w: World) -> Awaitable[Any]:
    return w.raw("/rotor.v1.TokenService/WatchKeyRotations", BAD_UTF8_IN_FIELD_1, streaming=True)


@pytest.mark.parametrize("call, code, reasons", CASES)
async def test_every_error_names_its_reason(
    world: World, call: Case, code: grpc.StatusCode, reasons: tuple[str, ...]
) -> None:
    err = await failure(call(world))
    assert_error(err, code, *reasons)
    assert len(err.details()) > 8, f"not a message a developer can act on: {err.details()!r}"


async def test_the_server_still_serves_after_every_error(world: World) -> None:
    for param in CASES:
        (call, _, _) = param.values
        with pytest.raises(aio.AioRpcError):
            await call(world)
    assert (await world.issue()).access_token


# -- huge input never becomes a huge message -------------------------------------------

HUGE = "x" * MEGABYTE


def _huge_cases() -> list[Any]:
    def p(name: str, call: Case) -> Any:
        return pytest.param(call, id=name)

    return [
        p("issue_audience", lambda w: w.issue(audience=[HUGE])),
        p("issue_second_audience", lambda w: w.issue(audience=["api", HUGE])),
        p("issue_scope", lambda w: w.issue(scope=[HUGE])),
        p("issue_subject", lambda w: w.issue(subject=HUGE)),
        p("refresh_token", lambda w: w.refresh(HUGE)),
        p("refresh_scope", lambda w: w.refresh("A" * 43, scope=[HUGE])),
        p("revoke_token", lambda w: w.revoke(HUGE)),
        p("revoke_reason", lambda w: w.revoke("x.y.z", reason=HUGE)),
        p(
            "get_key_set_tenant",
            lambda w: w.rotor.tokens.GetKeySet(rotor_client.GetKeySetRequest(tenant=HUGE)),
        ),
        p("watch_tenant", lambda w: w.first_message(tenant=HUGE)),
        p("revoke_key_kid", lambda w: w.key_admin("RevokeKey", rotor_client.RevokeKeyRequest(kid=HUGE))),
        p(
            "revoke_key_reason",
            lambda w: w.key_admin("RevokeKey", rotor_client.RevokeKeyRequest(kid="no-such-kid", reason=HUGE)),
        ),
        p(
            "approve_operation_id",
            lambda w: w.key_admin(
                "ApproveOperation", rotor_client.ApproveOperationRequest(operation_id=HUGE)
            ),
        ),
        p("rotate_reason", lambda w: w.key_admin("RotateKeys", rotor_client.RotateKeysRequest(reason=HUGE))),
        p("list_keys_tenant", lambda w: w.key_admin("ListKeys", rotor_client.ListKeysRequest(tenant=HUGE))),
    ]


@pytest.mark.parametrize("call", _huge_cases())
async def test_an_error_about_a_megabyte_of_input_stays_short(world: World, call: Case) -> None:
    err = await failure(call(world))
    assert_error(err, INVALID, "VALUE_TOO_LONG", "INVALID_VALUE")
    assert len(err.details()) < 300, f"{len(err.details())} characters: {err.details()[:200]!r}..."
    status = status_details(err)
    assert status is not None and status.ByteSize() < 1024


async def test_an_unregistered_name_is_quoted_by_a_short_prefix(world: World) -> None:
    long_audience = "a" * 250  # valid, but not registered
    err = await failure(world.issue(audience=[long_audience]))
    assert_error(err, DENIED, "AUDIENCE_NOT_ALLOWED")
    assert long_audience not in err.details() and len(err.details()) < 300


# -- two-admin operations ------------------------------------------------------------


async def test_approval_errors_name_their_reason(make_rotor: Any) -> None:
    rotor = await make_rotor(keys={"require_approval": True})
    first = await rotor.add_client("admin-a", admin=True)
    second = await rotor.add_client("admin-b", admin=True)
    kid = next(k.kid for k in (await rotor.key_set()).keys)
    asked = await rotor.admin.RevokeKey(
        rotor_client.RevokeKeyRequest(kid=kid, reason="suspected leak"), metadata=first.metadata, timeout=10
    )
    assert asked.pending_approval and asked.operation_id
    approve = rotor_client.ApproveOperationRequest(operation_id=asked.operation_id)

    err = await failure(rotor.admin.ApproveOperation(approve, metadata=first.metadata, timeout=10))
    assert_error(err, DENIED, "SELF_APPROVAL")

    done = await rotor.admin.ApproveOperation(approve, metadata=second.metadata, timeout=30)
    assert done.key.kid == kid

    err = await failure(rotor.admin.ApproveOperation(approve, metadata=second.metadata, timeout=10))
    assert_error(err, PRECONDITION, "OPERATION_ALREADY_APPLIED")
