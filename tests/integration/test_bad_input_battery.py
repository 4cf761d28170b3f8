"""
The bad-input battery: every malformed request a client can send, over REST and gRPC
through a real daemon, gets a 4xx / INVALID_ARGUMENT-class status with one message
naming the field, and the server answers a good request after each.
"""

from __future__ import annotations

import json
import socket

import grpc
import pytest

from tests.support.daemon import Daemon, http_json

pytestmark = pytest.mark.integration

ECHO = """
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Echo(MLModel):
    def predict(self, payload):
        x = payload.inputs[0]
        seen = payload.parameters.get("get") if payload.parameters else None
        out = [ResponseOutput(name="y", shape=x.shape, datatype=x.datatype, data=x.data)]
        if seen is not None:
            out.append(ResponseOutput(name="z", shape=[1], datatype="BYTES", data=[str(seen)]))
        return InferenceResponse(model_name=self.name, outputs=out)
"""

SETTINGS = {
    "name": "echo",
    "implementation": "models.Echo",
    "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [-1]},
        {"name": "z", "datatype": "BYTES", "shape": [1]},
    ],
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    (root / "echo").mkdir()
    (root / "echo" / "model-settings.json").write_text(json.dumps(SETTINGS))
    (root / "echo" / "models.py").write_text(ECHO)
    with Daemon(str(root)) as d:
        yield d


def tensor(**overrides):
    t = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    t.update(overrides)
    return {k: v for k, v in t.items() if v is not ...}


def with_input(**overrides):
    return {"inputs": [tensor(**overrides)]}


GOOD = with_input()

# (case id, JSON body, fragment the error must hold)
REST_BODIES = [
    ("no-inputs", {}, "inputs"),
    ("inputs-null", {"inputs": None}, "inputs"),
    ("inputs-object", {"inputs": {}}, "inputs"),
    ("inputs-string", {"inputs": "x"}, "inputs"),
    ("input-not-object", {"inputs": [1]}, "inputs[0]"),
    ("input-list", {"inputs": [[]]}, "inputs[0]"),
    ("name-missing", with_input(name=...), "inputs[0].name"),
    ("name-number", with_input(name=5), "inputs[0].name"),
    ("name-null", with_input(name=None), "inputs[0].name"),
    ("shape-missing", with_input(shape=...), "shape"),
    ("shape-null", with_input(shape=None), "shape"),
    ("shape-string", with_input(shape="2"), "shape"),
    ("shape-number", with_input(shape=2), "shape"),
    ("shape-negative", with_input(shape=[-1]), "shape"),
    ("shape-float", with_input(shape=[2.0]), "shape"),
    ("shape-bool", with_input(shape=[True, True]), "shape"),
    ("shape-string-dim", with_input(shape=["2"]), "shape"),
    ("shape-nested", with_input(shape=[[2]]), "shape"),
    ("shape-0-2**62", with_input(shape=[0, 2**62], data=[]), "shape"),
    ("shape-2**63", with_input(shape=[2**63], data=[]), "shape"),
    ("shape-huge-product", with_input(shape=[2**30, 2**30], data=[]), "shape"),
    ("shape-65-dims", with_input(shape=[1] * 65, data=[1.0]), "shape"),
    ("shape-100-dims-zero", with_input(shape=[0] * 100, data=[]), "shape"),
    ("datatype-missing", with_input(datatype=...), "datatype"),
    ("datatype-unknown", with_input(datatype="FLOAT"), "datatype"),
    ("datatype-lower", with_input(datatype="fp32"), "datatype"),
    ("datatype-number", with_input(datatype=32), "datatype"),
    ("datatype-empty", with_input(datatype=""), "datatype"),
    ("data-missing", with_input(data=...), "data"),
    ("data-too-few", with_input(data=[1.0]), "data"),
    ("data-too-many", with_input(data=[1.0, 2.0, 3.0]), "data"),
    ("data-ragged", with_input(shape=[2, 2], data=[[1.0, 2.0], [3.0]]), "data"),
    ("data-strings", with_input(data=["a", "b"]), "data"),
    ("data-null-items", with_input(data=[None, None]), "data"),
    ("data-object", with_input(data={"a": 1}), "data"),
    ("data-string", with_input(data="12"), "data"),
    ("data-mixed", with_input(data=[1.0, "a"]), "data"),
    ("fp32-1e39", with_input(data=[1e39, 1.0]), "FP32"),
    ("fp32-neg-1e39", with_input(data=[-1e39, 1.0]), "FP32"),
    ("fp16-1e6", with_input(datatype="FP16", data=[1e6, 1.0]), "FP16"),
    ("int8-300", with_input(datatype="INT8", data=[300, 1]), "INT8"),
    ("int16-big", with_input(datatype="INT16", data=[40000, 1]), "INT16"),
    ("int32-big", with_input(datatype="INT32", data=[2**31, 1]), "INT32"),
    ("int64-big", with_input(datatype="INT64", data=[2**63, 1]), "INT64"),
    ("uint8-negative", with_input(datatype="UINT8", data=[-1, 1]), "UINT8"),
    ("uint64-2**64", with_input(datatype="UINT64", data=[2**64, 1]), "UINT64"),
    ("int32-float", with_input(datatype="INT32", data=[1.5, 1]), "INT32"),
    ("bool-2", with_input(datatype="BOOL", data=[2, 1]), "BOOL"),
    ("bool-float", with_input(datatype="BOOL", data=[0.5, 1]), "BOOL"),
    ("bytes-numbers", with_input(datatype="BYTES", data=[1, 2]), "BYTES"),
    ("bytes-count", with_input(datatype="BYTES", data=["a"]), "data"),
    ("id-number", dict(GOOD, id=5), "id"),
    ("id-object", dict(GOOD, id={}), "id"),
    ("parameters-list", dict(GOOD, parameters=[]), "parameters"),
    ("parameters-string", dict(GOOD, parameters="x"), "parameters"),
    ("parameters-headers-string", dict(GOOD, parameters={"headers": "x"}), "parameters.headers"),
    ("parameters-headers-list", dict(GOOD, parameters={"headers": ["x"]}), "parameters.headers"),
    ("parameters-headers-number-value", dict(GOOD, parameters={"headers": {"a": 1}}), "parameters.headers"),
    ("parameters-content-type-number", dict(GOOD, parameters={"content_type": 5}), "parameters.content_type"),
    ("parameters-decoded-cache", dict(GOOD, parameters={"_decoded_payload": [1]}), "_decoded_payload"),
    ("parameters-empty-key", dict(GOOD, parameters={"": 1}), "parameters"),
    ("input-parameters-list", with_input(parameters=[]), "inputs[0].parameters"),
    ("input-parameters-headers", with_input(parameters={"headers": "x"}), "parameters.headers"),
    ("input-parameters-content-type", with_input(parameters={"content_type": []}), "content_type"),
    ("input-binary-without-header", with_input(parameters={"binary_data_size": 8}), "binary_data_size"),
    ("outputs-object", dict(GOOD, outputs={}), "outputs"),
    ("outputs-string", dict(GOOD, outputs="y"), "outputs"),
    ("output-not-object", dict(GOOD, outputs=["y"]), "outputs[0]"),
    ("output-name-missing", dict(GOOD, outputs=[{}]), "outputs[0].name"),
    ("output-name-number", dict(GOOD, outputs=[{"name": 1}]), "outputs[0].name"),
    ("output-unknown", dict(GOOD, outputs=[{"name": "nope"}]), "outputs[0].name"),
    ("output-duplicate", dict(GOOD, outputs=[{"name": "y"}, {"name": "y"}]), "outputs[1].name"),
    (
        "output-parameters-list",
        dict(GOOD, outputs=[{"name": "y", "parameters": []}]),
        "outputs[0].parameters",
    ),
    ("input-duplicate", {"inputs": [tensor(), tensor()]}, "inputs[1].name"),
]

# (case id, raw body, extra headers, fragment)
REST_RAW = [
    ("not-json", b"{", {}, "JSON"),
    ("json-array", b"[]", {}, "JSON object"),
    ("json-string", b'"x"', {}, "JSON object"),
    ("empty", b"", {}, "empty"),
    ("nan", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', {}, "JSON"),
    (
        "header-length-text",
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        "Inference-Header-Content-Length",
    ),
    (
        "header-length-negative",
        b"{}",
        {"Inference-Header-Content-Length": "-1"},
        "Inference-Header-Content-Length",
    ),
    (
        "header-length-past-end",
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        "Inference-Header-Content-Length",
    ),
]


def _binary(size, extra=b"", datatype="FP32", shape=(2,), payload=b"\0" * 8):
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return header + payload + extra, {"Inference-Header-Content-Length": str(len(header))}


REST_BINARY = [
    ("binary-size-negative", _binary(-1), "binary_data_size"),
    ("binary-size-string", _binary("8"), "binary_data_size"),
    ("binary-size-past-end", _binary(64), "binary_data_size"),
    ("binary-leftover", _binary(8, extra=b"\0\0\0\0"), "binary_data_size"),
    ("binary-wrong-for-shape", _binary(4, payload=b"\0" * 4), "raw data"),
    ("binary-bool-2", _binary(2, datatype="BOOL", payload=b"\x02\x01"), "BOOL"),
    ("binary-bytes-truncated", _binary(3, datatype="BYTES", shape=(1,), payload=b"\x05\0\0"), "BYTES"),
    ("binary-bytes-overrun", _binary(5, datatype="BYTES", shape=(1,), payload=b"\x09\0\0\0a"), "BYTES"),
]

# (case id, method, path, fragment, status)
REST_PATHS = [
    ("unknown-model-infer", "POST", "/v2/models/nope/infer", "nope", 404),
    ("unknown-model-meta", "GET", "/v2/models/nope", "nope", 404),
    ("unknown-version", "POST", "/v2/models/echo/versions/9/infer", "9", 404),
    ("slash-encoded", "GET", "/v2/models/%2Fetc", "/v2/models", 404),
    ("slash-encoded-repo", "POST", "/v2/repository/models/%2F..%2F/load", "/v2/repository", 404),
    ("get-infer", "GET", "/v2/models/echo/infer", "GET", 405),
    ("unknown-endpoint", "GET", "/v2/nothing", "/v2/nothing", 404),
    ("trailing-slash", "GET", "/v2/models/echo/", "/v2/models/echo/", 404),
    ("repository-load-unknown", "POST", "/v2/repository/models/nope/load", "nope", 404),
    ("repository-unload-unknown", "POST", "/v2/repository/models/nope/unload", "nope", 404),
    ("ready-unknown", "GET", "/v2/models/nope/ready", "nope", 404),
    ("config-unknown", "GET", "/v2/models/nope/config", "nope", 404),
]


def _good(daemon):
    status, body, _ = http_json("POST", daemon.url + "/v2/models/echo/infer", GOOD)
    assert status == 200 and body["outputs"][0]["data"] == [1.0, 2.0], body


def _check_error(status, body, fragment, expected=400):
    assert status == expected, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert fragment in body["error"], (fragment, body["error"])


@pytest.mark.parametrize("case,body,fragment", REST_BODIES, ids=[c[0] for c in REST_BODIES])
def test_rest_bad_bodies(daemon, case, body, fragment):
    status, answer, _ = http_json("POST", daemon.url + "/v2/models/echo/infer", json.dumps(body).encode())
    _check_error(status, answer, fragment)
    _good(daemon)


@pytest.mark.parametrize("case,raw,headers,fragment", REST_RAW, ids=[c[0] for c in REST_RAW])
def test_rest_bad_raw_bodies(daemon, case, raw, headers, fragment):
    status, answer, _ = http_json("POST", daemon.url + "/v2/models/echo/infer", raw, headers=headers)
    _check_error(status, answer, fragment)
    _good(daemon)


@pytest.mark.parametrize("case,request_,fragment", REST_BINARY, ids=[c[0] for c in REST_BINARY])
def test_rest_bad_binary_bodies(daemon, case, request_, fragment):
    raw, headers = request_
    status, answer, _ = http_json("POST", daemon.url + "/v2/models/echo/infer", raw, headers=headers)
    _check_error(status, answer, fragment)
    _good(daemon)


@pytest.mark.parametrize("case,method,path,fragment,expected", REST_PATHS, ids=[c[0] for c in REST_PATHS])
def test_rest_bad_paths(daemon, case, method, path, fragment, expected):
    body = GOOD if method == "POST" else None
    status, answer, headers = http_json(method, daemon.url + path, body, headers={"Host": "evil.example"})
    _check_error(status, answer, fragment, expected)
    assert "evil.example" not in json.dumps(answer) and "Location" not in headers
    _good(daemon)


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"ready": "x"}'], ids=["index-not-json", "index-array", "index-ready-string"]
)
def test_rest_bad_repository_index(daemon, body):
    status, answer, _ = http_json("POST", daemon.url + "/v2/repository/index", body)
    if body == b'{"ready": "x"}':
        _check_error(status, answer, "ready")
    else:
        _check_error(status, answer, "JSON")
    _good(daemon)


def test_parameters_named_like_methods_work(daemon):
    """A client's parameter called ``get`` (a method of Parameters) neither breaks nor hides it."""
    for params in ({"get": 1}, {"get": 1, "dict": 2, "json": 3, "model_dump": 4, "to_dict": 5}):
        body = dict(GOOD, parameters=params)
        status, answer, _ = http_json("POST", daemon.url + "/v2/models/echo/infer", body)
        assert status == 200, answer
        assert answer["outputs"][1]["data"] == ["1"]
        status, answer, _ = http_json(
            "POST", daemon.url + "/v2/models/echo/infer", with_input(parameters=params)
        )
        assert status == 200, answer


# -- gRPC ------------------------------------------------------------------------------


def _grpc_cases():
    from v2d.grpc._messages import pb

    def request(**tensor_fields):
        message = pb.ModelInferRequest(model_name="echo")
        fields = {"name": "x", "datatype": "FP32", "shape": [2]}
        fields.update(tensor_fields)
        contents = fields.pop("contents", [1.0, 2.0])
        t = message.inputs.add(**fields)
        if contents is not None:
            t.contents.fp32_contents.extend(contents)
        return message

    def edit(fn, **tensor_fields):
        message = request(**tensor_fields)
        fn(message)
        return message

    cases = [
        ("model-name-missing", edit(lambda m: m.ClearField("model_name")), "model_name", "INVALID_ARGUMENT"),
        ("model-unknown", edit(lambda m: setattr(m, "model_name", "nope")), "nope", "NOT_FOUND"),
        ("version-unknown", edit(lambda m: setattr(m, "model_version", "9")), "9", "NOT_FOUND"),
        ("name-missing", request(name=""), "inputs[0].name", "INVALID_ARGUMENT"),
        ("datatype-unknown", request(datatype="FLOAT"), "datatype", "INVALID_ARGUMENT"),
        ("datatype-lower", request(datatype="fp32"), "datatype", "INVALID_ARGUMENT"),
        ("datatype-empty", request(datatype=""), "datatype", "INVALID_ARGUMENT"),
        ("shape-negative", request(shape=[-1]), "shape", "INVALID_ARGUMENT"),
        ("shape-0-2**62", request(shape=[0, 2**62], contents=None), "shape", "INVALID_ARGUMENT"),
        ("shape-huge", request(shape=[2**40, 2**40], contents=None), "shape", "INVALID_ARGUMENT"),
        ("shape-65-dims", request(shape=[1] * 65, contents=[1.0]), "shape", "INVALID_ARGUMENT"),
        ("shape-100-zero-dims", request(shape=[0] * 100, contents=None), "shape", "INVALID_ARGUMENT"),
        ("contents-too-few", request(contents=[1.0]), "contents", "INVALID_ARGUMENT"),
        ("contents-too-many", request(contents=[1.0, 2.0, 3.0]), "contents", "INVALID_ARGUMENT"),
        ("no-data", request(contents=None), "data", "INVALID_ARGUMENT"),
        ("fp16-typed", request(datatype="FP16"), "FP16", "INVALID_ARGUMENT"),
        ("wrong-contents-field", request(datatype="INT32"), "contents", "INVALID_ARGUMENT"),
        (
            "int8-out-of-range",
            edit(
                lambda m: (
                    m.inputs[0].contents.ClearField("fp32_contents"),
                    m.inputs[0].contents.int_contents.extend([300, 1]),
                ),
                datatype="INT8",
            ),
            "INT8",
            "INVALID_ARGUMENT",
        ),
        (
            "mixed-contents",
            edit(lambda m: m.inputs[0].contents.int_contents.extend([1, 2])),
            "contents",
            "INVALID_ARGUMENT",
        ),
        ("raw-and-typed", edit(lambda m: m.raw_input_contents.append(b"\0" * 8)), "raw", "INVALID_ARGUMENT"),
        (
            "raw-count",
            edit(lambda m: m.raw_input_contents.extend([b"\0" * 8, b"\0" * 8]), contents=None),
            "raw_input_contents",
            "INVALID_ARGUMENT",
        ),
        (
            "raw-size",
            edit(lambda m: m.raw_input_contents.append(b"\0" * 5), contents=None),
            "raw_input_contents[0]",
            "INVALID_ARGUMENT",
        ),
        (
            "raw-bool-2",
            edit(lambda m: m.raw_input_contents.append(b"\x02\x01"), contents=None, datatype="BOOL"),
            "BOOL",
            "INVALID_ARGUMENT",
        ),
        (
            "raw-bytes-truncated",
            edit(
                lambda m: m.raw_input_contents.append(b"\x05\0"), contents=None, datatype="BYTES", shape=[1]
            ),
            "BYTES",
            "INVALID_ARGUMENT",
        ),
        (
            "duplicate-inputs",
            edit(
                lambda m: m.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(
                    1.0
                )
            ),
            "inputs[1].name",
            "INVALID_ARGUMENT",
        ),
        ("output-name-missing", edit(lambda m: m.outputs.add()), "outputs[0].name", "INVALID_ARGUMENT"),
        ("output-unknown", edit(lambda m: m.outputs.add(name="nope")), "outputs[0].name", "INVALID_ARGUMENT"),
        (
            "output-duplicate",
            edit(lambda m: (m.outputs.add(name="y"), m.outputs.add(name="y"))),
            "outputs[1].name",
            "INVALID_ARGUMENT",
        ),
        (
            "parameters-headers",
            edit(lambda m: m.parameters["headers"].__setattr__("string_param", "x")),
            "headers",
            "INVALID_ARGUMENT",
        ),
        (
            "input-parameters-headers",
            edit(lambda m: m.inputs[0].parameters["headers"].__setattr__("string_param", "x")),
            "headers",
            "INVALID_ARGUMENT",
        ),
        (
            "parameters-content-type-number",
            edit(lambda m: m.parameters["content_type"].__setattr__("int64_param", 5)),
            "content_type",
            "INVALID_ARGUMENT",
        ),
        (
            "parameters-decoded-cache",
            edit(lambda m: m.parameters["_decoded_payload"].__setattr__("string_param", "x")),
            "_decoded_payload",
            "INVALID_ARGUMENT",
        ),
        (
            "output-parameters-headers",
            edit(lambda m: m.outputs.add(name="y").parameters["headers"].__setattr__("string_param", "x")),
            "headers",
            "INVALID_ARGUMENT",
        ),
    ]
    return cases


GRPC_CASE_IDS = [
    "model-name-missing",
    "model-unknown",
    "version-unknown",
    "name-missing",
    "datatype-unknown",
    "datatype-lower",
    "datatype-empty",
    "shape-negative",
    "shape-0-2**62",
    "shape-huge",
    "shape-65-dims",
    "shape-100-zero-dims",
    "contents-too-few",
    "contents-too-many",
    "no-data",
    "fp16-typed",
    "wrong-contents-field",
    "int8-out-of-range",
    "mixed-contents",
    "raw-and-typed",
    "raw-count",
    "raw-size",
    "raw-bool-2",
    "raw-bytes-truncated",
    "duplicate-inputs",
    "output-name-missing",
    "output-unknown",
    "output-duplicate",
    "parameters-headers",
    "input-parameters-headers",
    "parameters-content-type-number",
    "parameters-decoded-cache",
    "output-parameters-headers",
]


def _stub(channel, method, request_cls, response_cls):
    return channel.unary_unary(
        f"/inference.GRPCInferenceService/{method}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )


def _grpc_good(channel):
    from v2d.grpc._messages import pb

    infer = _stub(channel, "ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
    message = pb.ModelInferRequest(model_name="echo")
    message.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1.0, 2.0])
    assert list(infer(message, timeout=10).outputs[0].contents.fp32_contents) == [1.0, 2.0]


@pytest.mark.parametrize("case", GRPC_CASE_IDS)
def test_grpc_bad_infer_requests(daemon, case):
    from v2d.grpc._messages import pb

    cases = {c[0]: c[1:] for c in _grpc_cases()}
    assert set(cases) == set(GRPC_CASE_IDS)
    message, fragment, code = cases[case]
    with grpc.insecure_channel(daemon.grpc_address) as channel:
        infer = _stub(channel, "ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        with pytest.raises(grpc.RpcError) as info:
            infer(message, timeout=10)
        assert info.value.code() == getattr(grpc.StatusCode, code), info.value.details()
        assert fragment in info.value.details(), info.value.details()
        _grpc_good(channel)


@pytest.mark.parametrize(
    "method,request_name,response_name,fields,code",
    [
        ("ModelInfer", "ModelInferRequest", "ModelInferResponse", b"\xff\xff\xff", "INVALID_ARGUMENT"),
        ("ModelMetadata", "ModelMetadataRequest", "ModelMetadataResponse", {}, "INVALID_ARGUMENT"),
        ("ModelMetadata", "ModelMetadataRequest", "ModelMetadataResponse", {"name": "nope"}, "NOT_FOUND"),
        ("ModelReady", "ModelReadyRequest", "ModelReadyResponse", {}, "INVALID_ARGUMENT"),
        ("ModelConfig", "ModelConfigRequest", "ModelConfigResponse", {}, "INVALID_ARGUMENT"),
        ("ModelConfig", "ModelConfigRequest", "ModelConfigResponse", {"name": "nope"}, "NOT_FOUND"),
        (
            "RepositoryModelLoad",
            "RepositoryModelLoadRequest",
            "RepositoryModelLoadResponse",
            {},
            "INVALID_ARGUMENT",
        ),
        (
            "RepositoryModelLoad",
            "RepositoryModelLoadRequest",
            "RepositoryModelLoadResponse",
            {"model_name": "nope"},
            "NOT_FOUND",
        ),
        (
            "RepositoryModelUnload",
            "RepositoryModelUnloadRequest",
            "RepositoryModelUnloadResponse",
            {},
            "INVALID_ARGUMENT",
        ),
        ("ModelMetadata", "ModelMetadataRequest", "ModelMetadataResponse", b"\x0a\xff", "INVALID_ARGUMENT"),
    ],
)
def test_grpc_bad_other_requests(daemon, method, request_name, response_name, fields, code):
    from v2d.grpc._messages import pb

    request_cls, response_cls = getattr(pb, request_name), getattr(pb, response_name)
    with grpc.insecure_channel(daemon.grpc_address) as channel:
        if isinstance(fields, bytes):
            stub = channel.unary_unary(
                f"/inference.GRPCInferenceService/{method}",
                request_serializer=lambda raw: raw,
                response_deserializer=response_cls.FromString,
            )
            request = fields
        else:
            stub = _stub(channel, method, request_cls, response_cls)
            request = request_cls(**fields)
        with pytest.raises(grpc.RpcError) as info:
            stub(request, timeout=10)
        assert info.value.code() == getattr(grpc.StatusCode, code), info.value.details()
        assert info.value.details()
        _grpc_good(channel)


def test_malformed_http_gets_json_400_and_server_serves(daemon):
    """Requests the HTTP parser refuses get a 400 with {"error": ...}; the server serves the next one."""
    for raw in (
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /v2 HTTP/1.1\r\n Host: x\r\n\r\n",
        b"GET /v2 HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET  /v2 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v2 HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /v2/models/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10) as s:
            s.sendall(raw)
            answer = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), (raw, answer)
        assert b"content-type: application/json" in head.lower(), (raw, answer)
        assert "malformed HTTP request" in json.loads(body)["error"], (raw, answer)
        _good(daemon)


WORKER_CASES = ["shape-65-dims", "shape-0-2**62", "duplicate-inputs", "parameters-headers", "raw-size"]


def test_bad_inputs_decoded_in_a_worker_child(tmp_path):
    """With ``--workers 1`` small gRPC requests are decoded in the worker: the same errors come back."""
    from v2d.grpc._messages import pb

    (tmp_path / "echo").mkdir()
    (tmp_path / "echo" / "model-settings.json").write_text(json.dumps(SETTINGS))
    (tmp_path / "echo" / "models.py").write_text(ECHO)
    cases = {c[0]: c[1:] for c in _grpc_cases()}
    with Daemon(str(tmp_path), "--workers", "1") as d, grpc.insecure_channel(d.grpc_address) as channel:
        infer = _stub(channel, "ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        for case in WORKER_CASES:
            message, fragment, code = cases[case]
            with pytest.raises(grpc.RpcError) as info:
                infer(message, timeout=10)
            assert info.value.code() == getattr(grpc.StatusCode, code), (case, info.value.details())
            assert fragment in info.value.details(), (case, info.value.details())
            _grpc_good(channel)
        for case, body, fragment in REST_BODIES:
            if case in ("fp32-1e39", "output-unknown", "parameters-headers-string", "shape-65-dims"):
                status, answer, _ = http_json("POST", d.url + "/v2/models/echo/infer", body)
                _check_error(status, answer, fragment)
                _good(d)
