"""rotor-client on its own: installed without the server, against a Rotor running elsewhere.

`make client-check` installs this package alone into a fresh virtualenv, starts a server from
the project's, registers a client, and runs these tests with:

    ROTOR_ADDRESS, ROTOR_ISSUER, ROTOR_CLIENT_ID, ROTOR_CLIENT_SECRET, ROTOR_AUDIENCE
"""

from __future__ import annotations

import asyncio
import importlib.util
import os

import grpc
import pytest
import rotor_client
from grpc import aio
from rotor_client import (
    IntrospectRequest,
    KeySetWatcher,
    RevokeRequest,
    TokenClient,
    TokenRevoked,
    TokenServiceStub,
    Verifier,
    basic_auth,
)

ENV = ("ROTOR_ADDRESS", "ROTOR_ISSUER", "ROTOR_CLIENT_ID", "ROTOR_CLIENT_SECRET", "ROTOR_AUDIENCE")
pytestmark = pytest.mark.skipif(
    not all(os.environ.get(name) for name in ENV) and os.environ.get("CI") != "true",
    reason="needs a running Rotor: run `make client-check`",
)


@pytest.fixture
def server() -> dict[str, str]:
    missing = [name for name in ENV if not os.environ.get(name)]
    assert not missing, f"set {', '.join(missing)} (make client-check does)"
    return {name: os.environ[name] for name in ENV}


def test_none_of_the_servers_dependencies_is_installed() -> None:
    for module in ("aiohttp", "asyncpg", "aiosqlite", "prometheus_client", "uvloop"):
        assert importlib.util.find_spec(module) is None, f"{module} is installed beside rotor-client"
    assert importlib.util.find_spec("rotor.app") is None, (
        "the server is importable: not a client-only install"
    )


async def test_a_token_is_obtained_verified_introspected_and_revoked(server: dict[str, str]) -> None:
    """TokenClient gets a token; Verifier checks it against the pushed key set; Introspect says it is
    active; after Revoke the watcher learns of it and Verifier refuses it."""
    client = TokenClient(
        server["ROTOR_ADDRESS"],
        server["ROTOR_CLIENT_ID"],
        server["ROTOR_CLIENT_SECRET"],
        audience=server["ROTOR_AUDIENCE"],
    )
    try:
        token = await client.token()
    finally:
        await client.close()
    credentials = basic_auth(server["ROTOR_CLIENT_ID"], server["ROTOR_CLIENT_SECRET"])
    async with (
        KeySetWatcher(server["ROTOR_ADDRESS"]) as watcher,
        aio.insecure_channel(server["ROTOR_ADDRESS"]) as channel,
    ):
        verifier = Verifier(watcher, issuer=server["ROTOR_ISSUER"], audience=server["ROTOR_AUDIENCE"])
        assert verifier.verify(token).client_id == server["ROTOR_CLIENT_ID"]
        stub = TokenServiceStub(channel)
        seen = await stub.Introspect(IntrospectRequest(token=token), metadata=credentials, timeout=30)
        assert seen.active and seen.client_id == server["ROTOR_CLIENT_ID"]
        revoked = await stub.Revoke(RevokeRequest(token=token), metadata=credentials, timeout=30)
        assert revoked.revoked
        async with asyncio.timeout(30):
            while True:
                try:
                    verifier.verify(token)
                except TokenRevoked:
                    break
                await asyncio.sleep(0.05)
        seen = await stub.Introspect(IntrospectRequest(token=token), metadata=credentials, timeout=30)
        assert seen == rotor_client.IntrospectResponse(active=False)


async def test_wrong_credentials_are_refused_with_a_reason(server: dict[str, str]) -> None:
    async with aio.insecure_channel(server["ROTOR_ADDRESS"]) as channel:
        with pytest.raises(aio.AioRpcError) as refused:
            await TokenServiceStub(channel).Introspect(
                IntrospectRequest(token="x"),
                metadata=basic_auth(server["ROTOR_CLIENT_ID"], "wrong"),
                timeout=30,
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_immediate_rotation_reaches_the_watcher_and_its_tokens_verify(
    server: dict[str, str],
) -> None:
    """The watcher learns of a new key as it activates; a token it signs verifies at once.
    (make client-check registers its client as an admin.)"""
    credentials = basic_auth(server["ROTOR_CLIENT_ID"], server["ROTOR_CLIENT_SECRET"])
    async with (
        KeySetWatcher(server["ROTOR_ADDRESS"]) as watcher,
        aio.insecure_channel(server["ROTOR_ADDRESS"]) as channel,
    ):
        verifier = Verifier(watcher, issuer=server["ROTOR_ISSUER"], audience=server["ROTOR_AUDIENCE"])
        rotated = await rotor_client.KeyAdminStub(channel).RotateKeys(
            rotor_client.RotateKeysRequest(reason="client-check", immediate=True),
            metadata=credentials,
            timeout=30,
        )
        async with asyncio.timeout(30):
            while True:
                if watcher.keyset is not None and rotated.key.kid in {k.kid for k in watcher.keyset.keys}:
                    break
                await asyncio.sleep(0.05)
        issued = await TokenServiceStub(channel).Issue(
            rotor_client.IssueRequest(audience=[server["ROTOR_AUDIENCE"]]), metadata=credentials, timeout=30
        )
        assert issued.key_id == rotated.key.kid
        assert verifier.verify(issued.access_token).client_id == server["ROTOR_CLIENT_ID"]


async def test_a_service_behind_the_verifying_interceptor_admits_a_token_and_refuses_none(
    server: dict[str, str],
) -> None:
    """A grpc.aio service of one's own, behind VerifyingInterceptor, sees the caller's claims."""
    from google.protobuf import wrappers_pb2
    from rotor_client import VerifyingInterceptor, current_claims

    async def whoami(
        request: wrappers_pb2.StringValue, context: aio.ServicerContext
    ) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value=current_claims().client_id)

    handler = grpc.method_handlers_generic_handler(
        "check.Who",
        {
            "Am": grpc.unary_unary_rpc_method_handler(
                whoami,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            )
        },
    )
    client = TokenClient(
        server["ROTOR_ADDRESS"],
        server["ROTOR_CLIENT_ID"],
        server["ROTOR_CLIENT_SECRET"],
        audience=server["ROTOR_AUDIENCE"],
    )
    async with KeySetWatcher(server["ROTOR_ADDRESS"]) as watcher:
        verifier = Verifier(watcher, issuer=server["ROTOR_ISSUER"], audience=server["ROTOR_AUDIENCE"])
        service = aio.server(interceptors=[VerifyingInterceptor(verifier)])
        service.add_generic_rpc_handlers((handler,))
        port = service.add_insecure_port("127.0.0.1:0")
        await service.start()
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(
                    "/check.Who/Am",
                    request_serializer=wrappers_pb2.StringValue.SerializeToString,
                    response_deserializer=wrappers_pb2.StringValue.FromString,
                )
                token = await client.token()
                answer = await call(
                    wrappers_pb2.StringValue(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
                )
                assert answer.value == server["ROTOR_CLIENT_ID"]
                with pytest.raises(aio.AioRpcError) as refused:
                    await call(wrappers_pb2.StringValue(), timeout=30)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await service.stop(None)
            await client.close()
