"""Protobuf <-> v2d.types conversion (v2d.grpc._convert): no server, no reactor."""

from __future__ import annotations

import numpy as np
import pytest

from v2d.errors import Internal, InvalidArgument
from v2d.grpc._convert import (
    decode_infer_request,
    decode_parameters,
    encode_infer_response,
    metadata_headers,
    response_metadata,
    serialize_infer_response,
)
from v2d.grpc._messages import pb
from v2d.tensors import pack_bytes
from v2d.types import DATATYPES, DECODED_PARAMETER, InferenceResponse, Parameters, ResponseOutput

NUMERIC = [d for d, dtype in DATATYPES.items() if dtype is not None]


def sample(datatype, n=6):
    """Values that use each type's extremes (NaN and infinities for floats)."""
    dtype = DATATYPES[datatype]
    if dtype.kind == "b":
        return np.array([True, False, True, True, False, False][:n])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1][:n], dtype=dtype)
    info = np.finfo(dtype)
    return np.array([np.nan, np.inf, -np.inf, info.max, info.tiny, -0.0][:n], dtype=dtype)


def raw_request(*tensors, model="m"):
    message = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in tensors:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(raw)
    return message


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_inputs_are_bit_exact(datatype):
    values = sample(datatype).reshape(2, 3)
    name, version, request, raw = decode_infer_request(raw_request(("x", datatype, [2, 3], values.tobytes())))
    assert (name, version, raw) == ("m", None, True)
    got = request.inputs[0].data
    assert got.dtype == DATATYPES[datatype] and got.shape == (2, 3)
    assert got.tobytes() == values.tobytes()


def test_raw_bytes_input():
    items = [b"", b"\x00\xff", "é".encode()]
    _, _, request, _ = decode_infer_request(raw_request(("s", "BYTES", [3], pack_bytes(items))))
    assert request.inputs[0].data == items


@pytest.mark.parametrize("datatype", [d for d in NUMERIC if d != "FP16"])
def test_typed_inputs_are_bit_exact(datatype):
    from v2d.grpc._convert import TYPED_FIELD

    values = sample(datatype)
    message = pb.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=[6])
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(values.tolist())
    _, _, request, raw = decode_infer_request(message)
    assert raw is False
    assert request.inputs[0].data.tobytes() == values.tobytes()


def test_typed_bytes_input():
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"\xff"])
    assert decode_infer_request(message)[2].inputs[0].data == [b"a", b"\xff"]


def error_of(message):
    with pytest.raises(InvalidArgument) as info:
        decode_infer_request(message)
    return str(info.value)


def test_mixing_raw_and_typed_is_refused():
    message = raw_request(("a", "INT32", [1], b"\x01\x00\x00\x00"), ("b", "INT32", [1], b"\x02\x00\x00\x00"))
    message.inputs[1].contents.int_contents.append(2)
    assert "inputs[1] ('b').contents must not be set" in error_of(message)


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda m: None, "model_name is required"),
        (lambda m: m.inputs.add(name="", datatype="FP32", shape=[1]), "inputs[0].name is required"),
        (
            lambda m: m.inputs.add(name="x", datatype="FP8", shape=[1]),
            "inputs[0] ('x').datatype: unknown datatype",
        ),
        (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[-1]), "inputs[0] ('x'): shape"),
        (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[2]), "inputs[0] ('x'): no data"),
        (
            lambda m: m.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1),
            "FP16 has no typed contents",
        ),
        (
            lambda m: m.inputs.add(name="x", datatype="FP32", shape=[1]).contents.int_contents.append(1),
            "contents.int_contents given for datatype FP32",
        ),
        (
            lambda m: m.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300),
            "out of range for datatype INT8",
        ),
        (
            lambda m: m.inputs.add(name="x", datatype="INT32", shape=[3]).contents.int_contents.extend(
                [1, 2]
            ),
            "has 2 elements but shape [3] needs 3",
        ),
        (lambda m: m.outputs.add(name=""), "outputs[0].name is required"),
    ],
)
def test_bad_requests_name_the_field(build, expected):
    message = pb.ModelInferRequest(model_name="m")
    if expected == "model_name is required":
        message.model_name = ""
    build(message)
    assert expected in error_of(message)


def test_raw_count_and_size_mismatches():
    message = raw_request(("a", "FP32", [2], b"\x00" * 8))
    message.inputs.add(name="b", datatype="FP32", shape=[1])
    assert "raw_input_contents has 1 entries but there are 2 inputs" in error_of(message)
    assert "raw_input_contents[0]: raw data has 4 bytes" in error_of(
        raw_request(("a", "FP32", [2], b"\x00" * 4))
    )
    assert "raw_input_contents[0]" in error_of(raw_request(("s", "BYTES", [1], b"\x09\x00\x00\x00ab")))


def test_all_parameter_kinds_decode():
    message = pb.ModelInferRequest(model_name="m", id="r1")
    message.parameters["b"].bool_param = True
    message.parameters["i"].int64_param = -(2**63)
    message.parameters["u"].uint64_param = 2**64 - 1
    message.parameters["d"].double_param = 0.1
    message.parameters["s"].string_param = "text"
    message.parameters["unset"].SetInParent()
    tensor = message.inputs.add(name="x", datatype="INT32", shape=[1])
    tensor.contents.int_contents.append(5)
    tensor.parameters["content_type"].string_param = "np"
    message.outputs.add(name="y").parameters["binary_data"].bool_param = False
    _, _, request, _ = decode_infer_request(message)
    assert request.id == "r1"
    assert request.parameters.to_dict() == {"b": True, "i": -(2**63), "u": 2**64 - 1, "d": 0.1, "s": "text"}
    assert request.inputs[0].parameters.content_type == "np"
    assert request.outputs[0].name == "y" and request.outputs[0].parameters.get("binary_data") is False
    assert decode_parameters(message.parameters)["d"] == 0.1


def test_a_headers_parameter_is_refused():
    message = pb.ModelInferRequest(model_name="m")
    message.parameters["headers"].string_param = "x"
    assert "parameters['headers'] is reserved" in error_of(message)


def test_all_parameter_kinds_encode():
    response = InferenceResponse(
        model_name="m",
        model_version="2",
        id="r1",
        parameters=Parameters(
            headers={"x-a": "1"}, b=True, i=-5, big=2**64 - 1, d=2.5, s="t", np_int=np.int32(3), lst=[1, 2]
        ),
        outputs=[ResponseOutput("y", [1], "INT32", np.array([7], np.int32), Parameters(content_type="np"))],
    )
    message = encode_infer_response(response, raw=False)
    params = {
        k: (v.WhichOneof("parameter_choice"), getattr(v, v.WhichOneof("parameter_choice")))
        for k, v in message.parameters.items()
    }
    assert params == {
        "b": ("bool_param", True),
        "i": ("int64_param", -5),
        "big": ("uint64_param", 2**64 - 1),
        "d": ("double_param", 2.5),
        "s": ("string_param", "t"),
        "np_int": ("int64_param", 3),
        "lst": ("string_param", "[1, 2]"),
    }
    assert (message.model_name, message.model_version, message.id) == ("m", "2", "r1")
    assert message.outputs[0].parameters["content_type"].string_param == "np"


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_outputs_are_bit_exact(datatype):
    values = sample(datatype).reshape(3, 2)
    response = InferenceResponse("m", outputs=[ResponseOutput("y", [3, 2], datatype, values)])
    message = encode_infer_response(response, raw=True)
    assert list(message.outputs[0].shape) == [3, 2]
    assert message.raw_output_contents[0] == values.tobytes()
    assert not message.outputs[0].HasField("contents")


def test_typed_outputs_unless_fp16():
    response = InferenceResponse(
        "m",
        outputs=[
            ResponseOutput("a", [2], "INT16", np.array([-3, 4], np.int16)),
            ResponseOutput("s", [2], "BYTES", ["é", b"\xff"]),
        ],
    )
    message = encode_infer_response(response, raw=False)
    assert list(message.outputs[0].contents.int_contents) == [-3, 4]
    assert list(message.outputs[1].contents.bytes_contents) == ["é".encode(), b"\xff"]
    assert len(message.raw_output_contents) == 0
    response.outputs.append(ResponseOutput("h", [1], "FP16", np.array([1.5], np.float16)))
    message = encode_infer_response(response, raw=False)
    assert len(message.raw_output_contents) == 3
    assert message.raw_output_contents[1] == pack_bytes(["é", b"\xff"])
    assert not any(o.HasField("contents") for o in message.outputs)


def test_output_shape_mismatch_is_internal():
    response = InferenceResponse("m", outputs=[ResponseOutput("y", [3], "FP32", np.zeros(2, np.float32))])
    with pytest.raises(Internal, match="output 'y' with 2 elements for shape"):
        encode_infer_response(response, raw=True)


def test_metadata_to_headers_and_back():
    headers = metadata_headers(
        [
            ("X-Request-Id", "a"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("bin-bin", b"\x00\xff"),
            ("te", "trailers"),
        ]
    )
    assert headers["x-request-id"] == "a" and headers["X-Request-ID"] == "a"
    assert headers["x-multi"] == "1, 2"
    assert headers["bin-bin"] == "\x00\xff"
    assert "te" not in headers
    assert response_metadata({"X-Out": 5, "grpc-status": "0", "data-bin": b"\x01", "content-type": "x"}) == [
        ("x-out", "5"),
        ("data-bin", b"\x01"),
    ]


def test_serialized_response_matches_the_message_and_copies_outputs_once():
    from v2d.grpc._convert import encode_infer_response, serialize_infer_response

    big = np.arange(300_000, dtype=np.float32)  # a length that needs a 3-byte varint
    response = InferenceResponse(
        model_name="m",
        id="7",
        parameters=Parameters(tag="x"),
        outputs=[
            ResponseOutput(name="a", shape=[300_000], datatype="FP32", data=big),
            ResponseOutput(name="b", shape=[2], datatype="BYTES", data=[b"x", b"yz"]),
            ResponseOutput(name="c", shape=[1], datatype="FP16", data=np.ones(1, np.float16)),
        ],
    )
    for raw in (True, False):
        wire = serialize_infer_response(response, raw)
        parsed = pb.ModelInferResponse.FromString(wire)
        assert parsed == encode_infer_response(response, raw)
        assert parsed.raw_output_contents[0] == big.tobytes()


def test_split_requests_keep_raw_contents_in_place():
    from google.protobuf.message import DecodeError

    from v2d.grpc._convert import decode_infer_request, split_infer_request

    x = np.arange(100_000, dtype=np.float32)
    message = pb.ModelInferRequest(model_name="m", id="1")
    message.parameters["k"].string_param = "v"
    for name in ("a", "b"):
        message.inputs.add(name=name, datatype="FP32", shape=[100_000])
        message.raw_input_contents.append(x.tobytes())
    wire = message.SerializeToString()
    split = split_infer_request(pb.ModelInferRequest, wire)
    assert len(split.message.raw_input_contents) == 0 and len(split.raw_contents) == 2
    whole = decode_infer_request(message)
    parts = decode_infer_request(split.message, raw_contents=split.raw_contents)
    assert whole[:2] == parts[:2] and whole[3] == parts[3] is True
    for a, b in zip(whole[2].inputs, parts[2].inputs):
        assert a.name == b.name and np.array_equal(a.data, b.data)
    assert np.shares_memory(parts[2].inputs[0].data, np.frombuffer(wire, dtype=np.uint8))
    with pytest.raises(DecodeError):
        split_infer_request(pb.ModelInferRequest, wire[:-10])


def _responses_alike_but_for_one_thing():
    """Responses that differ in one detail of their outputs' or head's fields, one after another."""
    y = np.arange(4, dtype=np.float32)

    def response(params=None, name="y", shape=(4,), datatype="FP32", data=y, **head):
        output = ResponseOutput(name=name, shape=list(shape), datatype=datatype, data=data, parameters=params)
        return InferenceResponse(**{"model_name": "m", "model_version": "1", **head}, outputs=[output])

    return [
        response(),
        response(),  # the same again: from the pieces kept
        response(Parameters(content_type="np")),
        response(Parameters(content_type="np")),
        response(Parameters(content_type="pd")),
        response(Parameters(content_type="np", x=None)),  # None values are not sent
        response(Parameters(x=None)),
        response(Parameters(tag="a", content_type="np")),  # the same items in another order
        response(Parameters(content_type="np", **{DECODED_PARAMETER: object()})),  # never sent
        response(Parameters(flag=True)),
        response(Parameters(flag=1)),  # equal to True, not the same on the wire
        response(Parameters(flag=2**63)),  # uint64
        response(Parameters(flag="1")),
        response(Parameters(x=0.0)),
        response(Parameters(x=-0.0)),  # equal to 0.0, not the same on the wire
        response(Parameters(x=np.float32(1.5))),
        response(Parameters(x=[1, 2])),  # unhashable: sent as JSON text
        response(Parameters(x={"a": 1})),
        response(name="z"),
        response(shape=(2, 2)),
        response(shape=(4, 1)),
        response(datatype="INT32", data=y.astype(np.int32)),
        response(datatype="BYTES", shape=(2,), data=[b"a", b"bc"]),
        response(datatype="FP16", data=y.astype(np.float16)),
        response(model_version=None),
        response(model_version=""),
        response(model_name="n"),
        response(id="7"),
        response(parameters=Parameters(tag="x")),
        response(parameters=Parameters(tag="x", headers={"x-a": "1"})),
        InferenceResponse(model_name="m", outputs=[]),
        InferenceResponse(
            model_name="m", outputs=[ResponseOutput(name="y", shape=[4], datatype="FP32", data=y)] * 2
        ),
    ]


@pytest.mark.parametrize("raw", [True, False])
def test_serialized_responses_are_protobufs_own_bytes(raw):
    """Byte for byte what protobuf gives for the whole message, whatever was serialized before."""
    for _ in range(2):
        for response in _responses_alike_but_for_one_thing():
            expected = encode_infer_response(response, raw).SerializeToString()
            assert serialize_infer_response(response, raw) == expected, response


def test_outputs_written_to_regions_serialize_as_protobuf_does():
    from v2d.shm import WrittenToRegion

    written = ResponseOutput(name="y", shape=[4], datatype="FP32", data=WrittenToRegion("r", 16))
    response = InferenceResponse(model_name="m", outputs=[written])
    for raw in (True, False, True):
        assert (
            serialize_infer_response(response, raw)
            == encode_infer_response(response, raw).SerializeToString()
        )


def test_the_pieces_kept_are_bounded(monkeypatch):
    from v2d.grpc import _convert

    monkeypatch.setattr(_convert, "MOST_PIECES", 3)
    monkeypatch.setattr(_convert, "_PIECES", {})
    y = np.arange(4, dtype=np.float32)
    for i in range(10):
        output = ResponseOutput(name=f"y{i}", shape=[4], datatype="FP32", data=y)
        response = InferenceResponse(model_name="m", outputs=[output])
        assert (
            serialize_infer_response(response, True)
            == encode_infer_response(response, True).SerializeToString()
        )
        assert len(_convert._PIECES) <= 3


@pytest.mark.parametrize(
    "response",
    [
        InferenceResponse(model_name="m", parameters=Parameters(bad=object()), outputs=[]),
        InferenceResponse(
            model_name="m",
            outputs=[
                ResponseOutput(
                    name="y", shape=[1], datatype="FP32", data=[1.0], parameters=Parameters(b=object())
                )
            ],
        ),
        InferenceResponse(
            model_name="m", outputs=[ResponseOutput(name="y", shape=[3], datatype="FP32", data=[1.0])]
        ),
    ],
)
def test_serializing_fails_as_building_the_message_does(response):
    with pytest.raises(Internal) as built:
        encode_infer_response(response, True)
    for _ in range(2):
        with pytest.raises(Internal) as serialized:
            serialize_infer_response(response, True)
        assert str(serialized.value) == str(built.value)


def test_metadata_headers_are_a_header_dict():
    from v2d.types import HeaderDict

    headers = metadata_headers(
        [("X-Id", "1"), ("x-id", "2"), ("user-agent", "u"), (":path", "/p"), ("te", "t")]
    )
    assert type(headers) is HeaderDict and headers == {"x-id": "1, 2", "user-agent": "u"}
    assert headers["X-ID"] == "1, 2" and "User-Agent" in headers
    assert type(metadata_headers(None)) is HeaderDict and metadata_headers(()) == {}


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2_097_152])
def test_raw_output_entries_are_framed_as_protobuf_frames_them(n):
    from v2d.grpc._convert import _RAW_OUTPUT_TAG, _varint

    message = pb.ModelInferResponse()
    message.raw_output_contents.append(b"x" * n)
    assert _RAW_OUTPUT_TAG + _varint(n) + b"x" * n == message.SerializeToString()


@pytest.mark.parametrize(
    "inputs, outputs, error",
    [
        (["a"], [], None),
        (["a"], ["y"], None),
        (["a", "b"], ["y", "z"], None),
        (["a", "a"], [], "inputs[1].name: input 'a' is given more than once"),
        (["a"], ["y", "y"], "outputs[1].name: output 'y' is given more than once"),
    ],
)
def test_repeated_names_are_refused(inputs, outputs, error):
    message = raw_request(*[(name, "FP32", [1], b"\0\0\0\0") for name in inputs])
    for name in outputs:
        message.outputs.add(name=name)
    if error is None:
        decode_infer_request(message)
        return
    with pytest.raises(InvalidArgument) as e:
        decode_infer_request(message)
    assert str(e.value) == error
