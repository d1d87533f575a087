"""Health and server reflection, as grpcurl and load balancers meet them."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from .support import Rotor

SERVICES = {"rotor.v1.TokenService", "rotor.v1.KeyAdmin", "grpc.health.v1.Health"}


@pytest.mark.parametrize("service", ["", "rotor.v1.TokenService", "rotor.v1.KeyAdmin"])
async def test_health_is_serving_once_started(rotor: Rotor, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(rotor.channel())
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_reports_not_serving_once_stopping(rotor: Rotor) -> None:
    stub = health_pb2_grpc.HealthStub(rotor.channel())
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    await rotor.stop(grace=1.0)  # an open health Watch holds the server for the whole grace
    update = await watch.read()
    assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING


# v1 has the same messages as v1alpha under another package: the wire format is identical.
@pytest.mark.parametrize("version", ["v1alpha", "v1"])
async def test_reflection_lists_and_describes_every_service(rotor: Rotor, version: str) -> None:
    service = f"grpc.reflection.{version}.ServerReflection"
    info = rotor.channel().stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(timeout=10)

    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = {s.name for s in (await call.read()).list_services_response.service}
    assert listed >= SERVICES | {service}, f"{version} lists only {sorted(listed)}"

    for symbol, method in [
        ("rotor.v1.TokenService", "WatchKeyRotations"),
        ("rotor.v1.KeyAdmin", "ApproveOperation"),
        (service, "ServerReflectionInfo"),  # grpcurl describes reflection itself through it
    ]:
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        response = await call.read()
        assert not response.HasField("error_response"), f"{version}: {symbol}: {response.error_response}"
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
        methods = {f"{f.package}.{s.name}": {m.name for m in s.method} for f in files for s in f.service}
        assert method in methods.get(symbol, set()), f"{version}: {symbol} not described: {methods}"
    await call.done_writing()


async def test_reflection_carries_the_protos_comments_for_grpcurl_describe(rotor: Rotor) -> None:
    info = rotor.channel().stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(timeout=10)
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="rotor.v1.IssueRequest"))
    response = await call.read()
    await call.done_writing()
    files = {
        f.name: f
        for f in map(
            descriptor_pb2.FileDescriptorProto.FromString,
            response.file_descriptor_response.file_descriptor_proto,
        )
    }
    comments = " ".join(
        loc.leading_comments for loc in files["rotor/v1/token_service.proto"].source_code_info.location
    )
    assert "IssueRequest asks for an access token" in comments
    assert "rotor/v1/keys.proto" in files, "a dependency is missing from the response"
