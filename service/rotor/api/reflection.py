"""Server reflection, v1alpha (grpcurl 1.8) and v1 (newer clients try it first).

grpcio-reflection ships v1alpha only. v1 has the same messages under another
package, so the same servicer answers both; a v1 copy of the reflection file
descriptor is added to the pool so that v1 can describe itself too.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc import aio
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    text = text_format.MessageToString(proto).replace("grpc.reflection.v1alpha", "grpc.reflection.v1")
    v1 = text_format.Parse(text, descriptor_pb2.FileDescriptorProto())
    v1.name = "grpc/reflection/v1/reflection.proto"
    pool.Add(v1)


def enable(server: aio.Server, service_names: list[str]) -> None:
    """Serve reflection for `service_names` (and for reflection itself) on v1alpha and v1."""
    _add_v1_descriptor()
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE]
    servicer = reflection_aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                V1_SERVICE,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )
