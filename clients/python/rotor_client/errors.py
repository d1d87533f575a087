"""What the client library raises.

Every exception derives from `RotorClientError`. A token that fails
verification raises a subclass of `InvalidTokenError`, one per reason, each
with a `reason` code (the UPPER_SNAKE value `VerifyingInterceptor` puts in its
`google.rpc.ErrorInfo`) and a message that says what to do about it.
"""

from __future__ import annotations

import grpc


class RotorClientError(Exception):
    """Root of everything the client library raises."""

    reason = "ROTOR_CLIENT_ERROR"


class KeySetStale(RotorClientError):
    """The key set has not been confirmed by Rotor for longer than `max_staleness`.

    Not the token's fault: the verifier refuses to trust old keys forever.
    """

    reason = "KEY_SET_STALE"


class TokenRequestFailed(RotorClientError):
    """Rotor refused or could not answer a token request (Issue or Refresh)."""

    reason = "TOKEN_REQUEST_FAILED"

    def __init__(self, message: str, code: grpc.StatusCode, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        if reason:
            self.reason = reason


class InvalidTokenError(RotorClientError):
    """The token must not be trusted."""

    reason = "INVALID_TOKEN"


class MalformedToken(InvalidTokenError):
    """Not a compact JWS access token of the shape Rotor issues."""

    reason = "TOKEN_MALFORMED"


class TokenExpired(InvalidTokenError):
    reason = "TOKEN_EXPIRED"


class TokenNotYetValid(InvalidTokenError):
    reason = "TOKEN_NOT_YET_VALID"


class InvalidSignature(InvalidTokenError):
    """The signature does not verify, or the header names an algorithm other than the key's."""

    reason = "INVALID_SIGNATURE"


class UnknownKey(InvalidTokenError):
    reason = "UNKNOWN_KEY"


class KeyRevoked(InvalidTokenError):
    reason = "KEY_REVOKED"


class TokenRevoked(InvalidTokenError):
    reason = "TOKEN_REVOKED"


class InvalidAudience(InvalidTokenError):
    reason = "INVALID_AUDIENCE"


class InvalidIssuer(InvalidTokenError):
    reason = "INVALID_ISSUER"


class InsufficientScope(InvalidTokenError):
    reason = "INSUFFICIENT_SCOPE"


class CertificateMismatch(InvalidTokenError):
    """The token is bound to a client certificate (RFC 8705 `cnf`) other than the caller's."""

    reason = "CERTIFICATE_MISMATCH"
