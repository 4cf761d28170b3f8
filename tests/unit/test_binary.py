"""
The REST binary tensor data extension (v2d.rest._binary), the model configuration
route and the server-sent events stream: functions directly, and the Klein app in
memory (StubTreq) over a real DataPlane. No ports, no reactor.
"""

from __future__ import annotations

import asyncio
import json
import textwrap

import numpy as np
import orjson
import pytest
from treq.testing import StubTreq

from v2d.dataplane import DataPlane
from v2d.errors import InvalidArgument
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.rest import RestAPI
from v2d.rest._binary import decode_infer_body, encode_infer_body
from v2d.tensors import pack_bytes
from v2d.types import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestOutput,
    ResponseOutput,
)
from v2d.wrappers import LocalModelFactory


def binary_body(inputs, parameters=None, outputs=None):
    """A request body in the extension's framing; ``inputs`` are (name, datatype, shape, raw or data)."""
    doc_inputs, chunks = [], []
    for name, datatype, shape, value in inputs:
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if isinstance(value, bytes):
            entry["parameters"] = {"binary_data_size": len(value)}
            chunks.append(value)
        else:
            entry["data"] = value
        doc_inputs.append(entry)
    doc = {"inputs": doc_inputs}
    if parameters:
        doc["parameters"] = parameters
    if outputs:
        doc["outputs"] = outputs
    header = json.dumps(doc).encode()
    return header + b"".join(chunks), str(len(header)).encode()


@pytest.mark.parametrize("datatype", [d for d, t in DATATYPES.items() if t is not None])
def test_binary_inputs_are_zero_copy_and_exact(datatype):
    values = (np.arange(6) % 2).astype(DATATYPES[datatype]).reshape(2, 3)
    body, length = binary_body([("x", datatype, [2, 3], values.tobytes()), ("j", "INT32", [1], [7])])
    request = decode_infer_body(body, length)
    got = request.inputs[0].data
    assert got.tobytes() == values.tobytes() and got.shape == (2, 3)
    assert np.shares_memory(got, np.frombuffer(body, np.uint8))
    assert request.inputs[0].parameters.to_dict() == {}  # binary_data_size is transport detail
    assert request.inputs[1].data.tolist() == [7]


def test_binary_bytes_input():
    items = [b"\x00\xff", b"", "é".encode()]
    body, length = binary_body([("s", "BYTES", [3], pack_bytes(items))])
    assert decode_infer_body(body, length).inputs[0].data == items


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda body, n: (body, b"abc"), "must be an integer"),
        (lambda body, n: (body, str(len(body) + 1).encode()), "but the body has"),
        (lambda body, n: (body + b"\x00", n), "binary_data_size add up to 8"),
        (lambda body, n: (body[:-1], n), "runs past the end of the body"),
        (lambda body, n: (body[: int(n)], None), "no Inference-Header-Content-Length header"),
    ],
)
def test_bad_binary_bodies(mutate, expected):
    body, length = binary_body([("x", "FP32", [2], np.ones(2, np.float32).tobytes())])
    with pytest.raises(InvalidArgument, match=expected):
        decode_infer_body(*mutate(body, length))


def test_binary_data_size_must_be_an_integer():
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": "4"}}]
    }
    header = json.dumps(doc).encode()
    with pytest.raises(InvalidArgument, match="input 'x': parameters.binary_data_size must be"):
        decode_infer_body(header + b"\x00" * 4, str(len(header)).encode())


def split(body, length):
    return json.loads(body[:length]), body[length:]


def response():
    return InferenceResponse(
        model_name="m",
        outputs=[
            ResponseOutput(
                "a", [2], "FP32", np.array([1.5, np.nan], np.float32), Parameters(content_type="np")
            ),
            ResponseOutput("s", [2], "BYTES", ["x", b"\xff"]),
        ],
    )


def test_binary_data_output_sends_every_output_in_binary():
    payload = InferenceRequest(parameters=Parameters(binary_data_output=True))
    body, length = encode_infer_body(response(), payload)
    doc, rest = split(body, length)
    a, s = doc["outputs"]
    assert "data" not in a and "data" not in s
    assert a["parameters"] == {"content_type": "np", "binary_data_size": 8}
    assert s["parameters"] == {"binary_data_size": 10}
    assert rest == np.array([1.5, np.nan], np.float32).tobytes() + pack_bytes(["x", b"\xff"])


def test_per_output_binary_data_overrides_and_json_outputs_lose_parameters():
    payload = InferenceRequest(
        parameters=Parameters(binary_data_output=True),
        outputs=[RequestOutput("a", Parameters(binary_data=False)), RequestOutput("s")],
    )
    r = response()
    r.outputs[0].data = np.array([1.5, 2.0], np.float32)
    body, length = encode_infer_body(r, payload)
    doc, rest = split(body, length)
    a, s = doc["outputs"]
    assert a == {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2.0]}
    assert s["parameters"] == {"binary_data_size": 10} and rest == pack_bytes(["x", b"\xff"])


def test_plain_json_when_nothing_asks_for_binary():
    r = response()
    r.outputs = r.outputs[:1]
    r.outputs[0].data = np.array([1.5, 2.0], np.float32)
    body, length = encode_infer_body(r, InferenceRequest())
    assert length is None
    assert orjson.loads(body)["outputs"][0]["parameters"] == {"content_type": "np"}


RUNTIME = """
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Echo(MLModel):
    def predict(self, payload):
        outputs = [ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=i.data)
                   for i in payload.inputs]
        return InferenceResponse(model_name=self.name, outputs=outputs)

class Words(MLModel):
    async def predict_stream(self, payloads):
        async for payload in payloads:
            for word in payload.inputs[0].data:
                if word == "fail":
                    raise ValueError("cannot say fail")
                yield InferenceResponse(model_name=self.name, outputs=[
                    ResponseOutput(name="w", shape=[1], datatype="BYTES", data=[word])])
"""


@pytest.fixture
def stub(tmp_path):
    models = {
        "echo": {
            "implementation": "models.Echo",
            "max_batch_size": 8,
            "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1, 2]}],
            "outputs": [{"name": "x", "datatype": "BYTES", "shape": [-1, 2]}],
        },
        "words": {"implementation": "models.Words"},
    }
    for name, settings in models.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model-settings.json").write_text(json.dumps(dict(settings, name=name)))
        (folder / "models.py").write_text(textwrap.dedent(RUNTIME))
    registry = ModelRegistry(factory_for=lambda settings: LocalModelFactory())
    dataplane = DataPlane(registry=registry, repository=ModelRepository(str(tmp_path), environ={}))
    dataplane.load_all()
    return StubTreq(RestAPI(dataplane).app.resource())


def call(stub, method, path, body=None, headers=None):
    results = []
    d = stub.request(method, "http://v2d" + path, data=body, headers=headers or {})
    d.addCallback(lambda response: stub.content(response).addCallback(lambda content: (response, content)))
    d.addBoth(results.append)
    stub.flush()
    response, content = results[0]
    return response.code, content, response.headers


def test_binary_roundtrip_through_the_app(stub):
    values = np.array([1, 2, 3, 4], np.uint16)
    body, length = binary_body(
        [("x", "UINT16", [2, 2], values.tobytes())], parameters={"binary_data_output": True}
    )
    code, content, headers = call(
        stub, "POST", "/v2/models/echo/infer", body, {"Inference-Header-Content-Length": length}
    )
    assert code == 200
    n = int(headers.getRawHeaders("inference-header-content-length")[0])
    doc, rest = split(content, n)
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert rest == values.tobytes()
    assert headers.getRawHeaders("content-type") == ["application/octet-stream"]


def test_bad_binary_request_is_400(stub):
    code, content, _ = call(
        stub, "POST", "/v2/models/echo/infer", b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}
    )
    assert code == 400 and b"Inference-Header-Content-Length is 99" in content


def test_model_config_route(stub):
    code, content, _ = call(stub, "GET", "/v2/models/echo/config")
    config = json.loads(content)
    assert code == 200
    assert config["max_batch_size"] == 8
    assert config["input"][0] == {
        "name": "x",
        "data_type": "TYPE_STRING",
        "format": "FORMAT_NONE",
        "dims": [2],
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }
    assert call(stub, "GET", "/v2/models/nope/config")[0] == 404
    assert json.loads(call(stub, "GET", "/v2/models/words/config")[1])["input"] == []


def call_on_a_loop(stub, method, path, body=None):
    """``call`` for handlers that run coroutines: on a private asyncio loop, flushed until done."""

    async def main():
        results = []
        d = stub.request(method, "http://v2d" + path, data=body)
        d.addCallback(
            lambda response: stub.content(response).addCallback(lambda content: (response, content))
        )
        d.addBoth(results.append)
        for _ in range(2000):
            stub.flush()
            if results:
                break
            await asyncio.sleep(0.001)
        response, content = results[0]
        return response.code, content, response.headers

    return asyncio.run(main())


def sse_events(content):
    events = []
    for block in content.decode().strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


def stream_body(words):
    return json.dumps(
        {"inputs": [{"name": "w", "datatype": "BYTES", "shape": [len(words)], "data": words}]}
    ).encode()


def test_infer_stream_sends_server_sent_events(stub):
    code, content, headers = call_on_a_loop(
        stub, "POST", "/v2/models/words/infer_stream", stream_body(["a", "b"])
    )
    assert code == 200 and headers.getRawHeaders("content-type") == ["text/event-stream"]
    events = sse_events(content)
    assert [(e, d["outputs"][0]["data"]) for e, d in events] == [("message", ["a"]), ("message", ["b"])]
    assert events[0][1]["model_name"] == "words"


def test_infer_stream_errors(stub):
    code, content, _ = call_on_a_loop(
        stub, "POST", "/v2/models/words/infer_stream", stream_body(["a", "fail"])
    )
    events = sse_events(content)
    # the same message as a single request whose predict() raised it (and as over gRPC)
    assert code == 200 and events[-1] == ("error", {"error": "ValueError: cannot say fail"})
    code, content, _ = call_on_a_loop(stub, "POST", "/v2/models/echo/infer_stream", stream_body(["a"]))
    assert code == 400 and b"does not implement predict_stream" in content
    code, content, _ = call_on_a_loop(stub, "POST", "/v2/models/words/infer_stream", stream_body(["fail"]))
    assert code == 500 and b"cannot say fail" in content


def test_json_uint64_values_above_int64_range_are_exact():
    # Also the JSON path (no header): numpy alone would read this list as float64.
    body = json.dumps(
        {"inputs": [{"name": "u", "datatype": "UINT64", "shape": [3], "data": [0, 2**64 - 1, 1]}]}
    )
    assert decode_infer_body(body.encode(), None).inputs[0].data.tolist() == [0, 2**64 - 1, 1]
    body = json.dumps(
        {"inputs": [{"name": "u", "datatype": "UINT64", "shape": [2], "data": [-1, 2**64 - 1]}]}
    )
    with pytest.raises(InvalidArgument, match="out of range for datatype UINT64"):
        decode_infer_body(body.encode(), None)
