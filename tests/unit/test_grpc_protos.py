"""
The generated descriptors match protos/, and the protos interoperate with Triton's
clients: every message, field number, type and method v2d defines is the same in
tritonclient's own compiled protos (which use the same package and service name).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from v2d.grpc._messages import POOL, SERVICE_NAME, pb
from v2d.grpc.generated.descriptors import FILE_DESCRIPTOR_SET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GENERATE = os.path.join(ROOT, "protos", "generate.py")


def _needs_protoc() -> None:
    try:
        import grpc_tools.protoc  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("grpcio-tools is not installed")
    if not os.path.exists(GENERATE):
        pytest.skip("protos/ is not next to the package under test")


def test_generated_module_is_up_to_date():
    _needs_protoc()
    result = subprocess.run([sys.executable, GENERATE, "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_generated_descriptors_match_a_fresh_compile():
    _needs_protoc()
    sys.path.insert(0, os.path.dirname(GENERATE))
    try:
        import generate
    finally:
        sys.path.remove(os.path.dirname(GENERATE))
    fresh = descriptor_pb2.FileDescriptorSet.FromString(generate.compile_descriptor_set())
    committed = descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET)
    assert fresh == committed


def test_service_has_every_method_of_the_issue():
    service = POOL.FindServiceByName(SERVICE_NAME)
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
    }
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming


def test_open_inference_protocol_field_numbers():
    # A few numbers straight from the specification, checked by hand.
    fields = pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert fields["raw_input_contents"].number == 7
    assert pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number == 6
    params = pb.InferParameter.DESCRIPTOR.fields_by_name
    assert [
        params[n].number
        for n in ("bool_param", "int64_param", "string_param", "double_param", "uint64_param")
    ] == [
        1,
        2,
        3,
        4,
        5,
    ]
    contents = pb.InferTensorContents.DESCRIPTOR.fields_by_name
    assert contents["bytes_contents"].number == 8
    assert contents["fp32_contents"].number == 6


def _file_proto(descriptor):
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    return proto


def _messages(file_proto, prefix=""):
    out = {}

    def walk(messages, scope):
        for m in messages:
            name = f"{scope}.{m.name}"
            out[name] = m
            walk(m.nested_type, name)

    walk(file_proto.message_type, prefix or file_proto.package)
    return out


def test_same_shapes_as_tritonclient():
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import model_config_pb2, service_pb2

    theirs = {}
    for module in (service_pb2, model_config_pb2):
        theirs.update(_messages(_file_proto(module.DESCRIPTOR)))
    ours = {}
    for name in ("grpc_service.proto", "model_config.proto"):
        ours.update(_messages(_file_proto(POOL.FindFileByName(name))))
    assert ours, "no messages compiled"
    for name, message in ours.items():
        assert name in theirs, f"{name} is not a Triton message"
        their_fields = {f.name: f for f in theirs[name].field}
        for field in message.field:
            other = their_fields.get(field.name)
            assert other is not None, f"{name}.{field.name} is not in Triton's {name}"
            assert (field.number, field.type, field.label, field.type_name) == (
                other.number,
                other.type,
                other.label,
                other.type_name,
            ), f"{name}.{field.name} differs from Triton's"
    their_service = {m.name: m for m in _file_proto(service_pb2.DESCRIPTOR).service[0].method}
    for method in _file_proto(POOL.FindFileByName("grpc_service.proto")).service[0].method:
        other = their_service[method.name]
        assert (method.input_type, method.output_type, method.client_streaming, method.server_streaming) == (
            other.input_type,
            other.output_type,
            other.client_streaming,
            other.server_streaming,
        )


def test_private_pool_lives_beside_tritonclient():
    pytest.importorskip("tritonclient.grpc")
    from tritonclient.grpc import service_pb2

    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x01"])
    ours.inputs.add(name="x", datatype="BOOL", shape=[1])
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].name == "x"
    assert theirs.raw_input_contents[0] == b"\x01"
