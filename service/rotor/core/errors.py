"""Domain errors: one root, one class per failure a caller can act on.

    RotorError
    ├── InvalidRequest            malformed or oversized input (reason given per case)
    ├── InvalidClient             unknown client or wrong secret
    ├── ClientDisabled            the client exists but may not authenticate
    ├── RefreshTokenInvalid       not a refresh token we issued
    ├── RefreshTokenExpired       past its own or its family's expiry
    ├── RefreshTokenRevoked       its family was revoked
    ├── RefreshTokenReused        a used token presented again: the family is now revoked
    ├── RefreshTokenWrongClient   presented by another client: the family is now revoked
    ├── ScopeNotAllowed           scope beyond the client's or the grant's
    ├── AudienceNotAllowed        audience beyond the client's
    ├── AudienceRequired          no audience named and the client has several
    ├── SubjectNotAllowed         another subject without --allow-any-subject
    ├── AdminRequired             a KeyAdmin call by a non-admin client
    ├── TokenNotOwned             revoking another client's token
    ├── SelfApproval              approving one's own operation
    ├── AddressNotAllowed         a call from outside the client's allowed_cidrs
    ├── ClientExists              registering a client id (or certificate SAN) that is taken
    ├── SelfLockout               an admin removing its own admin flag, or deleting itself
    ├── KeyNotFound / OperationNotFound / TenantNotFound
    ├── OperationAlreadyApplied / OperationExpired / KeyNotRevocable
    ├── TooManyWatchers / TooManyRequests / WatcherTooSlow
    └── ShuttingDown / NoActiveKey / StoreUnavailable / SignerUnavailable

The api layer maps each class to a status code in one table; `reason` is the
`google.rpc.ErrorInfo` reason.
"""

from __future__ import annotations

from typing import ClassVar

_PREFIX = 32


def quote(value: str) -> str:
    """A short, safe rendering of caller input for an error message."""
    shown = repr(value[:_PREFIX])
    if len(shown) > _PREFIX + 2:  # escapes can make a short prefix long
        shown = shown[:_PREFIX] + "..."
    if len(value) > _PREFIX:
        shown += f"... ({len(value)} characters)"
    return shown


class RotorError(Exception):
    """Root of every error the core raises on purpose."""

    reason: ClassVar[str] = "ROTOR_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def error_reason(self) -> str:
        return self.reason


class InvalidRequest(RotorError):
    """Raised when a request is malformed: a missing, oversized or ill-formed field."""

    reason = "INVALID_REQUEST"

    def __init__(self, message: str, reason: str = "INVALID_REQUEST", field: str = "") -> None:
        super().__init__(message)
        self._reason = reason
        self.field = field

    @property
    def error_reason(self) -> str:
        return self._reason


class InvalidClient(RotorError):
    """Raised when client credentials are missing, malformed or wrong."""

    reason = "INVALID_CLIENT"


class ClientDisabled(RotorError):
    """Raised when a disabled client authenticates."""

    reason = "CLIENT_DISABLED"


class RefreshTokenInvalid(RotorError):
    """Raised when a refresh token is not one this service issued."""

    reason = "REFRESH_TOKEN_INVALID"


class RefreshTokenExpired(RotorError):
    """Raised when a refresh token or its family is past expiry."""

    reason = "REFRESH_TOKEN_EXPIRED"


class RefreshTokenRevoked(RotorError):
    """Raised when a refresh token's family has been revoked."""

    reason = "REFRESH_TOKEN_REVOKED"


class RefreshTokenReused(RotorError):
    """Raised when a used refresh token is presented again; its family is revoked."""

    reason = "REFRESH_TOKEN_REUSED"


class RefreshTokenWrongClient(RotorError):
    """Raised when a refresh token is presented by a client it was not issued to; its family is revoked."""

    reason = "REFRESH_TOKEN_CLIENT_MISMATCH"


class ScopeNotAllowed(RotorError):
    """Raised when a requested scope is beyond the client's registration or the grant."""

    reason = "SCOPE_NOT_ALLOWED"


class AudienceNotAllowed(RotorError):
    """Raised when a requested audience is not registered for the client."""

    reason = "AUDIENCE_NOT_ALLOWED"


class AudienceRequired(RotorError):
    """Raised when no audience is named and the client has more than one."""

    reason = "AUDIENCE_REQUIRED"


class SubjectNotAllowed(RotorError):
    """Raised when a client without --allow-any-subject asks for another subject."""

    reason = "SUBJECT_NOT_ALLOWED"


class AdminRequired(RotorError):
    """Raised when a non-admin client calls an admin operation."""

    reason = "ADMIN_REQUIRED"


class TokenNotOwned(RotorError):
    """Raised when a client revokes a token issued to another client."""

    reason = "TOKEN_NOT_OWNED"


class SelfApproval(RotorError):
    """Raised when an admin approves an operation they asked for."""

    reason = "SELF_APPROVAL"


class AddressNotAllowed(RotorError):
    """Raised when a client calls from a peer address outside its allowed_cidrs."""

    reason = "ADDRESS_NOT_ALLOWED"


class ClientExists(RotorError):
    """Raised when registering a client id (or a certificate SAN) that is taken."""

    reason = "CLIENT_EXISTS"


class SelfLockout(RotorError):
    """Raised when an admin would remove its own admin flag or delete itself."""

    reason = "SELF_LOCKOUT"


class KeyNotFound(RotorError):
    """Raised when no key has the given kid."""

    reason = "KEY_NOT_FOUND"


class OperationNotFound(RotorError):
    """Raised when no pending operation has the given id."""

    reason = "OPERATION_NOT_FOUND"


class ClientNotFound(RotorError):
    """Raised when an admin names a client that is not registered."""

    reason = "CLIENT_NOT_FOUND"


class TenantNotFound(RotorError):
    """Raised when a tenant does not exist."""

    reason = "TENANT_NOT_FOUND"


class OperationAlreadyApplied(RotorError):
    """Raised when approving an operation that was already carried out."""

    reason = "OPERATION_ALREADY_APPLIED"


class OperationExpired(RotorError):
    """Raised when approving an operation whose approval window has passed."""

    reason = "OPERATION_EXPIRED"


class KeyNotRevocable(RotorError):
    """Raised when revoking a key that has already expired."""

    reason = "KEY_NOT_REVOCABLE"


class TooManyWatchers(RotorError):
    """Raised when a client or peer holds too many WatchKeyRotations streams."""

    reason = "TOO_MANY_WATCHERS"


class TooManyRequests(RotorError):
    """Raised when the server is refusing more work of one kind for now; retry with backoff,
    or after `retry_after` seconds when it is known (sent as google.rpc.RetryInfo)."""

    reason = "TOO_MANY_REQUESTS"

    def __init__(self, message: str, retry_after: float | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self._reason = reason or self.reason

    @property
    def error_reason(self) -> str:
        return self._reason


class WatcherTooSlow(RotorError):
    """Raised when a watcher falls too far behind the event stream and is cut off."""

    reason = "WATCHER_TOO_SLOW"


class ShuttingDown(RotorError):
    """Raised to open streams when the server stops."""

    reason = "SHUTTING_DOWN"


class NoActiveKey(RotorError):
    """Raised when a tenant has no key that signs yet (the server is starting); retry shortly."""

    reason = "NO_ACTIVE_KEY"


class StoreUnavailable(RotorError):
    """Raised when the store cannot be reached or is busy; the call may be retried."""

    reason = "STORE_UNAVAILABLE"


class SignerUnavailable(RotorError):
    """Raised when the key store cannot sign now (the HSM or its token is away); nothing was
    changed, and the call may be retried."""

    reason = "SIGNER_UNAVAILABLE"
