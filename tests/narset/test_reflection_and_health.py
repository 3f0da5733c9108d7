"""What other-language clients and tools rely on (issue 12): reflection v1 served beside v1alpha (v1 was
UNIMPLEMENTED), and the standard grpc/health/v1/health.proto shipped with the contract, identical to
the health service Narset runs."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"


def _reflect(channel: grpc.Channel, version: str, *requests: reflection_pb2.ServerReflectionRequest):
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_is_served_not_unimplemented(server, version):
    """Both versions list every service and describe Narset's, and v1 describes itself."""
    with grpc.insecure_channel(server.address) as channel:
        listed, operator, itself = _reflect(
            channel,
            version,
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="narset.v1.OperatorService"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        )
    names = {s.name for s in listed.list_services_response.service}
    assert names == {
        "narset.v1.WorkerService",
        "narset.v1.OperatorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in operator.file_descriptor_response.file_descriptor_proto
    ]
    assert "narset/v1/operator_service.proto" in {f.name for f in files}
    [v1] = [
        descriptor_pb2.FileDescriptorProto.FromString(b) for b in itself.file_descriptor_response.file_descriptor_proto
    ]
    assert (v1.package, v1.service[0].method[0].input_type) == (
        "grpc.reflection.v1",
        ".grpc.reflection.v1.ServerReflectionRequest",
    )


def test_the_shipped_health_proto_is_the_one_narset_serves(server, tmp_path):
    """proto/grpc/health/v1/health.proto compiles to the descriptor of the health service Narset runs."""
    out = tmp_path / "health.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--descriptor_set_out={out}",
        "grpc/health/v1/health.proto",
    ]
    assert protoc.main(args) == 0
    [shipped] = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    served = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(served)
    served.name = shipped.name  # grpcio-health-checking builds it under grpc_health/
    messages = list(shipped.message_type)
    while messages:  # protoc adds the JSON names a runtime descriptor leaves implicit
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    assert shipped == served
    with grpc.insecure_channel(server.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
