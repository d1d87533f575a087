"""Python client for Rotor: the generated stubs, and client credentials for calls.

    import grpc
    from rotor_client import TokenServiceStub, basic_auth

    channel = grpc.insecure_channel("127.0.0.1:50051")
    tokens = TokenServiceStub(channel)
    resp = tokens.Issue(IssueRequest(audience=["api"]), metadata=basic_auth("svc", secret))

The stubs are the ones the server is built from (`rotor.v1`), so client and
server never disagree on a message.
"""

from __future__ import annotations

from rotor_client._auth import basic_auth, basic_auth_header
from rotor_client._stubs import (
    ApproveOperationRequest,
    GetKeySetRequest,
    IssueRequest,
    KeyAdminStub,
    KeyEvent,
    KeySet,
    ListKeysRequest,
    RefreshRequest,
    RevokeKeyRequest,
    RevokeRequest,
    RotateKeysRequest,
    TokenResponse,
    TokenServiceStub,
    WatchKeyRotationsRequest,
)

__all__ = [
    "ApproveOperationRequest",
    "GetKeySetRequest",
    "IssueRequest",
    "KeyAdminStub",
    "KeyEvent",
    "KeySet",
    "ListKeysRequest",
    "RefreshRequest",
    "RevokeKeyRequest",
    "RevokeRequest",
    "RotateKeysRequest",
    "TokenResponse",
    "TokenServiceStub",
    "WatchKeyRotationsRequest",
    "basic_auth",
    "basic_auth_header",
]
