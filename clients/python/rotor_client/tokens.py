"""TokenClient: a service's own access token, always fresh.

    client = TokenClient("rotor:50051", "orders", secret, audience="payments", scope=["payments.charge"])
    token = await client.token()             # or client.token_sync() in threaded code
    channel = grpc.secure_channel(target, grpc.composite_channel_credentials(tls, client.call_credentials()))

The token is cached and renewed ahead of expiry (at 80% of its lifetime) by
one caller at a time, so a refresh token is never used twice; a refresh token
Rotor refuses (expired, revoked, family ended) falls back to Issue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from rotor.v1 import token_service_pb2
from rotor.v1.token_service_pb2_grpc import TokenServiceStub

from rotor_client._auth import basic_auth
from rotor_client._proto import seconds
from rotor_client.errors import TokenRequestFailed

log = logging.getLogger("rotor_client")

RENEW_AT = 0.8  # of a token's lifetime
RETRY_AFTER = 1.0  # seconds before trying again, while the cached token is still good, after a failure
RPC_TIMEOUT = 10.0
# Refresh failures after which the refresh token is certainly unspent, so it may be tried again.
UNSPENT = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT})


@dataclass(frozen=True, slots=True)
class _Grant:
    access_token: str
    expires_at: float
    renew_at: float


def _reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason Rotor attached to an error, or ""."""
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


# One renewal, written once for both the asyncio and the threaded caller: it yields
# (method name, request), is sent back the response or the grpc.RpcError, and
# returns the access token.
Renewal = Generator[tuple[str, Message], Message | grpc.RpcError, str]


class TokenClient:
    """Obtains and renews this service's access token from Rotor."""

    def __init__(
        self,
        target: str,
        client_id: str,
        client_secret: str,
        *,
        audience: str | Iterable[str],
        scope: Iterable[str] = (),
        channel_credentials: grpc.ChannelCredentials | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        audiences = [audience] if isinstance(audience, str) else list(audience)
        if not audiences:
            raise ValueError("audience is required: the service(s) the token is for")
        self.target = target
        self.client_id = client_id
        self._metadata = basic_auth(client_id, client_secret)
        self._issue = token_service_pb2.IssueRequest(audience=audiences, scope=list(scope))
        self._credentials = channel_credentials
        self._clock = clock
        self._grant: _Grant | None = None
        self._refresh_token = ""
        self._hand_out = threading.Lock()  # guards taking the refresh token: only one caller ever holds it
        self._renewing = threading.Lock()  # one renewal at a time, asyncio and threads alike
        self._sync_channel: grpc.Channel | None = None
        self._async_lock: asyncio.Lock | None = None
        self._async_channel: aio.Channel | None = None

    # -- asyncio -------------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token: the cached one, or a renewed one."""
        cached = self._cached()
        if cached is not None:
            return cached
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            while not self._renewing.acquire(blocking=False):  # noqa: ASYNC110 - a thread lock, not awaitable
                await asyncio.sleep(0.005)  # a thread is renewing (call_credentials): its token is ours too
            try:
                cached = self._cached()
                if cached is not None:
                    return cached  # renewed by the caller we waited for
                return await self._renew_async()
            finally:
                self._renewing.release()

    async def _renew_async(self) -> str:
        if self._async_channel is None:
            self._async_channel = self._open(aio.secure_channel, aio.insecure_channel)
        stub = TokenServiceStub(self._async_channel)
        renewal = self._renew()
        step = next(renewal)
        while True:
            method, request = step
            try:
                result = await getattr(stub, method)(request, metadata=self._metadata, timeout=RPC_TIMEOUT)
            except aio.AioRpcError as e:
                result = e
            try:
                step = renewal.send(result)
            except StopIteration as done:
                return str(done.value)

    async def close(self) -> None:
        """Close the channels to Rotor."""
        if self._async_channel is not None:
            await self._async_channel.close(None)
            self._async_channel = None
        self.close_sync()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- threads -------------------------------------------------------------------------

    def token_sync(self) -> str:
        """`token()` for threaded code (blocks while a renewal is under way; never call it on the event loop)."""
        cached = self._cached()
        if cached is not None:
            return cached
        with self._renewing:
            cached = self._cached()
            if cached is not None:
                return cached
            if self._sync_channel is None:
                self._sync_channel = self._open(grpc.secure_channel, grpc.insecure_channel)
            stub = TokenServiceStub(self._sync_channel)
            renewal = self._renew()
            step = next(renewal)
            while True:
                method, request = step
                try:
                    result = getattr(stub, method)(request, metadata=self._metadata, timeout=RPC_TIMEOUT)
                except grpc.RpcError as e:
                    result = e
                try:
                    step = renewal.send(result)
                except StopIteration as done:
                    return str(done.value)

    def close_sync(self) -> None:
        """Close the threaded side's channel to Rotor."""
        if self._sync_channel is not None:
            self._sync_channel.close()
            self._sync_channel = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_sync()

    def call_credentials(self) -> grpc.CallCredentials:
        """Call credentials that attach `authorization: Bearer <token>` to every outgoing call.

        gRPC sends call credentials only over a secure channel: combine them with
        TLS credentials (or grpc.local_channel_credentials() on loopback).
        """
        return grpc.metadata_call_credentials(_BearerPlugin(self), name="rotor")

    # -- shared --------------------------------------------------------------------------

    def _open(self, secure: Callable[..., Any], insecure: Callable[..., Any]) -> Any:
        return insecure(self.target) if self._credentials is None else secure(self.target, self._credentials)

    def _cached(self) -> str | None:
        grant = self._grant
        if grant is not None and self._clock() < grant.renew_at:
            return grant.access_token
        return None

    def _renew(self) -> Renewal:
        with self._hand_out:
            refresh_token, self._refresh_token = self._refresh_token, ""
        if refresh_token:
            result = yield "Refresh", token_service_pb2.RefreshRequest(refresh_token=refresh_token)
            if isinstance(result, token_service_pb2.TokenResponse):
                return self._adopt(result)
            assert isinstance(result, grpc.RpcError)
            code = result.code()
            if code in UNSPENT:
                with self._hand_out:
                    self._refresh_token = self._refresh_token or refresh_token
            if code != grpc.StatusCode.UNAUTHENTICATED:
                return self._keep_or_fail(result, "Refresh")
            log.info(
                "Rotor refused the refresh token (%s); issuing a new grant", _reason(result) or code.name
            )
        result = yield "Issue", self._issue
        if isinstance(result, token_service_pb2.TokenResponse):
            return self._adopt(result)
        assert isinstance(result, grpc.RpcError)
        return self._keep_or_fail(result, "Issue")

    def _adopt(self, response: token_service_pb2.TokenResponse) -> str:
        now = self._clock()
        expires_at = seconds(response.expires_at)
        self._grant = _Grant(response.access_token, expires_at, now + max(0.0, expires_at - now) * RENEW_AT)
        with self._hand_out:
            self._refresh_token = response.refresh_token
        return response.access_token

    def _keep_or_fail(self, error: grpc.RpcError, method: str) -> str:
        """After a failed renewal: the cached token while it is still good, else TokenRequestFailed."""
        code: grpc.StatusCode = error.code()
        details = error.details()
        grant, now = self._grant, self._clock()
        if grant is not None and now < grant.expires_at - RETRY_AFTER:
            log.warning(
                "%s at Rotor failed (%s: %s); using the cached token until it expires",
                method,
                code.name,
                details,
            )
            self._grant = _Grant(grant.access_token, grant.expires_at, now + RETRY_AFTER)
            return grant.access_token
        raise TokenRequestFailed(
            f"{method} at Rotor ({self.target}) failed for client {self.client_id!r}: {code.name}: {details}",
            code,
            _reason(error),
        )


class _BearerPlugin(grpc.AuthMetadataPlugin):
    """Adds the TokenClient's token to each call (gRPC runs this off the event loop)."""

    def __init__(self, client: TokenClient) -> None:
        self._client = client

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            token = self._client.token_sync()
        except Exception as e:  # gRPC fails the call with it
            callback((), e)
            return
        callback((("authorization", f"Bearer {token}"),), None)
