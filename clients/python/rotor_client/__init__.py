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

from rotor.v1.key_admin_pb2 import (
    ApproveOperationRequest,
    ListKeysRequest,
    RevokeKeyRequest,
    RotateKeysRequest,
)
from rotor.v1.key_admin_pb2_grpc import KeyAdminStub
from rotor.v1.keys_pb2 import KeyEvent, KeySet
from rotor.v1.token_service_pb2 import (
    GetKeySetRequest,
    IssueRequest,
    RefreshRequest,
    RevokeRequest,
    TokenResponse,
    WatchKeyRotationsRequest,
)
from rotor.v1.token_service_pb2_grpc import TokenServiceStub

from rotor_client._auth import basic_auth, basic_auth_header

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
