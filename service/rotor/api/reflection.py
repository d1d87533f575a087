"""Server reflection, v1alpha (grpcurl 1.8) and v1 (newer clients try it first).

grpcio-reflection ships v1alpha only. v1 has the same messages under another
package, so the same servicer answers both; a v1 copy of the reflection file
descriptor is added to the pool so that v1 can describe itself too.

The generated stubs carry no comments, so rotor.v1's files are served from
the descriptor set `make proto` writes with source info: `grpcurl describe`
shows every message's and field's documentation.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

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


class DocumentedReflection(reflection_aio.ReflectionServicer):  # type: ignore[misc]
    """The stock servicer, answering with commented file descriptors where it has them."""

    def __init__(self, service_names: list[str]) -> None:
        super().__init__(service_names)
        documented = resources.files("rotor.v1").joinpath("descriptors.binpb").read_bytes()
        self._comments = {
            f.name: f.source_code_info for f in descriptor_pb2.FileDescriptorSet.FromString(documented).file
        }

    def _with_docs(
        self, response: reflection_pb2.ServerReflectionResponse
    ) -> reflection_pb2.ServerReflectionResponse:
        """Attach the comments to rotor.v1's files; all else stays exactly as generated
        (protoc's own set also adds json_name, which would change grpcurl's output)."""
        if response.HasField("file_descriptor_response"):
            files = response.file_descriptor_response.file_descriptor_proto
            for i, raw in enumerate(files):
                proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                if proto.name in self._comments:
                    proto.source_code_info.CopyFrom(self._comments[proto.name])
                    files[i] = proto.SerializeToString()
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._with_docs(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        return self._with_docs(super()._file_containing_symbol(request, fully_qualified_name))


def enable(server: aio.Server, service_names: list[str]) -> None:
    """Serve reflection for `service_names` (and for reflection itself) on v1alpha and v1."""
    _add_v1_descriptor()
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE]
    servicer = DocumentedReflection(names)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                reflection.SERVICE_NAME,
                {"ServerReflectionInfo": _handler(servicer)},
            ),
            grpc.method_handlers_generic_handler(
                V1_SERVICE,
                {"ServerReflectionInfo": _handler(servicer)},
            ),
        )
    )


def _handler(servicer: DocumentedReflection) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
