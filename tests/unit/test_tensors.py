"""Tensor checks and conversions shared by the transports."""

from __future__ import annotations

import numpy as np
import pytest

from v2d.errors import Internal, InvalidArgument
from v2d.grpc._convert import encode_infer_response
from v2d.rest._json import response_dict
from v2d.tensors import (
    bytes_elements,
    decode_json_tensor,
    decode_raw_tensor,
    encode_raw_tensor,
    pack_bytes,
    prepare_output,
)
from v2d.types import DATATYPES, InferenceResponse, ResponseOutput


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "BYTES"])
def test_every_numeric_datatype_round_trips_raw_and_json(datatype):
    dtype = DATATYPES[datatype]
    values = (
        np.arange(6).astype(dtype).reshape(2, 3)
        if datatype != "BOOL"
        else np.array([[True, False, True], [False, False, True]])
    )
    raw = bytes(encode_raw_tensor(datatype, values))
    assert raw == values.astype(dtype).tobytes()
    back = decode_raw_tensor(datatype, [2, 3], raw, "x")
    assert back.dtype == dtype and np.array_equal(back, values)
    from_json = decode_json_tensor(datatype, [2, 3], values.tolist(), "x")
    assert from_json.dtype == dtype and np.array_equal(from_json, values)


def test_fp_special_values_are_bit_exact_raw():
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)
    raw = bytes(encode_raw_tensor("FP32", values))
    assert decode_raw_tensor("FP32", [5], raw, "x").tobytes() == values.tobytes()


def test_bytes_tensors():
    items = [b"", b"\x00\xff", "h\u00e9".encode()]
    raw = pack_bytes(items)
    assert bytes_elements(raw, "x") == items
    assert decode_raw_tensor("BYTES", [3], raw, "x") == items
    assert decode_json_tensor("BYTES", [1, 2], [["a", "b"]], "x") == ["a", "b"]


@pytest.mark.parametrize(
    "datatype,shape,data,fragment",
    [
        ("FP32", [3], [1, 2], "shape [3] needs 3"),
        ("FP32", [2], [1, "x"], "non-numeric"),
        ("FP32", [2], [[1], [1, 2]], "ragged"),
        ("INT8", [1], [128], "out of range"),
        ("UINT8", [1], [-1], "out of range"),
        ("INT64", [1], [0.5], "integers"),
        ("BOOL", [1], [2], "booleans"),
        ("BYTES", [1], [3], "strings"),
        ("FP8", [1], [1], "unknown datatype"),
        ("FP32", [1], "nope", "list of numbers"),
    ],
)
def test_json_errors_name_the_field(datatype, shape, data, fragment):
    with pytest.raises(InvalidArgument) as info:
        decode_json_tensor(datatype, shape, data, "input 'x'")
    assert fragment in str(info.value)
    assert "input 'x'" in str(info.value)


def test_raw_errors():
    with pytest.raises(InvalidArgument, match="needs 8"):
        decode_raw_tensor("FP32", [2], b"\x00" * 7, "x")
    with pytest.raises(InvalidArgument, match="overruns"):
        bytes_elements(b"\x05\x00\x00\x00ab", "x")
    with pytest.raises(InvalidArgument, match="0 or 1"):
        decode_raw_tensor("BOOL", [1], b"\x02", "x")


def test_raw_decoding_does_not_copy():
    buffer = bytearray(np.arange(4, dtype=np.float32).tobytes())
    arr = decode_raw_tensor("FP32", [4], buffer, "x")
    buffer[0:4] = np.float32(9).tobytes()
    assert arr[0] == 9


def test_an_output_without_datatype_or_shape_takes_them_from_its_data():
    datatype, shape, flat, numeric = prepare_output(
        ResponseOutput(name="y", shape=None, datatype="", data=np.zeros((2, 3), np.int16))
    )
    assert (datatype, shape, numeric, len(flat)) == ("INT16", [2, 3], True, 6)
    datatype, shape, flat, numeric = prepare_output(
        ResponseOutput(name="w", shape=None, datatype="BYTES", data=["a", "b"])
    )
    assert (datatype, shape, flat, numeric) == ("BYTES", [2], ["a", "b"], False)


@pytest.mark.parametrize(
    "datatype, shape, data, message",
    [
        ("FP8", [3], [1, 2, 3], "output 'y' has unknown datatype"),
        ("FP32", [3], [1, 2], "output 'y' with 2 elements for shape"),
        ("INT32", [1], ["x"], "output 'y': cannot convert"),
    ],
)
def test_a_bad_output_is_the_same_internal_error_over_rest_and_grpc(datatype, shape, data, message):
    output = ResponseOutput(name="y", shape=shape, datatype=datatype, data=data)
    with pytest.raises(Internal, match=message):
        prepare_output(output)
    response = InferenceResponse(model_name="m", outputs=[output])
    with pytest.raises(Internal, match=message):
        response_dict(response)
    with pytest.raises(Internal, match=message):
        encode_infer_response(response, raw=False)
