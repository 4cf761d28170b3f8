"""
The gRPC server over a real DataPlane and registry, on a private asyncio loop (not
Twisted's global reactor): a real grpc.aio server on a loopback port, called through a
real grpc.aio channel.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from v2d.aio import as_future
from v2d.dataplane import DataPlane
from v2d.grpc import GRPCServer
from v2d.grpc._messages import SERVICE_NAME, pb
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.settings import Settings
from v2d.wrappers import LocalModelFactory

RUNTIME = """
import numpy as np
from v2d import MLModel
from v2d.errors import InferenceError
from v2d.types import InferenceResponse, Parameters, ResponseOutput

class Echo(MLModel):
    def predict(self, payload):
        if payload.parameters and payload.parameters.get("fail") == "user":
            raise InferenceError("asked to fail")
        if payload.parameters and payload.parameters.get("fail") == "crash":
            raise ZeroDivisionError("boom")
        outputs = [ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
                   for i in payload.inputs]
        got = payload.parameters.headers.get("x-send", "")
        return InferenceResponse(model_name=self.name, outputs=outputs,
                                 parameters=Parameters(headers={"X-Got": got}, seen=len(outputs)))

class Counter(MLModel):
    def predict(self, payload):
        raise NotImplementedError

    async def predict_stream(self, payloads):
        async for payload in payloads:
            n = int(np.asarray(payload.inputs[0].data).ravel()[0])
            for k in range(n):
                yield InferenceResponse(model_name=self.name, outputs=[
                    ResponseOutput(name="k", shape=[1], datatype="INT64", data=np.array([k]))])
"""

SETTINGS = {
    "echo": {
        "implementation": "models.Echo",
        "max_batch_size": 4,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    },
    "counter": {"implementation": "models.Counter"},
}


class LoopReactor:
    """
    What GRPCServer's grpcio engine needs of the reactor: its asyncio loop. (These tests
    serve with the grpcio engine, which needs no reactor; the default h2 engine listens
    through a running reactor and is tested on a real ``twistd v2d`` in
    tests/integration, where every gRPC suite runs on both engines.)
    """

    def __init__(self, loop):
        self._asyncioEventloop = loop


def models_dataplane(folder, settings_of, runtime):
    """A DataPlane over in-process models: a folder of each ``settings_of`` with ``runtime`` as models.py."""
    for name, settings in settings_of.items():
        model = folder / name
        model.mkdir()
        (model / "model-settings.json").write_text(json.dumps(dict(settings, name=name)))
        (model / "models.py").write_text(textwrap.dedent(runtime))
    repository = ModelRepository(str(folder), environ={})
    registry = ModelRegistry(factory_for=lambda settings: LocalModelFactory())
    return DataPlane(registry=registry, repository=repository)


@pytest.fixture
def dataplane(tmp_path):
    return models_dataplane(tmp_path, SETTINGS, RUNTIME)


def serve(dataplane, test, **settings):
    """Run ``await test(channel)`` against a started server, then stop it."""

    async def main():
        loop = asyncio.get_running_loop()
        await as_future(dataplane.load_all(), loop)
        settings.setdefault("grpc_engine", "grpcio")
        server = GRPCServer(dataplane, Settings(grpc="127.0.0.1:0", **settings), LoopReactor(loop))
        await as_future(server.start(), loop)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                return await test(channel)
        finally:
            await as_future(server.stop(1.0), loop)

    return asyncio.run(main())


def method(channel, name, request_cls, response_cls, stream=False):
    path = f"/{SERVICE_NAME}/{name}"
    make = channel.stream_stream if stream else channel.unary_unary
    return make(
        path, request_serializer=request_cls.SerializeToString, response_deserializer=response_cls.FromString
    )


def infer_stub(channel):
    return method(channel, "ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)


def fp32_request(values, model="echo", **params):
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=list(values.shape))
    message.raw_input_contents.append(values.astype("<f4").tobytes())
    for key, value in params.items():
        message.parameters[key].string_param = value
    return message


def test_infer_raw_with_metadata_both_ways(dataplane):
    values = np.array([[1.5, np.nan, -np.inf]], dtype=np.float32)

    async def test(channel):
        call = infer_stub(channel)(fp32_request(values), metadata=(("x-send", "hello"),))
        response = await call
        return response, await call.initial_metadata()

    response, metadata = serve(dataplane, test)
    assert response.model_name == "echo"
    assert response.raw_output_contents[0] == values.tobytes()
    assert response.parameters["seen"].int64_param == 1
    assert "headers" not in response.parameters
    assert dict(metadata)["x-got"] == "hello"


def test_errors_map_to_status_codes_and_the_server_keeps_serving(dataplane):
    ok = np.zeros((1, 3), np.float32)

    async def test(channel):
        stub = infer_stub(channel)
        codes = []
        bad = pb.ModelInferRequest(model_name="echo")
        bad.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.int_contents.extend([1, 2, 3])
        for request in (
            bad,
            fp32_request(ok, model="nope"),
            fp32_request(ok, fail="user"),
            fp32_request(ok, fail="crash"),
            fp32_request(ok, model="counter"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub(request)
            codes.append((info.value.code(), info.value.details()))
        codes.append(await stub(fp32_request(ok)))
        return codes

    codes = serve(dataplane, test)
    assert codes[0][0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0] ('x')" in codes[0][1] and "int_contents" in codes[0][1]
    assert codes[1] == (grpc.StatusCode.NOT_FOUND, "model 'nope' not found")
    assert codes[2] == (grpc.StatusCode.INVALID_ARGUMENT, "asked to fail")
    assert codes[3][0] == grpc.StatusCode.INTERNAL and "boom" in codes[3][1]
    assert codes[4][0] == grpc.StatusCode.UNIMPLEMENTED
    assert codes[5].model_name == "echo"


def test_garbage_bytes_are_refused_not_crashing(dataplane):
    async def test(channel):
        raw = channel.unary_unary(f"/{SERVICE_NAME}/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff\xff")
        return info.value.code(), info.value.details()

    code, details = serve(dataplane, test)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in details


def test_metadata_config_and_repository(dataplane):
    async def test(channel):
        out = {}
        out["live"] = await method(channel, "ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)(
            pb.ServerLiveRequest()
        )
        out["ready"] = await method(channel, "ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse)(
            pb.ServerReadyRequest()
        )
        out["server"] = await method(
            channel, "ServerMetadata", pb.ServerMetadataRequest, pb.ServerMetadataResponse
        )(pb.ServerMetadataRequest())
        out["model"] = await method(
            channel, "ModelMetadata", pb.ModelMetadataRequest, pb.ModelMetadataResponse
        )(pb.ModelMetadataRequest(name="echo"))
        out["config"] = await method(channel, "ModelConfig", pb.ModelConfigRequest, pb.ModelConfigResponse)(
            pb.ModelConfigRequest(name="echo")
        )
        index = method(channel, "RepositoryIndex", pb.RepositoryIndexRequest, pb.RepositoryIndexResponse)
        unload = method(
            channel,
            "RepositoryModelUnload",
            pb.RepositoryModelUnloadRequest,
            pb.RepositoryModelUnloadResponse,
        )
        load = method(
            channel, "RepositoryModelLoad", pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse
        )
        ready = method(channel, "ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse)
        await unload(pb.RepositoryModelUnloadRequest(model_name="echo"))
        out["after_unload"] = (await ready(pb.ModelReadyRequest(name="echo"))).ready
        out["index"] = await index(pb.RepositoryIndexRequest())
        await load(pb.RepositoryModelLoadRequest(model_name="echo"))
        out["after_load"] = (await ready(pb.ModelReadyRequest(name="echo"))).ready
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await load(pb.RepositoryModelLoadRequest(model_name="missing"))
        out["missing"] = info.value.code()
        return out

    out = serve(dataplane, test)
    assert out["live"].live and out["ready"].ready
    assert "binary_tensor_data" not in out["server"].extensions  # the dataplane's own list
    assert out["model"].inputs[0].name == "x" and list(out["model"].inputs[0].shape) == [-1, 3]
    config = out["config"].config
    assert (config.name, config.max_batch_size, config.backend) == ("echo", 4, "v2d")
    assert list(config.input[0].dims) == [3]
    assert config.input[0].data_type == 11  # TYPE_FP32
    assert out["after_unload"] is False and out["after_load"] is True
    assert {(m.name, m.state) for m in out["index"].models} == {("echo", "UNAVAILABLE"), ("counter", "READY")}
    assert out["missing"] == grpc.StatusCode.NOT_FOUND


def test_stream_infer(dataplane):
    async def test(channel):
        stream = method(
            channel, "ModelStreamInfer", pb.ModelInferRequest, pb.ModelStreamInferResponse, stream=True
        )

        async def requests():
            for n in (2, 3):
                message = pb.ModelInferRequest(model_name="counter")
                message.inputs.add(name="n", datatype="INT32", shape=[1]).contents.int_contents.append(n)
                yield message

        got = [r async for r in stream(requests())]
        wrong = [r async for r in stream(iter([pb.ModelInferRequest(model_name="echo")]))]
        return got, wrong

    got, wrong = serve(dataplane, test)
    assert [list(r.infer_response.outputs[0].contents.int64_contents) for r in got] == [
        [0],
        [1],
        [0],
        [1],
        [2],
    ]
    assert all(r.infer_response.model_name == "counter" and not r.error_message for r in got)
    assert len(wrong) == 1 and "does not implement predict_stream" in wrong[0].error_message


def test_health_and_reflection(dataplane):
    async def test(channel):
        health = health_pb2_grpc.HealthStub(channel)
        statuses = {}
        for service in ("", "echo", "counter"):
            statuses[service] = (await health.Check(health_pb2.HealthCheckRequest(service=service))).status
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="nope"))
        statuses["nope"] = info.value.code()
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            yield reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelConfig")

        answers = [a async for a in reflection.ServerReflectionInfo(ask())]
        return statuses, answers

    statuses, answers = serve(dataplane, test)
    assert statuses[""] == statuses["echo"] == health_pb2.HealthCheckResponse.SERVING
    assert statuses["nope"] == grpc.StatusCode.NOT_FOUND
    services = {s.name for s in answers[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    assert answers[1].file_descriptor_response.file_descriptor_proto


def test_message_size_limit(dataplane):
    async def test(channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await infer_stub(channel)(fp32_request(np.zeros((1000, 3), np.float32)))
        return info.value.code()

    assert serve(dataplane, test, grpc_max_message_size=4096) == grpc.StatusCode.RESOURCE_EXHAUSTED


def self_signed(tmp_path):
    """A certificate and key for 127.0.0.1/localhost, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def test_tls(dataplane, tmp_path):
    cert, key = self_signed(tmp_path)

    async def main():
        loop = asyncio.get_running_loop()
        await as_future(dataplane.load_all(), loop)
        settings = Settings(grpc="127.0.0.1:0", grpc_tls_cert=cert, grpc_tls_key=key, grpc_engine="grpcio")
        server = GRPCServer(dataplane, settings, LoopReactor(loop))
        await as_future(server.start(), loop)
        try:
            with open(cert, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
                live = method(channel, "ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)
                secure = (await live(pb.ServerLiveRequest())).live
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                live = method(channel, "ServerLive", pb.ServerLiveRequest, pb.ServerLiveResponse)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await live(pb.ServerLiveRequest(), timeout=5)
            return secure, info.value.code()
        finally:
            await as_future(server.stop(1.0), loop)

    assert asyncio.run(main()) == (True, grpc.StatusCode.UNAVAILABLE)
