"""Caller authentication: RFC 6749 client_secret_basic in gRPC metadata, or an mTLS client
certificate; `CallerAuth.identify` serves the HTTP door too, with the same backoff."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from grpc import aio

from rotor.api.limits import AuthBackoff, peer_address
from rotor.clock import SystemClock
from rotor.core.clients import Authenticator
from rotor.core.errors import InvalidClient
from rotor.core.model import Client
from rotor.metrics import caller
from rotor.tls import PeerCertificate, peer_certificate

Context = aio.ServicerContext[Any, Any]

MAX_CREDENTIALS = 1024  # characters of the base64 part; far above any real id and secret

_HOW = "send `authorization: Basic base64(client_id:client_secret)`"


def basic_credentials(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, str] | None:
    """(client_id, client_secret) from the `authorization` header; None when there is none."""
    header = next((v for k, v in metadata or () if k == "authorization"), None)
    if header is None:
        return None
    if isinstance(header, bytes):
        raise InvalidClient(f"the authorization header must be text; {_HOW}")
    return parse_basic(header)


def parse_basic(header: str, how: str = _HOW) -> tuple[str, str]:
    """(client_id, client_secret) of an `Authorization: Basic ...` value; InvalidClient otherwise."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise InvalidClient(f"unsupported authorization scheme {scheme[:16]!r}; {how}")
    encoded = encoded.strip()
    if not encoded:
        raise InvalidClient(f"empty Basic credentials; {how}")
    if len(encoded) > MAX_CREDENTIALS:
        raise InvalidClient(
            f"Basic credentials are {len(encoded)} characters, over the limit of {MAX_CREDENTIALS}"
        )
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidClient(f"Basic credentials are not base64 of UTF-8 text; {how}") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id or not secret:
        raise InvalidClient(f"Basic credentials must be client_id:client_secret, both non-empty; {how}")
    return client_id, secret


def basic_credentials_or_none(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The client id claimed in Basic credentials, for the record; None when there is none or it is
    unreadable. Never the secret."""
    try:
        credentials = basic_credentials(metadata)
    except InvalidClient:
        return None
    return credentials[0][:128] if credentials else None


class CallerAuth:
    """Turns a call's credentials into the authenticated Client: Basic credentials in the
    metadata, or else (over mTLS) the client certificate gRPC verified."""

    def __init__(
        self, authenticator: Authenticator, backoff: AuthBackoff | None = None, *, mtls: bool = True
    ) -> None:
        """`mtls`: whether the server verifies client certificates; without it no call has one,
        so the call's auth context (a dict gRPC builds on each ask) is never asked for."""
        self._authenticator = authenticator
        self._backoff = backoff or AuthBackoff(SystemClock())
        self._mtls = mtls

    def certificate(self, context: Context) -> PeerCertificate | None:
        """The client certificate gRPC verified for this call, or None."""
        return peer_certificate(context.auth_context()) if self._mtls else None

    def bound_certificate(self, context: Context) -> str | None:
        """The x5t#S256 thumbprint to bind tokens to (RFC 8705): the call's client certificate, if any."""
        peer = self.certificate(context)
        return peer.thumbprint if peer is not None else None

    async def optional(self, context: Context) -> Client | None:
        """The caller, or None for an anonymous one (no Basic credentials, and no client
        certificate registered to a client)."""
        credentials = basic_credentials(context.invocation_metadata())
        return await self.identify(
            credentials,
            peer_address(context.peer()),
            self.certificate(context) if credentials is None else None,  # Basic credentials come first
        )

    async def identify(
        self, credentials: tuple[str, str] | None, address: str, certificate: PeerCertificate | None
    ) -> Client | None:
        """The client of a call from any door: by its (client_id, secret), or else by the client
        certificate TLS verified; None when neither names one. Failed secrets slow further
        guesses from the client id and the address alike, whichever door they come through."""
        client: Client | None = None
        if credentials is not None:
            client = await self._basic(*credentials, address)
        elif certificate is not None:
            client = await self._authenticator.client_for_certificate(certificate.uris)
        if client is None:
            return None
        caller.set(client.client_id)  # the metrics' and logs' client label
        return client

    async def _basic(self, client_id: str, secret: str, address: str) -> Client:
        """The client these Basic credentials belong to, with failures slowing further guesses."""
        wait = self._backoff.wait(client_id, address)
        try:
            client = await self._authenticator.authenticate(client_id, secret, verify=wait <= 0)
        except InvalidClient:
            self._backoff.failed(client_id, address)
            raise
        if client is None:  # a secret not known good, while guesses for this client or address wait
            raise self._backoff.refusal(client_id, wait)
        self._backoff.succeeded(client_id)
        return client

    async def basic(self, header: str, address: str) -> Client:
        """The client an HTTP `Authorization: Basic` header names (the HTTP side port), checked like a
        gRPC call's: InvalidClient, ClientDisabled, or TooManyRequests while guesses are slowed."""
        credentials = basic_credentials((("authorization", header),))
        client = await self.identify(credentials, address, None) if credentials else None
        if client is None:
            raise InvalidClient(f"this request needs client credentials; {_HOW}")
        return client

    async def require(self, context: Context) -> Client:
        client = await self.optional(context)
        if client is not None:
            return client
        peer = self.certificate(context)
        if peer is not None:
            raise unregistered_certificate(peer)
        raise InvalidClient(f"this call needs client credentials; {_HOW}")


def unregistered_certificate(peer: PeerCertificate) -> InvalidClient:
    """The refusal of a client certificate registered to no client."""
    shown = ", ".join(u[:80] for u in peer.uris[:3]) or "none"
    return InvalidClient(
        f"no client is registered for this certificate's URI SANs ({shown}): register one with "
        "`rotor clients add NAME --cert-san URI`, or send client credentials"
    )


def bound_certificate(context: Context) -> str | None:
    """The x5t#S256 thumbprint to bind tokens to (RFC 8705): the call's client certificate, if any."""
    peer = peer_certificate(context.auth_context())
    return peer.thumbprint if peer is not None else None
