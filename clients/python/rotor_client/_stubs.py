"""The generated rotor.v1 stubs and messages, re-exported under stable names."""

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
]
