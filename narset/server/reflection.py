"""Server reflection under both names clients ask for: grpc.reflection.v1 and grpc.reflection.v1alpha.

grpcio-reflection implements only v1alpha, while current clients (grpcurl, Postman, other languages'
tooling) ask v1 first. The two protocols are the same messages under another package, so one servicer
answers both: v1 requests decode as v1alpha messages and v1alpha answers encode as v1 ones. The v1
file itself (v1alpha's descriptor under the v1 names) is added to the descriptor pool, so that v1 can
be described like every other service.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

__all__ = ["SERVICE_NAMES", "enable_reflection"]

_V1_PACKAGE = "grpc.reflection.v1"
_V1_SERVICE = f"{_V1_PACKAGE}.ServerReflection"
SERVICE_NAMES = (_V1_SERVICE, reflection.SERVICE_NAME)


def _renamed(type_name: str) -> str:
    old = f".{reflection_pb2.DESCRIPTOR.package}."
    return f".{_V1_PACKAGE}." + type_name.removeprefix(old) if type_name.startswith(old) else type_name


def _register_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """v1alpha's reflection.proto under the v1 package, in `pool` (once)."""
    try:
        pool.FindServiceByName(_V1_SERVICE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", _V1_PACKAGE
    messages = list(proto.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            if field.type_name:
                field.type_name = _renamed(field.type_name)
    for method in proto.service[0].method:
        method.input_type, method.output_type = _renamed(method.input_type), _renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha on `server`, listing `service_names` and the two reflection services."""
    _register_v1_file(descriptor_pool.Default())
    servicer = reflection.aio.ReflectionServicer((*service_names, *SERVICE_NAMES))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_V1_SERVICE, {"ServerReflectionInfo": v1}),))
