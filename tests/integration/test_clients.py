"""
Real V2 clients against a real ``twistd v2d`` on loopback: tritonclient over HTTP
(binary tensor data on and off) and gRPC round-trips every datatype bit-exactly through
an echo runtime, reads metadata and passes headers both ways; a streaming runtime
streams over gRPC (tritonclient) and REST (server-sent events); the standard health
service and server reflection answer.
"""

from __future__ import annotations

import json
import os
import queue
import textwrap
import urllib.request

import grpc
import numpy as np
import pytest

from tests.support.daemon import Daemon

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

pytestmark = pytest.mark.integration

RUNTIMES = """
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, Parameters, ResponseOutput


class Echo(MLModel):
    def predict(self, payload):
        headers = (payload.parameters.headers if payload.parameters else None) or {}
        outputs = [
            ResponseOutput(name="OUT_" + i.name, shape=i.shape, datatype=i.datatype, data=i.data)
            for i in payload.inputs
        ]
        sent = headers.get("x-v2d-test", "")
        outputs.append(ResponseOutput(name="HEADER", shape=[1], datatype="BYTES", data=[sent]))
        reply = Parameters(headers={"X-V2D-Reply": "re:" + sent})
        return InferenceResponse(model_name=self.name, outputs=outputs, parameters=reply)


class Countdown(MLModel):
    async def predict(self, payload):
        raise NotImplementedError("stream me")

    async def predict_stream(self, payloads):
        async for payload in payloads:
            start = int(np.asarray(payload.inputs[0].data).ravel()[0])
            for k in range(start, 0, -1):
                count = ResponseOutput("count", [1], "INT32", np.array([k], np.int32))
                yield InferenceResponse(model_name=self.name, outputs=[count])
"""

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
DATATYPES += ["FP16", "FP32", "FP64", "BYTES"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    settings = {
        "echo": {
            "implementation": "models.Echo",
            "versions": ["1"],
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            # no "outputs": a model that declares outputs is asked only for those, and
            # this echo answers every input (OUT_<name>) and HEADER
            "max_batch_size": 8,
        },
        "countdown": {"implementation": "models.Countdown"},
    }
    for name, values in settings.items():
        folder = models / name
        folder.mkdir()
        (folder / "model-settings.json").write_text(json.dumps(dict(values, name=name)))
        (folder / "models.py").write_text(textwrap.dedent(RUNTIMES))
    with Daemon(str(models)) as d:
        yield d


def tensors(json_safe):
    """One array per datatype, using each type's extremes (NaN/Inf only where the wire is binary)."""
    rng = np.random.default_rng(7)
    out = {}
    for datatype in DATATYPES:
        if datatype == "BYTES":
            items = (
                [b"plain", b"", "\u00e9t\u00e9".encode()] if json_safe else [b"\x00\xff\x01", b"", b"\x80abc"]
            )
            out[datatype] = np.array(items * 2, dtype=object).reshape(2, 3)
            continue
        dtype = np.dtype(tritonclient_http.triton_to_np_dtype(datatype))
        if dtype.kind == "b":
            values = rng.integers(0, 2, 6).astype(bool)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1], dtype=dtype)
        else:
            values = rng.standard_normal(6).astype(dtype)
            values[0] = -0.0
            values[1] = np.finfo(dtype).max
            if not json_safe:
                values[2:5] = [np.nan, np.inf, -np.inf]
        out[datatype] = values.reshape(2, 3)
    return out


def same(expected, got):
    if expected.dtype == object:
        return [bytes(x) if isinstance(x, bytes) else x.encode() for x in got.ravel()] == list(
            expected.ravel()
        )
    return got.dtype == expected.dtype and got.shape == expected.shape and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_roundtrips_every_datatype(daemon, binary):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{daemon.http_port}")
    data = tensors(json_safe=not binary)
    inputs, outputs = [], []
    for datatype, values in data.items():
        tensor = tritonclient_http.InferInput(f"t_{datatype}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
        outputs.append(tritonclient_http.InferRequestedOutput(f"OUT_t_{datatype}", binary_data=binary))
    outputs.append(tritonclient_http.InferRequestedOutput("HEADER", binary_data=binary))
    result = client.infer("echo", inputs, outputs=outputs, headers={"X-V2D-Test": f"http-{binary}"})
    for datatype, values in data.items():
        assert same(values, result.as_numpy(f"OUT_t_{datatype}")), datatype
    assert result.as_numpy("HEADER").ravel()[0] in (f"http-{binary}", f"http-{binary}".encode())
    assert result.get_response()["model_name"] == "echo"


def test_http_response_headers_and_metadata(daemon):
    client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{daemon.http_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("echo")
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "model_configuration", "model_repository"} <= set(server["extensions"])
    model = client.get_model_metadata("echo")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    config = client.get_model_config("echo")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [4]
    body = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [3]}]}
    status, doc, headers = daemon.post("/v2/models/echo/infer", body, headers={"X-V2D-Test": "raw"})
    assert status == 200 and {k.lower(): v for k, v in headers.items()}["x-v2d-reply"] == "re:raw"
    assert "headers" not in doc.get("parameters", {})


def test_grpc_roundtrips_every_datatype_and_metadata(daemon):
    client = tritonclient_grpc.InferenceServerClient(daemon.grpc_address)
    data = tensors(json_safe=False)
    inputs = []
    for datatype, values in data.items():
        tensor = tritonclient_grpc.InferInput(f"t_{datatype}", list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    result = client.infer("echo", inputs, headers={"x-v2d-test": "grpc"})
    for datatype, values in data.items():
        assert same(values, result.as_numpy(f"OUT_t_{datatype}")), datatype
    assert result.as_numpy("HEADER").ravel()[0] == b"grpc"
    response = result.get_response()
    assert (response.model_name, response.model_version) == ("echo", "1")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("echo")
    assert "binary_tensor_data" in client.get_server_metadata().extensions
    meta = client.get_model_metadata("echo")
    assert (meta.inputs[0].name, list(meta.inputs[0].shape)) == ("x", [-1, 4])
    config = client.get_model_config("echo").config
    assert (config.max_batch_size, list(config.input[0].dims)) == (8, [4])
    index = client.get_model_repository_index()
    assert {(m.name, m.state) for m in index.models} == {("echo", "READY"), ("countdown", "READY")}


def test_grpc_response_metadata(daemon):
    from v2d.grpc._messages import SERVICE_NAME, pb

    with grpc.insecure_channel(daemon.grpc_address) as channel:
        infer = channel.unary_unary(
            f"/{SERVICE_NAME}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        request = pb.ModelInferRequest(model_name="echo")
        request.inputs.add(name="x", datatype="INT64", shape=[2]).contents.int64_contents.extend([1, -2])
        response, call = infer.with_call(request, metadata=(("x-v2d-test", "meta"),))
    assert dict(call.initial_metadata())["x-v2d-reply"] == "re:meta"
    assert list(response.outputs[0].contents.int64_contents) == [1, -2]  # typed in, typed out
    assert list(response.outputs[1].contents.bytes_contents) == [b"meta"]


def test_grpc_bad_input_is_invalid_argument(daemon):
    client = tritonclient_grpc.InferenceServerClient(daemon.grpc_address)
    tensor = tritonclient_grpc.InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.zeros(2, np.float32))
    tensor.set_shape([3])  # now the data is too short for the shape
    with pytest.raises(tritonclient_grpc.InferenceServerException) as info:
        client.infer("echo", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "raw_input_contents[0]" in info.value.message()
    assert client.is_server_live()


def test_grpc_stream(daemon):
    client = tritonclient_grpc.InferenceServerClient(daemon.grpc_address)
    results: "queue.Queue" = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for start in (3, 2):
            tensor = tritonclient_grpc.InferInput("start", [1], "INT32")
            tensor.set_data_from_numpy(np.array([start], np.int32))
            client.async_stream_infer("countdown", [tensor])
        counts = []
        for _ in range(5):
            result, error = results.get(timeout=30)
            assert error is None, error
            counts.append(int(result.as_numpy("count")[0]))
    finally:
        client.stop_stream()
    assert counts == [3, 2, 1, 2, 1]


def test_rest_stream_is_server_sent_events(daemon):
    body = json.dumps(
        {"inputs": [{"name": "start", "datatype": "INT32", "shape": [1], "data": [3]}]}
    ).encode()
    request = urllib.request.Request(
        daemon.url + "/v2/models/countdown/infer_stream", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [line for line in response.read().decode().split("\n") if line.startswith("data: ")]
    counts = [json.loads(e[len("data: ") :])["outputs"][0]["data"][0] for e in events]
    assert counts == [3, 2, 1]


def test_health_checks_and_reflection(daemon):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(daemon.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        assert health.Check(health_pb2.HealthCheckRequest(service="echo")).status == serving
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


@pytest.mark.skipif(not os.path.exists("/proc"), reason="needs /proc")
def test_daemon_log_is_clean(daemon):
    assert "Traceback" not in daemon.log()
