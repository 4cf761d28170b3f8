"""Unit tests of the input codecs: numpy, string, base64 and datetime."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import List

import numpy as np
import pytest

from v2d.codecs import (
    Base64Codec,
    CodecError,
    DatetimeCodec,
    NumpyCodec,
    NumpyRequestCodec,
    StringCodec,
    StringRequestCodec,
)
from v2d.errors import InferenceError
from v2d.types import DATATYPES, InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

NUMERIC = [name for name, dtype in DATATYPES.items() if dtype is not None]


def _sample(datatype: str) -> np.ndarray:
    """A 2x3 array of ``datatype`` reaching both ends of its range."""
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, info.min + 1]], dtype=dtype)
    info = np.finfo(dtype)
    return np.array([[np.nan, np.inf, -np.inf], [info.max, info.tiny, -0.0]], dtype=dtype)


def _assert_bit_exact(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


# -- NumpyCodec ------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numpy_round_trip_every_datatype(datatype: str) -> None:
    array = _sample(datatype)
    output = NumpyCodec.encode_output("y", array)
    assert output.datatype == datatype
    assert output.shape == [2, 3]
    assert output.parameters.content_type == "np"
    _assert_bit_exact(NumpyCodec.decode_output(output), array)
    request_input = NumpyCodec.encode_input("x", array)
    assert (request_input.name, request_input.datatype, request_input.shape) == ("x", datatype, [2, 3])
    assert request_input.parameters.content_type == "np"
    _assert_bit_exact(NumpyCodec.decode_input(request_input), array)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numpy_decode_from_plain_list(datatype: str) -> None:
    array = _sample(datatype)
    if array.dtype.kind == "f":
        array = array[np.isfinite(array)].reshape(-1)[:2].reshape(1, 2)
    request_input = RequestInput(
        name="x", shape=list(array.shape), datatype=datatype, data=array.ravel().tolist()
    )
    decoded = NumpyCodec.decode_input(request_input)
    _assert_bit_exact(decoded, array.astype(DATATYPES[datatype]))


def test_numpy_decode_keeps_nan_payload_bits() -> None:
    # A signalling NaN and a NaN with payload bits survive: nothing goes through Python floats.
    bits = np.array([0x7FA00001, 0xFFC12345, 0x7F800000], dtype="<u4")
    data = bits.view("<f4")
    request_input = RequestInput(name="x", shape=[3], datatype="FP32", data=data)
    decoded = NumpyCodec.decode_input(request_input)
    assert decoded.view("<u4").tolist() == bits.tolist()
    out = NumpyCodec.encode_output("y", decoded)
    assert np.asarray(out.data).view("<u4").ravel().tolist() == bits.tolist()


def test_numpy_fp16_bit_exact() -> None:
    every_half = np.arange(0, 2**16, dtype="<u2").view("<f2")
    request_input = RequestInput(name="x", shape=[2**16], datatype="FP16", data=every_half)
    decoded = NumpyCodec.decode_input(request_input)
    assert decoded.view("<u2").tobytes() == every_half.view("<u2").tobytes()
    encoded = NumpyCodec.encode_output("y", decoded)
    assert encoded.datatype == "FP16"
    assert np.asarray(encoded.data).tobytes() == every_half.tobytes()


def test_numpy_decode_does_not_copy_a_matching_array() -> None:
    data = np.arange(6, dtype="<f4").reshape(2, 3)
    decoded = NumpyCodec.decode_input(RequestInput(name="x", shape=[2, 3], datatype="FP32", data=data))
    assert decoded is data


def test_numpy_decode_reshapes_flat_data() -> None:
    data = np.arange(6, dtype="<i8")
    decoded = NumpyCodec.decode_input(RequestInput(name="x", shape=[3, 2], datatype="INT64", data=data))
    assert decoded.shape == (3, 2)
    assert decoded.tolist() == [[0, 1], [2, 3], [4, 5]]


def test_numpy_decode_hand_built_request() -> None:
    decoded = NumpyCodec.decode_input(RequestInput(name="x", shape=[3], datatype="FP32", data=[1, 2, 3]))
    assert decoded.dtype == np.float32
    assert decoded.tolist() == [1.0, 2.0, 3.0]


def test_numpy_decode_nested_list() -> None:
    decoded = NumpyCodec.decode_input(
        RequestInput(name="x", shape=[2, 2], datatype="INT32", data=[[1, 2], [3, 4]])
    )
    assert decoded.dtype == np.int32
    assert decoded.tolist() == [[1, 2], [3, 4]]


def test_numpy_decode_size_mismatch_names_the_input() -> None:
    with pytest.raises(InferenceError, match="input 'x'.*3 elements.*\\[2, 2\\]"):
        NumpyCodec.decode_input(RequestInput(name="x", shape=[2, 2], datatype="FP32", data=[1, 2, 3]))


def test_numpy_decode_non_numeric_names_the_input() -> None:
    with pytest.raises(InferenceError, match="input 'x'.*FP32"):
        NumpyCodec.decode_input(RequestInput(name="x", shape=[2], datatype="FP32", data=["a", "b"]))


def test_numpy_decode_unknown_datatype() -> None:
    with pytest.raises(InferenceError, match="unknown datatype 'FP8'"):
        NumpyCodec.decode_input(RequestInput(name="x", shape=[1], datatype="FP8", data=[1]))


def test_numpy_one_dimensional_arrays_get_a_batch_dimension() -> None:
    # As MLServer: [N] is sent as [N, 1]; a scalar as [1].
    out = NumpyCodec.encode_output("y", np.array([1.5, 2.5]))
    assert out.shape == [2, 1]
    assert out.data.shape == (2, 1)
    scalar = NumpyCodec.encode_output("y", np.array(7, dtype=np.int16))
    assert (scalar.shape, scalar.datatype, np.asarray(scalar.data).ravel().tolist()) == ([1], "INT16", [7])


def test_numpy_encode_big_endian_becomes_little_endian() -> None:
    array = np.array([[1.0, -2.0]], dtype=">f8")
    out = NumpyCodec.encode_output("y", array)
    assert out.datatype == "FP64"
    assert out.data.dtype == np.dtype("<f8")
    assert out.data.tolist() == [[1.0, -2.0]]


def test_numpy_encode_unsupported_dtype() -> None:
    with pytest.raises(CodecError, match="complex"):
        NumpyCodec.encode_output("y", np.array([1 + 2j]))


def test_numpy_bytes_tensor_decodes_to_object_array() -> None:
    request_input = RequestInput(name="x", shape=[2, 2], datatype="BYTES", data=[b"a", "b", b"\xff", ""])
    decoded = NumpyCodec.decode_input(request_input)
    assert decoded.dtype == object
    assert decoded.shape == (2, 2)
    assert decoded.tolist() == [[b"a", "b"], [b"\xff", ""]]


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array(["héllo", "wörld"]), [b"h\xc3\xa9llo", b"w\xc3\xb6rld"]),
        (np.array([b"ab", b"\x00c"]), [b"ab", b"\x00c"]),
        (np.array(["x", b"\xfe"], dtype=object), [b"x", b"\xfe"]),
    ],
)
def test_numpy_text_arrays_encode_to_bytes(array: np.ndarray, expected: List[bytes]) -> None:
    out = NumpyCodec.encode_output("y", array)
    assert out.datatype == "BYTES"
    assert out.shape == [2, 1]
    assert out.data == expected


def test_numpy_object_array_with_other_items_fails() -> None:
    with pytest.raises(CodecError, match="int"):
        NumpyCodec.encode_output("y", np.array([1, "a"], dtype=object))


def test_numpy_can_encode() -> None:
    assert NumpyCodec.can_encode(np.zeros(2))
    assert not NumpyCodec.can_encode([1.0, 2.0])
    assert NumpyCodec.TypeHint is np.ndarray


def test_numpy_request_codec() -> None:
    array = np.arange(4, dtype=np.uint16).reshape(2, 2)
    request = NumpyRequestCodec.encode_request(array)
    assert isinstance(request, InferenceRequest)
    assert [i.name for i in request.inputs] == ["input-1"]
    _assert_bit_exact(NumpyRequestCodec.decode_request(request), array)
    response = NumpyRequestCodec.encode_response("m", array, "2")
    assert isinstance(response, InferenceResponse)
    assert (response.model_name, response.model_version) == ("m", "2")
    assert [o.name for o in response.outputs] == ["output-1"]
    _assert_bit_exact(NumpyRequestCodec.decode_response(response), array)
    assert NumpyRequestCodec.can_encode(array)
    assert not NumpyRequestCodec.can_encode(["a"])


def test_numpy_request_codec_needs_one_input() -> None:
    two = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[1], datatype="FP32", data=[1]),
            RequestInput(name="b", shape=[1], datatype="FP32", data=[1]),
        ]
    )
    with pytest.raises(InferenceError, match="exactly one input.*got 2"):
        NumpyRequestCodec.decode_request(two)


# -- StringCodec -----------------------------------------------------------------------

TEXTS = ["hello", "", "héllo wörld", "日本語", "emoji 😁", "nul\x00inside", "line\nbreak"]


def test_string_round_trip_unicode() -> None:
    out = StringCodec.encode_output("s", TEXTS)
    assert out.datatype == "BYTES"
    assert out.shape == [len(TEXTS), 1]
    assert out.parameters.content_type == "str"
    assert out.data == [t.encode("utf-8") for t in TEXTS]
    assert StringCodec.decode_output(out) == TEXTS
    request_input = StringCodec.encode_input("s", TEXTS)
    assert request_input.parameters.content_type == "str"
    assert StringCodec.decode_input(request_input) == TEXTS


def test_string_use_bytes_false_keeps_str() -> None:
    out = StringCodec.encode_output("s", TEXTS, use_bytes=False)
    assert out.data == TEXTS
    assert StringCodec.decode_output(out) == TEXTS


def test_string_decode_accepts_bytes_and_str_items() -> None:
    request_input = RequestInput(
        name="s", shape=[3], datatype="BYTES", data=[b"caf\xc3\xa9", "tea", bytearray(b"x")]
    )
    assert StringCodec.decode_input(request_input) == ["café", "tea", "x"]


def test_string_decode_numpy_and_nested_data() -> None:
    nested = RequestInput(name="s", shape=[2, 1], datatype="BYTES", data=[["a"], [b"b"]])
    assert StringCodec.decode_input(nested) == ["a", "b"]
    array = RequestInput(name="s", shape=[2], datatype="BYTES", data=np.array(["a", "b"], dtype=object))
    assert StringCodec.decode_input(array) == ["a", "b"]


def test_string_decode_invalid_utf8() -> None:
    with pytest.raises(InferenceError, match="input 's'.*UTF-8"):
        StringCodec.decode_input(RequestInput(name="s", shape=[1], datatype="BYTES", data=[b"\xff\xfe"]))


def test_string_decode_needs_bytes_tensor() -> None:
    with pytest.raises(InferenceError, match="input 's'.*BYTES.*FP32"):
        StringCodec.decode_input(RequestInput(name="s", shape=[1], datatype="FP32", data=[1.0]))


def test_string_encode_rejects_non_str_items() -> None:
    with pytest.raises(CodecError, match="output 's'.*bytes item"):
        StringCodec.encode_output("s", ["a", b"b"])
    with pytest.raises(CodecError, match="output 's'.*list of str"):
        StringCodec.encode_output("s", "abc")


def test_string_can_encode() -> None:
    assert StringCodec.can_encode(["a", "b"])
    assert not StringCodec.can_encode(["a", b"b"])
    assert not StringCodec.can_encode("ab")
    assert not StringCodec.can_encode(np.array(["a"]))


def test_string_request_codec() -> None:
    request = StringRequestCodec.encode_request(["a", "é"])
    assert request.inputs[0].name == "input-1"
    assert StringRequestCodec.decode_request(request) == ["a", "é"]
    response = StringRequestCodec.encode_response("m", ["x"])
    assert response.outputs[0].name == "output-1"
    assert response.outputs[0].data == [b"x"]
    assert StringRequestCodec.decode_response(response) == ["x"]


# -- Base64Codec -----------------------------------------------------------------------

BLOBS = [b"", b"\x00\x01\x02", bytes(range(256)), b"\xff\xfe not utf-8 \x80", "é".encode("latin-1")]


def test_base64_round_trip_binary() -> None:
    out = Base64Codec.encode_output("b", BLOBS)
    assert out.datatype == "BYTES"
    assert out.shape == [len(BLOBS), 1]
    assert out.parameters.content_type == "base64"
    for item in out.data:
        assert isinstance(item, bytes)
        item.decode("ascii")  # base64 text
    assert Base64Codec.decode_output(out) == BLOBS
    request_input = Base64Codec.encode_input("b", BLOBS)
    assert Base64Codec.decode_input(request_input) == BLOBS


def test_base64_use_bytes_false_gives_text() -> None:
    out = Base64Codec.encode_output("b", [b"\xff\x00"], use_bytes=False)
    assert out.data == ["/wA="]
    assert Base64Codec.decode_output(out) == [b"\xff\x00"]


def test_base64_decode_accepts_str_items_from_json() -> None:
    request_input = RequestInput(name="b", shape=[2], datatype="BYTES", data=["aGVsbG8=", b"/wA="])
    assert Base64Codec.decode_input(request_input) == [b"hello", b"\xff\x00"]


def test_base64_decode_rejects_invalid_text() -> None:
    with pytest.raises(InferenceError, match="input 'b'.*not valid base64"):
        Base64Codec.decode_input(RequestInput(name="b", shape=[1], datatype="BYTES", data=["not base64!"]))
    with pytest.raises(InferenceError, match="input 'b'"):
        Base64Codec.decode_input(RequestInput(name="b", shape=[1], datatype="BYTES", data=["ünïcode"]))


def test_base64_can_encode() -> None:
    assert Base64Codec.can_encode([b"a"])
    assert not Base64Codec.can_encode(["a"])
    assert Base64Codec.TypeHint == List[bytes]


# -- DatetimeCodec ---------------------------------------------------------------------

MOMENTS = [
    datetime(2024, 2, 29, 12, 30, 15, 123456),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
    datetime(2021, 6, 1, 8, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=-8))),
]


def test_datetime_round_trip_with_time_zones() -> None:
    out = DatetimeCodec.encode_output("t", MOMENTS)
    assert out.datatype == "BYTES"
    assert out.shape == [len(MOMENTS), 1]
    assert out.parameters.content_type == "datetime"
    assert out.data[1] == b"1999-12-31T23:59:59+00:00"
    decoded = DatetimeCodec.decode_output(out)
    assert decoded == MOMENTS
    assert [d.utcoffset() for d in decoded] == [m.utcoffset() for m in MOMENTS]
    assert DatetimeCodec.decode_input(DatetimeCodec.encode_input("t", MOMENTS)) == MOMENTS


def test_datetime_decode_str_items_and_z_suffix() -> None:
    request_input = RequestInput(
        name="t",
        shape=[3],
        datatype="BYTES",
        data=["2024-01-02T03:04:05Z", b"2024-01-02", "2024-01-02T03:04:05.5+02:00"],
    )
    decoded = DatetimeCodec.decode_input(request_input)
    assert decoded[0] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert decoded[1] == datetime(2024, 1, 2)
    assert decoded[2] == datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone(timedelta(hours=2)))


def test_datetime_decode_invalid() -> None:
    with pytest.raises(InferenceError, match="input 't'.*'yesterday'"):
        DatetimeCodec.decode_input(RequestInput(name="t", shape=[1], datatype="BYTES", data=["yesterday"]))


def test_datetime_encode_rejects_other_items() -> None:
    with pytest.raises(CodecError, match="output 't'.*date item"):
        DatetimeCodec.encode_output("t", [date(2024, 1, 1)])


def test_datetime_can_encode() -> None:
    assert DatetimeCodec.can_encode(MOMENTS)
    assert not DatetimeCodec.can_encode(["2024-01-01"])


def test_deprecated_names_still_work() -> None:
    out = StringCodec.encode("s", ["a"])
    assert isinstance(out, ResponseOutput)
    assert StringCodec.decode(RequestInput(name="s", shape=[1], datatype="BYTES", data=[b"a"])) == ["a"]


def test_datetime_decode_any_fraction_length_and_space_separator() -> None:
    request_input = RequestInput(
        name="t",
        shape=[3],
        datatype="BYTES",
        data=["2024-01-02T03:04:05.123456789+00:00", "2024-01-02 03:04:05.25", "2024-01-02T03:04:05,1"],
    )
    decoded = DatetimeCodec.decode_input(request_input)
    assert decoded[0] == datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    assert decoded[1] == datetime(2024, 1, 2, 3, 4, 5, 250000)
    assert decoded[2] == datetime(2024, 1, 2, 3, 4, 5, 100000)
