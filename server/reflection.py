"""gRPC server reflection under both names clients use: grpc.reflection.v1 and v1alpha.

grpcio-reflection ships only v1alpha, but current clients (grpcurl, Postman, grpc-go's and grpc-java's
tools) ask for v1 first, and some never fall back. The two protocols are the same messages under another
package name (field numbers and types identical, so identical bytes on the wire): v1 is served by
v1alpha's servicer under v1's name, and v1's descriptors, made from v1alpha's with the package renamed,
are added to the pool so that reflection can describe itself under both names.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptors() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"

    def renamed(type_name: str) -> str:
        return type_name.replace(".grpc.reflection.v1alpha.", ".grpc.reflection.v1.")

    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # message and enum fields
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    pool.Add(proto)


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection for `service_names` and both reflection services on `server`."""
    _add_v1_descriptors()
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    reflection.enable_server_reflection(names, server)  # v1alpha
    servicer = reflection.aio.ReflectionServicer(names)
    handler = grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    })  # fmt: skip
    server.add_generic_rpc_handlers((handler,))
