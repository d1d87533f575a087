"""Caller authentication: RFC 6749 client_secret_basic in gRPC metadata."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from rotor.core.clients import Authenticator
from rotor.core.errors import AdminRequired, InvalidClient
from rotor.core.model import Client

MAX_CREDENTIALS = 1024  # characters of the base64 part; far above any real id and secret

_HOW = "send `authorization: Basic base64(client_id:client_secret)`"


def basic_credentials(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, str] | None:
    """(client_id, client_secret) from the `authorization` header; None when there is none."""
    header = next((v for k, v in metadata or () if k == "authorization"), None)
    if header is None:
        return None
    if isinstance(header, bytes):
        raise InvalidClient(f"the authorization header must be text; {_HOW}")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient(f"unsupported authorization scheme {scheme[:16]!r}; {_HOW}")
    encoded = encoded.strip()
    if not encoded:
        raise InvalidClient(f"empty Basic credentials; {_HOW}")
    if len(encoded) > MAX_CREDENTIALS:
        raise InvalidClient(
            f"Basic credentials are {len(encoded)} characters, over the limit of {MAX_CREDENTIALS}"
        )
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClient(f"Basic credentials are not base64 of UTF-8 text; {_HOW}") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        raise InvalidClient(f"Basic credentials must be client_id:client_secret, both non-empty; {_HOW}")
    return client_id, secret


class CallerAuth:
    """Turns a call's metadata into the authenticated Client."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def optional(self, metadata: Any) -> Client | None:
        credentials = basic_credentials(metadata)
        if credentials is None:
            return None
        return await self._authenticator.authenticate(*credentials)

    async def require(self, metadata: Any) -> Client:
        client = await self.optional(metadata)
        if client is None:
            raise InvalidClient(f"this call needs client credentials; {_HOW}")
        return client

    async def require_admin(self, metadata: Any) -> Client:
        client = await self.require(metadata)
        if not client.admin:
            raise AdminRequired(
                f"client {client.client_id!r} is not an admin; KeyAdmin calls need an admin client"
            )
        return client
