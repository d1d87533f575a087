"""One table from domain errors to gRPC status codes, and the code that sends them.

Every error leaves with a message a developer can act on and a
`google.rpc.Status` detail holding a `google.rpc.ErrorInfo` (domain "rotor").
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from rotor.core import errors as e

log = logging.getLogger("rotor.api")

DOMAIN = "rotor"
# (status code name, reason) of the call being handled, once it fails
failure: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("rotor_failure", default=("OK", ""))
Context = aio.ServicerContext[Any, Any]

STATUS_OF: dict[type[e.RotorError], grpc.StatusCode] = {
    e.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    e.AudienceRequired: grpc.StatusCode.INVALID_ARGUMENT,
    e.InvalidClient: grpc.StatusCode.UNAUTHENTICATED,
    e.ClientDisabled: grpc.StatusCode.UNAUTHENTICATED,
    e.RefreshTokenInvalid: grpc.StatusCode.UNAUTHENTICATED,
    e.RefreshTokenExpired: grpc.StatusCode.UNAUTHENTICATED,
    e.RefreshTokenRevoked: grpc.StatusCode.UNAUTHENTICATED,
    e.RefreshTokenReused: grpc.StatusCode.UNAUTHENTICATED,
    e.RefreshTokenWrongClient: grpc.StatusCode.UNAUTHENTICATED,
    e.ScopeNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    e.AudienceNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    e.SubjectNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    e.AdminRequired: grpc.StatusCode.PERMISSION_DENIED,
    e.TokenNotOwned: grpc.StatusCode.PERMISSION_DENIED,
    e.SelfApproval: grpc.StatusCode.PERMISSION_DENIED,
    e.AddressNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    e.ClientExists: grpc.StatusCode.ALREADY_EXISTS,
    e.SelfLockout: grpc.StatusCode.FAILED_PRECONDITION,
    e.KeyNotFound: grpc.StatusCode.NOT_FOUND,
    e.ClientNotFound: grpc.StatusCode.NOT_FOUND,
    e.OperationNotFound: grpc.StatusCode.NOT_FOUND,
    e.TenantNotFound: grpc.StatusCode.NOT_FOUND,
    e.OperationAlreadyApplied: grpc.StatusCode.FAILED_PRECONDITION,
    e.OperationExpired: grpc.StatusCode.FAILED_PRECONDITION,
    e.KeyNotRevocable: grpc.StatusCode.FAILED_PRECONDITION,
    e.TooManyWatchers: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.TooManyRequests: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.WatcherTooSlow: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    e.NoActiveKey: grpc.StatusCode.UNAVAILABLE,
    e.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    e.SignerUnavailable: grpc.StatusCode.UNAVAILABLE,
}


# The HTTP door's view of the same errors: (HTTP status, RFC 6749 §5.2 `error`), for the OAuth 2.0
# endpoints (the ErrorInfo reason goes along as `error_reason`).
OAUTH_ERROR_OF: dict[type[e.RotorError], tuple[int, str]] = {
    e.InvalidRequest: (400, "invalid_request"),
    e.AudienceRequired: (400, "invalid_request"),
    e.InvalidClient: (401, "invalid_client"),
    e.ClientDisabled: (401, "invalid_client"),
    e.RefreshTokenInvalid: (400, "invalid_grant"),
    e.RefreshTokenExpired: (400, "invalid_grant"),
    e.RefreshTokenRevoked: (400, "invalid_grant"),
    e.RefreshTokenReused: (400, "invalid_grant"),
    e.RefreshTokenWrongClient: (400, "invalid_grant"),
    e.ScopeNotAllowed: (400, "invalid_scope"),
    e.AudienceNotAllowed: (400, "invalid_target"),  # RFC 8707
    e.SubjectNotAllowed: (400, "unauthorized_client"),
    e.AdminRequired: (403, "access_denied"),
    e.TokenNotOwned: (400, "unauthorized_client"),  # RFC 7009 §2.1
    e.SelfApproval: (403, "access_denied"),
    e.AddressNotAllowed: (403, "unauthorized_client"),  # this client may not call from this network
    e.ClientExists: (409, "invalid_request"),
    e.SelfLockout: (409, "invalid_request"),
    e.KeyNotFound: (404, "invalid_request"),
    e.ClientNotFound: (404, "invalid_request"),
    e.OperationNotFound: (404, "invalid_request"),
    e.TenantNotFound: (404, "invalid_request"),
    e.OperationAlreadyApplied: (409, "invalid_request"),
    e.OperationExpired: (409, "invalid_request"),
    e.KeyNotRevocable: (409, "invalid_request"),
    e.TooManyWatchers: (429, "too_many_requests"),
    e.TooManyRequests: (429, "too_many_requests"),
    e.WatcherTooSlow: (429, "too_many_requests"),
    e.ShuttingDown: (503, "temporarily_unavailable"),
    e.NoActiveKey: (503, "temporarily_unavailable"),
    e.StoreUnavailable: (503, "temporarily_unavailable"),
    e.SignerUnavailable: (503, "temporarily_unavailable"),
}

# reasons that have an OAuth error of their own, whatever their class
OAUTH_ERROR_OF_REASON: dict[str, tuple[int, str]] = {
    "UNSUPPORTED_GRANT_TYPE": (400, "unsupported_grant_type"),
}


def oauth_error_of(error: e.RotorError) -> tuple[int, str]:
    """(HTTP status, RFC 6749 `error`) of a domain error, for the HTTP door."""
    return OAUTH_ERROR_OF_REASON.get(error.error_reason) or OAUTH_ERROR_OF[type(error)]


def status_of(error: e.RotorError) -> grpc.StatusCode:
    return STATUS_OF[type(error)]


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> bytes:
    """A serialized google.rpc.Status carrying an ErrorInfo, and a RetryInfo when the caller
    should wait `retry_after` seconds before trying again."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    details = [any_pb2.Any()]
    details[0].Pack(info)
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(int(retry_after * 1e9), 1_000_000))
        details.append(any_pb2.Any())
        details[1].Pack(retry)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return bytes(status.SerializeToString())


async def abort(
    context: Context, code: grpc.StatusCode, message: str, reason: str, retry_after: float | None = None
) -> NoReturn:
    failure.set((code.name, reason))  # for the metrics, read where the call ends
    details = rich_status(code, message, reason, retry_after=retry_after)
    await context.abort(code, message, trailing_metadata=(("grpc-status-details-bin", details),))
    raise AssertionError("unreachable: abort raises")


async def abort_with(context: Context, error: e.RotorError) -> NoReturn:
    """End the call with the status, message and reason of a domain error."""
    retry_after = error.retry_after if isinstance(error, e.TooManyRequests) else None
    await abort(context, status_of(error), error.message, error.error_reason, retry_after)


async def abort_internal(context: Context, method: str) -> NoReturn:
    """End the call after an unexpected exception (already logged under `incident`)."""
    incident = uuid.uuid4().hex[:12]
    log.exception("unexpected error in %s (incident %s)", method, incident)
    await abort(
        context,
        grpc.StatusCode.INTERNAL,
        f"internal error (incident {incident}); the server log has the details",
        "INTERNAL",
    )
