"""Client credentials as gRPC metadata (RFC 6749 client_secret_basic)."""

from __future__ import annotations

import base64


def basic_auth_header(client_id: str, client_secret: str) -> str:
    """The `authorization` header value for a client's id and secret."""
    return "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")


def basic_auth(client_id: str, client_secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates as the client."""
    return (("authorization", basic_auth_header(client_id, client_secret)),)
