"""VerifyingInterceptor: a grpc.aio service admits only calls with a valid Rotor token.

The service under test is a grpc.aio server in this process, behind the
interceptor, whose handlers answer with `current_claims()`; its verifier
watches a real Rotor.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import rotor_client
from api.support import AUDIENCE, ISSUER, Credentials, Rotor, assert_error, jwt_part
from google.protobuf import duration_pb2
from grpc import aio
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rotor.clock import FakeClock
from rotor_client._keys import KeyCache

SERVICE = "test.Claims"
KINDS = ("Unary", "ServerStream", "ClientStream", "Bidi")
WRITE = f"/{SERVICE}/Write"  # needs orders.write (method_scopes)
PUBLIC = f"/{SERVICE}/Public"
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


class ClaimsService:
    """A grpc.aio server behind a VerifyingInterceptor; each handler answers with the caller's claims."""

    def __init__(self, interceptor: rotor_client.VerifyingInterceptor) -> None:
        self.ran: list[str] = []  # handlers that ran, in order
        self.server = aio.server(interceptors=[interceptor])
        self.address = ""
        self._channels: list[aio.Channel] = []
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "Write": grpc.unary_unary_rpc_method_handler(self._write),
            "Public": grpc.unary_unary_rpc_method_handler(self._public),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self._client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._bidi),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    async def start(self) -> None:
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        port = self.server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())
        await self.server.start()
        self.address = f"127.0.0.1:{port}"

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await self.server.stop(None)

    def channel(self, call_credentials: grpc.CallCredentials | None = None) -> aio.Channel:
        """A channel over local credentials (so gRPC sends call credentials), closed at teardown."""
        credentials = grpc.local_channel_credentials()
        if call_credentials is not None:
            credentials = grpc.composite_channel_credentials(credentials, call_credentials)
        channel = aio.secure_channel(self.address, credentials)
        self._channels.append(channel)
        return channel

    # -- handlers ------------------------------------------------------------------------

    def _answer(self, method: str) -> bytes:
        self.ran.append(method)
        claims = rotor_client.current_claims()
        return json.dumps(
            {"client_id": claims.client_id, "jti": claims.jti, "scope": sorted(claims.scopes)}
        ).encode()

    async def _unary(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        return self._answer("Unary")

    async def _write(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        return self._answer("Write")

    async def _public(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        self.ran.append("Public")
        try:
            rotor_client.current_claims()
        except rotor_client.RotorClientError:
            return b"anonymous"
        return b"with claims"

    async def _server_stream(
        self, request: bytes, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        yield self._answer("ServerStream")
        await asyncio.sleep(0)  # the claims outlive a suspension of the handler
        yield self._answer("ServerStream")

    async def _client_stream(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
    ) -> bytes:
        async for _ in requests:
            pass
        return self._answer("ClientStream")

    async def _bidi(
        self, requests: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield self._answer("Bidi")


async def call(
    channel: aio.Channel, kind: str, metadata: Metadata = (), requests: tuple[bytes, ...] = (b"a", b"b")
) -> list[dict[str, Any]]:
    """Call one method of the test service; the claims each response carried.

    A call expected to be refused should stream no requests: grpc.aio clients may report
    INTERNAL instead of the server's status when a write races the server's early end
    (grpc/grpc#36066).
    """
    path = f"/{SERVICE}/{kind}"
    match kind:
        case "Unary" | "Write":
            responses = [await channel.unary_unary(path)(b"", metadata=metadata, timeout=10)]
        case "ServerStream":
            responses = [r async for r in channel.unary_stream(path)(b"", metadata=metadata, timeout=10)]
        case "ClientStream":
            responses = [await channel.stream_unary(path)(iter(requests), metadata=metadata, timeout=10)]
        case "Bidi":
            stream = channel.stream_stream(path)(iter(requests), metadata=metadata, timeout=10)
            responses = [r async for r in stream]
        case _:
            raise AssertionError(kind)
    return [json.loads(r) for r in responses]


async def refused(call_made: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call_made
    return caught.value


Serve = Callable[..., Awaitable[ClaimsService]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Factory: serve(verifier, **VerifyingInterceptor options) -> a started ClaimsService."""
    started: list[ClaimsService] = []

    async def start(verifier: rotor_client.Verifier, **options: Any) -> ClaimsService:
        service = ClaimsService(rotor_client.VerifyingInterceptor(verifier, **options))
        started.append(service)
        await service.start()
        return service

    yield start
    for service in started:
        await service.close()


@pytest.fixture
def clock() -> FakeClock:
    """The verifier's clock (Rotor keeps the real one)."""
    return FakeClock(start=time.time())


@pytest.fixture
async def watcher(rotor: Rotor) -> AsyncIterator[rotor_client.KeySetWatcher]:
    async with rotor_client.KeySetWatcher(rotor.address) as started:
        yield started


@pytest.fixture
def verifier(watcher: rotor_client.KeySetWatcher, clock: FakeClock) -> rotor_client.Verifier:
    return rotor_client.Verifier(watcher, issuer=ISSUER, audience=AUDIENCE, clock=clock.now)


@pytest.fixture
async def service(serve: Serve, verifier: rotor_client.Verifier) -> ClaimsService:
    return await serve(verifier, method_scopes={WRITE: ["orders.write"]})


async def until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll `condition` every 20 ms; fail the test if it is not true within `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.02)


# -- admitted calls --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_valid_token_reaches_the_handler_with_its_claims(
    rotor: Rotor, svc: Credentials, service: ClaimsService, kind: str
) -> None:
    """With a valid bearer token the handler runs, and current_claims() is that token's claims."""
    token = (await rotor.issue(svc, scope=["orders.read"])).access_token

    answers = await call(service.channel(), kind, bearer(token))

    assert answers, "the handler answered nothing"
    expected = {"client_id": svc.client_id, "jti": jwt_part(token, 1)["jti"], "scope": ["orders.read"]}
    assert all(answer == expected for answer in answers), answers
    assert service.ran == [kind] * len(answers)


def current_claims_outside_a_handler() -> None:
    rotor_client.current_claims()


async def test_current_claims_outside_a_handler_raises(
    rotor: Rotor, svc: Credentials, service: ClaimsService
) -> None:
    """current_claims() raises RotorClientError outside a handler, also after a verified call ended."""
    with pytest.raises(rotor_client.RotorClientError, match="VerifyingInterceptor"):
        rotor_client.current_claims()
    token = (await rotor.issue(svc)).access_token
    await call(service.channel(), "Unary", bearer(token))
    with pytest.raises(rotor_client.RotorClientError):
        rotor_client.current_claims()
    with pytest.raises(rotor_client.RotorClientError):
        await asyncio.to_thread(current_claims_outside_a_handler)


# -- refused calls ---------------------------------------------------------------------------


async def no_authorization(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    return ()


async def basic_auth(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    return svc.metadata


async def empty_bearer(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    return (("authorization", "Bearer "),)


async def garbage_bearer(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    return bearer("garbage")


async def tampered_token(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    header, payload, signature = (await rotor.issue(svc)).access_token.split(".")
    forged = json.dumps({**jwt_part(f"{header}.{payload}.", 1), "client_id": "ops-admin"}).encode()
    return bearer(f"{header}.{base64.urlsafe_b64encode(forged).rstrip(b'=').decode()}.{signature}")


async def expired_token(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    token = (await rotor.issue(svc, ttl=duration_pb2.Duration(seconds=60))).access_token
    clock.advance(60 + 30 + 1)  # past exp and the verifier's leeway
    return bearer(token)


async def revoked_token(
    rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: rotor_client.KeySetWatcher
) -> Metadata:
    token = (await rotor.issue(svc)).access_token
    assert await rotor.revoke(svc, token, reason="test")
    jti = jwt_part(token, 1)["jti"]
    await until(lambda: jti in watcher.key_cache.revoked_jtis, "Rotor pushes the revocation to the watcher")
    return bearer(token)


async def other_audience(rotor: Rotor, svc: Credentials, clock: FakeClock, watcher: Any) -> Metadata:
    other = await rotor.add_client("svc-elsewhere", audiences=("billing",))
    return bearer((await rotor.issue(other)).access_token)


RefusedCase = Callable[[Rotor, Credentials, FakeClock, rotor_client.KeySetWatcher], Awaitable[Metadata]]


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (no_authorization, "INVALID_TOKEN"),
        (basic_auth, "INVALID_TOKEN"),
        (empty_bearer, "INVALID_TOKEN"),
        (garbage_bearer, "TOKEN_MALFORMED"),
        (tampered_token, "INVALID_SIGNATURE"),
        (expired_token, "TOKEN_EXPIRED"),
        (revoked_token, "TOKEN_REVOKED"),
        (other_audience, "INVALID_AUDIENCE"),
    ],
    ids=lambda case: case.__name__ if callable(case) else case,
)
async def test_a_call_without_a_valid_token_is_unauthenticated_and_never_handled(
    rotor: Rotor,
    svc: Credentials,
    clock: FakeClock,
    watcher: rotor_client.KeySetWatcher,
    service: ClaimsService,
    credentials: RefusedCase,
    reason: str,
) -> None:
    """UNAUTHENTICATED with ErrorInfo(domain "rotor", reason of the failure); the handler never ran."""
    metadata = await credentials(rotor, svc, clock, watcher)

    err = await refused(call(service.channel(), "Unary", metadata))

    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, reason)
    assert service.ran == []


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_of_method_refuses_a_call_without_a_token(service: ClaimsService, kind: str) -> None:
    """Streaming methods are guarded like unary ones: UNAUTHENTICATED before the handler runs."""
    err = await refused(call(service.channel(), kind, requests=()))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
    assert service.ran == []


async def test_a_token_without_the_methods_scope_is_permission_denied(
    rotor: Rotor, svc: Credentials, service: ClaimsService
) -> None:
    """A method listed in method_scopes refuses a token lacking its scope with INSUFFICIENT_SCOPE."""
    read_only = (await rotor.issue(svc, scope=["orders.read"])).access_token
    err = await refused(call(service.channel(), "Write", bearer(read_only)))
    assert_error(err, grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")
    assert "orders.write" in (err.details() or "")
    assert service.ran == []

    writer = (await rotor.issue(svc, scope=["orders.write"])).access_token
    (answer,) = await call(service.channel(), "Write", bearer(writer))
    assert answer["scope"] == ["orders.write"] and service.ran == ["Write"]
    # The scope is required by that method only.
    assert await call(service.channel(), "Unary", bearer(read_only))


async def test_the_health_check_is_public_by_default(service: ClaimsService) -> None:
    """gRPC health Check needs no token (orchestrators probe without credentials)."""
    health = health_pb2_grpc.HealthStub(service.channel())
    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_public_methods_need_no_token_and_carry_no_claims(
    serve: Serve, verifier: rotor_client.Verifier
) -> None:
    """A method in public_methods runs without a token, and current_claims() there raises."""
    service = await serve(verifier, public_methods={PUBLIC})
    assert await service.channel().unary_unary(PUBLIC)(b"", timeout=10) == b"anonymous"
    assert service.ran == ["Public"]
    err = await refused(call(service.channel(), "Unary"))
    assert_error(err, grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


async def test_a_stale_key_set_is_unavailable_not_trusted(make_rotor: Any, serve: Serve) -> None:
    """Once the watcher lost Rotor for longer than max_staleness, calls fail UNAVAILABLE KEY_SET_STALE."""
    rotor: Rotor = await make_rotor(heartbeat_interval=0.1)  # contact well within max_staleness while up
    svc = await rotor.add_client("svc-stale")
    token = (await rotor.issue(svc)).access_token
    async with rotor_client.KeySetWatcher(rotor.address, max_staleness=1.0) as watcher:
        service = await serve(rotor_client.Verifier(watcher, issuer=ISSUER, audience=AUDIENCE))
        channel = service.channel()
        assert await call(channel, "Unary", bearer(token)), "admitted while Rotor is up"
        await rotor.stop(grace=0.5)

        async def stale() -> aio.AioRpcError | None:
            """The error of a call while Rotor is gone (None while the key set is still fresh)."""
            handled = len(service.ran)
            try:
                await call(channel, "Unary", bearer(token))
            except aio.AioRpcError as e:
                assert len(service.ran) == handled, "a refused call reached the handler"
                return e
            return None

        deadline = time.monotonic() + 5.0
        while (err := await stale()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    "5 s after Rotor stopped, with max_staleness 1 s, calls are still admitted: "
                    f"the key set never went stale (watcher connected={watcher.connected})"
                )
            await asyncio.sleep(0.05)
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "KEY_SET_STALE")
    assert "max_staleness" in (err.details() or ""), err.details()


async def test_a_stale_key_cache_refuses_every_token(rotor: Rotor, svc: Credentials, serve: Serve) -> None:
    """A KeyCache past its stale_at refuses even a valid token with UNAVAILABLE KEY_SET_STALE."""
    cache = KeyCache(max_staleness=60.0)
    cache.install(await rotor.key_set())
    service = await serve(rotor_client.Verifier(cache, issuer=ISSUER, audience=AUDIENCE))
    token = (await rotor.issue(svc)).access_token
    assert await call(service.channel(), "Unary", bearer(token))

    cache.stale_at = time.monotonic() - 1

    err = await refused(call(service.channel(), "Unary", bearer(token)))
    assert_error(err, grpc.StatusCode.UNAVAILABLE, "KEY_SET_STALE")
    assert service.ran == ["Unary"]


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_token_clients_call_credentials_are_admitted_with_its_claims(
    rotor: Rotor, svc: Credentials, service: ClaimsService, kind: str
) -> None:
    """A channel with TokenClient.call_credentials() reaches the handler as that client."""
    async with rotor_client.TokenClient(
        rotor.address, svc.client_id, svc.secret, audience=AUDIENCE, scope=["orders.read", "orders.write"]
    ) as client:
        channel = service.channel(client.call_credentials())
        answers = await call(channel, kind)
        (write,) = await call(channel, "Write")
        token = await client.token()
    expected = {
        "client_id": svc.client_id,
        "jti": jwt_part(token, 1)["jti"],
        "scope": ["orders.read", "orders.write"],
    }
    assert answers and all(answer == expected for answer in answers), answers
    assert write == expected
    assert service.ran == [kind] * len(answers) + ["Write"]
