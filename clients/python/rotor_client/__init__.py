"""Python client for Rotor: verify tokens locally, keep your own token fresh, call the API.

Verify the tokens your service receives, with no call to Rotor per request:

    async with KeySetWatcher("rotor:50051") as watcher:
        verifier = Verifier(watcher, issuer="https://tokens.internal", audience="orders")
        claims = verifier.verify(token)          # raises an InvalidTokenError subclass

Obtain and renew your service's own token:

    client = TokenClient("rotor:50051", "orders", secret, audience="payments")
    token = await client.token()

Or call the API through the generated stubs:

    import grpc
    from rotor_client import TokenServiceStub, basic_auth

    channel = grpc.insecure_channel("127.0.0.1:50051")
    tokens = TokenServiceStub(channel)
    resp = tokens.Issue(IssueRequest(audience=["api"]), metadata=basic_auth("svc", secret))

The stubs are the ones the server is built from (`rotor.v1`), so client and
server never disagree on a message.
"""

from __future__ import annotations

from rotor.v1.key_admin_pb2 import (
    ApproveOperationRequest,
    ListKeysRequest,
    RevokeKeyRequest,
    RotateKeysRequest,
)
from rotor.v1.key_admin_pb2_grpc import KeyAdminStub
from rotor.v1.keys_pb2 import KeyEvent, KeyEventType, KeySet
from rotor.v1.token_service_pb2 import (
    GetKeySetRequest,
    IntrospectRequest,
    IntrospectResponse,
    IssueRequest,
    RefreshRequest,
    RevokeRequest,
    TokenResponse,
    WatchKeyRotationsRequest,
)
from rotor.v1.token_service_pb2_grpc import TokenServiceStub

from rotor_client._auth import basic_auth, basic_auth_header
from rotor_client.errors import (
    CertificateMismatch,
    InsufficientScope,
    InvalidAudience,
    InvalidIssuer,
    InvalidSignature,
    InvalidTokenError,
    KeyRevoked,
    KeySetStale,
    MalformedToken,
    RotorClientError,
    TokenExpired,
    TokenNotYetValid,
    TokenRequestFailed,
    TokenRevoked,
    UnknownKey,
)
from rotor_client.interceptor import VerifyingInterceptor, current_claims
from rotor_client.tokens import TokenClient
from rotor_client.verifier import Claims, Verifier
from rotor_client.watcher import KeySetWatcher, ThreadedKeySetWatcher

__all__ = [
    "ApproveOperationRequest",
    "CertificateMismatch",
    "Claims",
    "GetKeySetRequest",
    "InsufficientScope",
    "IntrospectRequest",
    "IntrospectResponse",
    "InvalidAudience",
    "InvalidIssuer",
    "InvalidSignature",
    "InvalidTokenError",
    "IssueRequest",
    "KeyAdminStub",
    "KeyEvent",
    "KeyEventType",
    "KeyRevoked",
    "KeySet",
    "KeySetStale",
    "KeySetWatcher",
    "ListKeysRequest",
    "MalformedToken",
    "RefreshRequest",
    "RevokeKeyRequest",
    "RevokeRequest",
    "RotateKeysRequest",
    "RotorClientError",
    "ThreadedKeySetWatcher",
    "TokenClient",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenRequestFailed",
    "TokenResponse",
    "TokenRevoked",
    "TokenServiceStub",
    "UnknownKey",
    "Verifier",
    "VerifyingInterceptor",
    "WatchKeyRotationsRequest",
    "basic_auth",
    "basic_auth_header",
    "current_claims",
]
