"""What the api tests share: a handle on a running server, a watcher, and error checks."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import rotor_client
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from rotor.app import RotorServer
from rotor.config import KeysConfig, TokensConfig
from rotor.core.clients import register_client
from rotor.v1 import key_admin_pb2, keys_pb2

ISSUER = "https://rotor.test"
BASE_KEYS = KeysConfig(rotation_period=3600, publish_lead=2, max_cache_age=1, clock_skew=1)
BASE_TOKENS = TokensConfig(access_ttl=60, max_access_ttl=600, refresh_ttl=3600)
AUDIENCE = "api"
SCOPES = ("orders.read", "orders.write")


@dataclass(frozen=True)
class Credentials:
    """A registered client's id and secret."""

    client_id: str
    secret: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return rotor_client.basic_auth(self.client_id, self.secret)


def event_type(event: keys_pb2.KeyEvent) -> str:
    """KEY_PUBLISHED, SNAPSHOT, ... (the enum name without its prefix)."""
    return keys_pb2.KeyEventType.Name(event.type).removeprefix("KEY_EVENT_TYPE_")


def key_state(key: keys_pb2.Key) -> str:
    return keys_pb2.KeyState.Name(key.state).removeprefix("KEY_STATE_")


def states(keys: Iterable[keys_pb2.Key]) -> dict[str, str]:
    """kid -> state name."""
    return {k.kid: key_state(k) for k in keys}


def jwt_part(token: str, index: int) -> dict[str, Any]:
    """The header (0) or the claims (1) of a compact JWS, unverified."""
    part = token.split(".")[index]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


class Watcher:
    """One WatchKeyRotations stream, read on demand (a watcher that stops reading falls behind)."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.received: list[keys_pb2.KeyEvent] = []

    async def next(self, within: float = 5.0, heartbeats: bool = False) -> keys_pb2.KeyEvent:
        """The next message (heartbeats skipped unless asked); fails the test after `within` seconds."""
        async with asyncio.timeout(within):
            while True:
                event = await self.call.read()
                if event is aio.EOF:
                    raise AssertionError("the stream ended with OK; streams never end on their own")
                self.received.append(event)
                if heartbeats or event_type(event) != "HEARTBEAT":
                    return event

    async def ended(self, within: float = 5.0) -> aio.AioRpcError:
        """Read on until the stream fails; the error it ended with."""
        try:
            async with asyncio.timeout(within):
                while True:
                    event = await self.call.read()
                    if event is aio.EOF:
                        raise AssertionError("the stream ended with OK, not an error")
                    self.received.append(event)
        except aio.AioRpcError as e:
            return e

    def cancel(self) -> None:
        self.call.cancel()


class Rotor:
    """A started RotorServer, its address, and channels to it."""

    def __init__(self, server: RotorServer) -> None:
        self.server = server
        self.config = server.config
        self.address = f"{server.config.listen.rpartition(':')[0]}:{server.port}"
        self._channels: list[aio.Channel] = []
        self.stopped = False
        channel = self.channel()
        self.tokens = rotor_client.TokenServiceStub(channel)
        self.admin = rotor_client.KeyAdminStub(channel)

    def channel(self, options: tuple[tuple[str, Any], ...] = ()) -> aio.Channel:
        channel = aio.insecure_channel(self.address, options=options)
        self._channels.append(channel)
        return channel

    async def add_client(
        self,
        name: str,
        *,
        scopes: tuple[str, ...] = SCOPES,
        audiences: tuple[str, ...] = (AUDIENCE,),
        admin: bool = False,
        allow_any_subject: bool = False,
        cert_san: str | None = None,
        tenant: str = "",
        expires_in: float | None = None,
        allowed_cidrs: tuple[str, ...] = (),
    ) -> Credentials:
        registration = await register_client(
            self.server.store,
            self.server.clock,
            name,
            scopes=scopes,
            audiences=audiences,
            admin=admin,
            allow_any_subject=allow_any_subject,
            cert_san=cert_san,
            tenant=tenant,
            expires_in=expires_in,
            allowed_cidrs=allowed_cidrs,
        )
        return Credentials(name, registration.secret)

    async def watch(
        self, after_sequence: int = 0, tenant: str = "", channel: aio.Channel | None = None
    ) -> Watcher:
        stub = rotor_client.TokenServiceStub(channel) if channel is not None else self.tokens
        return Watcher(
            stub.WatchKeyRotations(
                rotor_client.WatchKeyRotationsRequest(tenant=tenant, after_sequence=after_sequence)
            )
        )

    async def key_set(self) -> keys_pb2.KeySet:
        return await self.tokens.GetKeySet(rotor_client.GetKeySetRequest(), timeout=10)

    async def issue(self, client: Credentials, **fields: Any) -> rotor_client.TokenResponse:
        return await self.tokens.Issue(
            rotor_client.IssueRequest(**fields), metadata=client.metadata, timeout=30
        )

    async def revoke(self, client: Credentials, token: str, reason: str = "") -> bool:
        request = rotor_client.RevokeRequest(token=token, reason=reason)
        response = await self.tokens.Revoke(request, metadata=client.metadata, timeout=30)
        return bool(response.revoked)

    async def stop(self, grace: float = 5.0) -> None:
        if not self.stopped:
            self.stopped = True
            await self.server.stop(grace)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.stop(grace=1.0)


# -- errors ----------------------------------------------------------------------


def status_details(err: aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed aio call carried in its trailers, if any."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def error_info(err: aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = status_details(err)
    return None if status is None else status_error_info(status)


def status_error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo among a google.rpc.Status's details, if any."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def assert_error(err: aio.AioRpcError, code: grpc.StatusCode, *reasons: str) -> error_details_pb2.ErrorInfo:
    """The call failed with `code`, a message, and ErrorInfo(domain="rotor", reason in `reasons`)."""
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    assert err.details(), "an error with no message"
    status = status_details(err)
    assert status is not None, f"no google.rpc.Status in the trailers of {code.name}: {err.details()}"
    assert status.code == code.value[0] and status.message == err.details(), status
    info = error_info(err)
    assert info is not None, f"no ErrorInfo in the status of {code.name}: {err.details()}"
    assert info.domain == "rotor", info
    assert info.reason in reasons, f"reason {info.reason}, expected one of {reasons}: {err.details()}"
    return info


async def failure(call: Awaitable[Any]) -> aio.AioRpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value


async def rotation_status(
    rotor: Rotor, admin: Credentials, tenant: str = ""
) -> key_admin_pb2.GetRotationStatusResponse:
    return await rotor.admin.GetRotationStatus(
        key_admin_pb2.GetRotationStatusRequest(tenant=tenant), metadata=admin.metadata, timeout=10
    )


async def status_when(
    rotor: Rotor,
    admin: Credentials,
    done: Callable[[key_admin_pb2.GetRotationStatusResponse], bool],
    within: float = 10.0,
) -> key_admin_pb2.GetRotationStatusResponse:
    """Poll GetRotationStatus until `done(status)` holds; fails the test after `within` seconds."""
    status = None
    try:
        async with asyncio.timeout(within):
            while True:
                status = await rotation_status(rotor, admin)
                if done(status):
                    return status
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"GetRotationStatus never got there; last: {status}") from None
