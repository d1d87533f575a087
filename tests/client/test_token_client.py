"""TokenClient: a cached access token, renewed ahead of expiry, one renewal at a time.

The client talks to a real Rotor through a recording proxy (a real gRPC hop that
forwards Issue and Refresh unchanged), so each test sees exactly which calls the
server got. Rotor and the client share one FakeClock, moved by hand.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import rotor_client
from api.support import AUDIENCE, ISSUER, Credentials, Rotor, assert_error, failure, jwt_part
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from rotor.clock import FakeClock

ACCESS_TTL = 60.0
PAST_RENEW_POINT = 0.8 * ACCESS_TTL + 1  # the client renews at 80% of a token's lifetime
SERVICE = "rotor.v1.TokenService"


@dataclass(frozen=True)
class Exchange:
    """One call the proxy forwarded: its method, the refresh token it presented, and what came back."""

    method: str
    refresh_token: str
    response: rotor_client.TokenResponse | None
    reason: str  # the ErrorInfo reason of a refused call, "" when it succeeded


def _reason(err: aio.AioRpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason
    return err.code().name


class RecordingProxy:
    """Forwards TokenService.Issue and Refresh to Rotor, bytes for bytes, and records each exchange."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.address = ""
        self._channel = aio.insecure_channel(upstream)
        self._server = aio.server()

    @property
    def methods(self) -> list[str]:
        return [e.method for e in self.exchanges]

    def granted(self, index: int) -> rotor_client.TokenResponse:
        """The response of the `index`th exchange, which must have succeeded."""
        response = self.exchanges[index].response
        assert response is not None, f"exchange {index} failed: {self.exchanges[index]}"
        return response

    async def start(self) -> None:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(self._forwarder(name)) for name in ("Issue", "Refresh")
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def close(self) -> None:
        await self._server.stop(None)
        await self._channel.close()

    def _forwarder(self, method: str) -> Callable[[bytes, aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        upstream = self._channel.unary_unary(f"/{SERVICE}/{method}")

        async def forward(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            refresh_token = ""
            if method == "Refresh":
                refresh_token = rotor_client.RefreshRequest.FromString(request).refresh_token
            metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if k == "authorization")
            try:
                response: bytes = await upstream(request, metadata=metadata, timeout=10)
            except aio.AioRpcError as e:
                self.exchanges.append(Exchange(method, refresh_token, None, _reason(e)))
                trailers = tuple(
                    (k, v) for k, v in e.trailing_metadata() or () if k == "grpc-status-details-bin"
                )
                await context.abort(e.code(), e.details() or "", trailing_metadata=trailers)
                raise  # abort raises
            granted = rotor_client.TokenResponse.FromString(response)
            self.exchanges.append(Exchange(method, refresh_token, granted, ""))
            return response

        return forward


@pytest.fixture
def clock() -> FakeClock:
    """Rotor's and the TokenClient's time."""
    return FakeClock(start=time.time())


@pytest.fixture
async def server(make_rotor: Any, clock: FakeClock) -> Rotor:
    rotor: Rotor = await make_rotor(clock=clock, tokens={"access_ttl": ACCESS_TTL})
    return rotor


@pytest.fixture
async def client_credentials(server: Rotor) -> Credentials:
    """Audience "api", scopes orders.read and orders.write."""
    return await server.add_client("svc-payments")


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[Rotor], Awaitable[RecordingProxy]]]:
    """Factory: a started RecordingProxy in front of a Rotor."""
    started: list[RecordingProxy] = []

    async def start(rotor: Rotor) -> RecordingProxy:
        proxy = RecordingProxy(rotor.address)
        started.append(proxy)
        await proxy.start()
        return proxy

    yield start
    for proxy in started:
        await proxy.close()


@pytest.fixture
async def proxy(server: Rotor, proxy_for: Callable[[Rotor], Awaitable[RecordingProxy]]) -> RecordingProxy:
    return await proxy_for(server)


@pytest.fixture
async def client(
    proxy: RecordingProxy, client_credentials: Credentials, clock: FakeClock
) -> AsyncIterator[rotor_client.TokenClient]:
    """A TokenClient for audience "api" and scope orders.read, through the recording proxy."""
    async with rotor_client.TokenClient(
        proxy.address,
        client_credentials.client_id,
        client_credentials.secret,
        audience=AUDIENCE,
        scope=["orders.read"],
        clock=clock.now,
    ) as token_client:
        yield token_client


async def verify(rotor: Rotor, token: str, clock: FakeClock) -> rotor_client.Claims:
    """The token's claims, verified against the key set Rotor publishes (raises if invalid)."""
    keyset = await rotor.key_set()
    verifier = rotor_client.Verifier.from_jwks(
        keyset.jwks_json, issuer=ISSUER, audience=AUDIENCE, clock=clock.now
    )
    return verifier.verify(token)


async def refresh_directly(rotor: Rotor, client: Credentials, refresh_token: str) -> Any:
    request = rotor_client.RefreshRequest(refresh_token=refresh_token)
    return await rotor.tokens.Refresh(request, metadata=client.metadata, timeout=30)


def in_threads(count: int, call: Callable[[], str]) -> Callable[[], list[str]]:
    """A function that runs `call` in `count` threads released together, and returns their results."""

    def run() -> list[str]:
        start = threading.Barrier(count, timeout=10)

        def one() -> str:
            start.wait()
            return call()

        with ThreadPoolExecutor(max_workers=count) as pool:
            futures = [pool.submit(one) for _ in range(count)]
            return [f.result(timeout=30) for f in futures]

    return run


# -- what token() returns ----------------------------------------------------------------


async def test_token_verifies_against_rotors_keys_and_carries_the_grant(
    server: Rotor, client: rotor_client.TokenClient, client_credentials: Credentials, clock: FakeClock
) -> None:
    """The token verifies with the watched key set and names the client, audience and requested scope."""
    token = await client.token()
    async with rotor_client.KeySetWatcher(server.address) as watcher:
        verifier = rotor_client.Verifier(watcher, issuer=ISSUER, audience=AUDIENCE, clock=clock.now)
        claims = verifier.verify(token)
    assert claims.client_id == claims.sub == client_credentials.client_id
    assert claims.audience == (AUDIENCE,)
    assert claims.scopes == {"orders.read"}, "the token must carry the requested scope only"
    assert claims.exp == int(clock.now() + ACCESS_TTL)


async def test_token_is_cached_one_issue_for_many_calls(
    client: rotor_client.TokenClient, proxy: RecordingProxy, clock: FakeClock
) -> None:
    """Calls before the renew point return the same token, and Rotor sees a single Issue."""
    first = await client.token()
    clock.advance(0.8 * ACCESS_TTL - 1)
    second = await client.token()
    assert second == first
    assert jwt_part(second, 1)["jti"] == jwt_part(first, 1)["jti"]
    assert proxy.methods == ["Issue"]


async def test_token_sync_shares_the_cache_with_token(
    client: rotor_client.TokenClient, proxy: RecordingProxy
) -> None:
    """token_sync() returns the token token() obtained, without another call to Rotor."""
    token = await client.token()
    assert await asyncio.to_thread(client.token_sync) == token
    assert proxy.methods == ["Issue"]


# -- renewal ---------------------------------------------------------------------------------


async def test_token_is_refreshed_ahead_of_expiry_with_its_refresh_token(
    server: Rotor,
    client: rotor_client.TokenClient,
    proxy: RecordingProxy,
    client_credentials: Credentials,
    clock: FakeClock,
) -> None:
    """Past 80% of its lifetime the token is renewed with Refresh, which spends the old refresh token."""
    first = await client.token()
    clock.advance(PAST_RENEW_POINT)
    assert clock.now() < jwt_part(first, 1)["exp"], "the old token is still valid: renewal is ahead of time"

    renewed = await client.token()

    assert renewed != first
    assert jwt_part(renewed, 1)["jti"] != jwt_part(first, 1)["jti"]
    assert proxy.methods == ["Issue", "Refresh"]
    issued = proxy.granted(0)
    assert proxy.exchanges[1].refresh_token == issued.refresh_token
    assert proxy.granted(1).access_token == renewed
    claims = await verify(server, renewed, clock)
    assert claims.client_id == client_credentials.client_id and claims.scopes == {"orders.read"}
    # Last, since a reuse ends the family: the first refresh token was spent by the client.
    err = await failure(refresh_directly(server, client_credentials, issued.refresh_token))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "REFRESH_TOKEN_REUSED")


async def test_fifty_concurrent_token_calls_cause_exactly_one_refresh(
    server: Rotor, client: rotor_client.TokenClient, proxy: RecordingProxy, clock: FakeClock
) -> None:
    """50 concurrent token() past the renew point share one Refresh, and the grant stays alive."""
    first = await client.token()
    clock.advance(PAST_RENEW_POINT)

    tokens = await asyncio.gather(*(client.token() for _ in range(50)))

    assert len(set(tokens)) == 1 and tokens[0] != first, "every caller gets the one renewed token"
    assert proxy.methods == ["Issue", "Refresh"]
    await verify(server, tokens[0], clock)
    # A second use of a refresh token would have ended the family; the next renewal proves it lives.
    clock.advance(PAST_RENEW_POINT)
    again = await client.token()
    assert proxy.methods == ["Issue", "Refresh", "Refresh"]
    assert proxy.exchanges[2].reason == "" and proxy.granted(2).access_token == again
    await verify(server, again, clock)


async def test_twenty_threads_calling_token_sync_cause_exactly_one_refresh(
    server: Rotor, client: rotor_client.TokenClient, proxy: RecordingProxy, clock: FakeClock
) -> None:
    """20 threads in token_sync() past the renew point share one Refresh, and the grant stays alive."""
    first = await asyncio.to_thread(client.token_sync)
    clock.advance(PAST_RENEW_POINT)

    tokens = await asyncio.to_thread(in_threads(20, client.token_sync))

    assert len(set(tokens)) == 1 and tokens[0] != first, "every thread gets the one renewed token"
    assert proxy.methods == ["Issue", "Refresh"]
    await verify(server, tokens[0], clock)
    clock.advance(PAST_RENEW_POINT)
    again = await asyncio.to_thread(client.token_sync)
    assert proxy.methods == ["Issue", "Refresh", "Refresh"]
    assert proxy.exchanges[2].reason == "" and proxy.granted(2).access_token == again


async def end_family_by_revoking(rotor: Rotor, client: Credentials, refresh_token: str) -> None:
    assert await rotor.revoke(client, refresh_token, reason="test")


async def end_family_by_reuse(rotor: Rotor, client: Credentials, refresh_token: str) -> None:
    await refresh_directly(rotor, client, refresh_token)
    await failure(refresh_directly(rotor, client, refresh_token))  # the reuse revokes the family


@pytest.mark.parametrize(
    "end_family", [end_family_by_revoking, end_family_by_reuse], ids=["revoked", "reused_elsewhere"]
)
async def test_a_rejected_refresh_token_falls_back_to_issue(
    server: Rotor,
    client: rotor_client.TokenClient,
    proxy: RecordingProxy,
    client_credentials: Credentials,
    clock: FakeClock,
    end_family: Callable[[Rotor, Credentials, str], Awaitable[None]],
) -> None:
    """When Rotor refuses the refresh token (its family ended), the renewal issues a new grant."""
    first = await client.token()
    await end_family(server, client_credentials, proxy.granted(0).refresh_token)
    clock.advance(PAST_RENEW_POINT)

    renewed = await client.token()

    assert proxy.methods == ["Issue", "Refresh", "Issue"]
    assert proxy.exchanges[1].reason in ("REFRESH_TOKEN_REVOKED", "REFRESH_TOKEN_REUSED")
    assert renewed != first and proxy.granted(2).access_token == renewed
    claims = await verify(server, renewed, clock)
    assert claims.client_id == client_credentials.client_id and claims.scopes == {"orders.read"}


async def test_without_refresh_tokens_renewal_uses_issue(
    make_rotor: Any,
    proxy_for: Callable[[Rotor], Awaitable[RecordingProxy]],
    clock: FakeClock,
) -> None:
    """With refresh_ttl 0 Rotor hands out no refresh token, so each renewal is an Issue."""
    rotor: Rotor = await make_rotor(clock=clock, tokens={"access_ttl": ACCESS_TTL, "refresh_ttl": 0})
    creds = await rotor.add_client("svc-no-refresh")
    proxy = await proxy_for(rotor)
    async with rotor_client.TokenClient(
        proxy.address, creds.client_id, creds.secret, audience=AUDIENCE, clock=clock.now
    ) as client:
        first = await client.token()
        assert proxy.granted(0).refresh_token == ""
        clock.advance(PAST_RENEW_POINT)
        renewed = await client.token()
    assert renewed != first
    assert proxy.methods == ["Issue", "Issue"]
    await verify(rotor, renewed, clock)


# -- failures --------------------------------------------------------------------------------


async def test_server_down_serves_the_cached_token_until_it_expires(
    server: Rotor, client_credentials: Credentials, clock: FakeClock
) -> None:
    """With Rotor gone, a still-valid cached token is returned; past its expiry, UNAVAILABLE naming Rotor."""
    async with rotor_client.TokenClient(
        server.address,
        client_credentials.client_id,
        client_credentials.secret,
        audience=AUDIENCE,
        clock=clock.now,
    ) as client:
        token = await client.token()
        await server.stop()

        clock.advance(PAST_RENEW_POINT)
        assert await client.token() == token, "the cached token is still valid: no error yet"

        clock.advance(ACCESS_TTL - PAST_RENEW_POINT + 1)
        with pytest.raises(rotor_client.TokenRequestFailed) as caught:
            await client.token()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert server.address in str(caught.value), str(caught.value)


async def test_server_down_token_sync_fails_once_the_cached_token_expired(
    server: Rotor, client_credentials: Credentials, clock: FakeClock
) -> None:
    """token_sync(), too, serves the cached token while valid and then raises UNAVAILABLE."""
    with rotor_client.TokenClient(
        server.address,
        client_credentials.client_id,
        client_credentials.secret,
        audience=AUDIENCE,
        clock=clock.now,
    ) as client:
        token = await asyncio.to_thread(client.token_sync)
        await server.stop()
        clock.advance(PAST_RENEW_POINT)
        assert await asyncio.to_thread(client.token_sync) == token
        clock.advance(ACCESS_TTL)
        with pytest.raises(rotor_client.TokenRequestFailed) as caught:
            await asyncio.to_thread(client.token_sync)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert server.address in str(caught.value), str(caught.value)


async def test_wrong_secret_fails_with_rotors_reason(
    server: Rotor, client_credentials: Credentials, clock: FakeClock
) -> None:
    """A bad client secret raises TokenRequestFailed with UNAUTHENTICATED and Rotor's INVALID_CLIENT."""
    async with rotor_client.TokenClient(
        server.address, client_credentials.client_id, "not-the-secret", audience=AUDIENCE, clock=clock.now
    ) as client:
        with pytest.raises(rotor_client.TokenRequestFailed) as caught:
            await client.token()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason == "INVALID_CLIENT"
    assert client_credentials.client_id in str(caught.value)


# -- call credentials ------------------------------------------------------------------------


async def test_call_credentials_attach_the_bearer_token(
    server: Rotor, client: rotor_client.TokenClient, clock: FakeClock
) -> None:
    """Calls over a channel with call_credentials() carry `authorization: Bearer <valid token>`."""

    async def who(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        return "\n".join(str(v) for v in values).encode()

    echo = aio.server()
    echo.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    port = echo.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())
    await echo.start()
    credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(), client.call_credentials()
    )
    try:
        async with aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            sent = (await channel.unary_unary("/test.Echo/Who")(b"", timeout=10)).decode()
            sent_again = (await channel.unary_unary("/test.Echo/Who")(b"", timeout=10)).decode()
    finally:
        await echo.stop(None)

    scheme, _, token = sent.partition(" ")
    assert scheme == "Bearer", sent
    assert token == await client.token(), "the call carries the client's cached token"
    assert sent_again == sent
    await verify(server, token, clock)
