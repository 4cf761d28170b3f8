"""Unit tests of PandasCodec (the "pd" request content type)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import v2d
from v2d.codecs import CodecError, PandasCodec, find_request_codec
from v2d.errors import InferenceError
from v2d.types import InferenceRequest, InferenceResponse, Parameters, RequestInput

pd = pytest.importorskip("pandas")


def _frame() -> "pd.DataFrame":
    return pd.DataFrame(
        {
            "a": np.array([1.5, np.nan, -np.inf], dtype=np.float32),
            "b": np.array([1, 2, 3], dtype=np.int64),
            "c": ["x", "héllo", ""],
            "d": [True, False, True],
        }
    )


def test_registered_under_pd() -> None:
    assert find_request_codec(content_type="pd") is PandasCodec
    assert find_request_codec(payload=_frame()) is PandasCodec
    assert find_request_codec(type_hint=pd.DataFrame) is PandasCodec


def test_encode_response_one_output_per_column() -> None:
    response = PandasCodec.encode_response("m", _frame(), "3")
    assert isinstance(response, InferenceResponse)
    assert (response.model_name, response.model_version) == ("m", "3")
    assert response.parameters.content_type == "pd"
    by_name = {o.name: o for o in response.outputs}
    assert list(by_name) == ["a", "b", "c", "d"]
    assert (by_name["a"].datatype, by_name["a"].shape) == ("FP32", [3, 1])
    assert by_name["b"].datatype == "INT64"
    assert by_name["d"].datatype == "BOOL"
    assert by_name["c"].datatype == "BYTES"
    assert by_name["c"].data == [b"x", "héllo".encode(), b""]
    assert by_name["c"].parameters.content_type == "str"
    assert by_name["a"].parameters is None


def test_round_trip_through_request() -> None:
    frame = _frame()
    request = PandasCodec.encode_request(frame)
    assert request.parameters.content_type == "pd"
    decoded = PandasCodec.decode_request(request)
    assert list(decoded.columns) == ["a", "b", "c", "d"]
    assert decoded["a"].to_numpy().tobytes() == frame["a"].to_numpy().tobytes()
    assert decoded["b"].tolist() == [1, 2, 3]
    assert decoded["c"].tolist() == ["x", "héllo", ""]
    assert decoded["d"].tolist() == [True, False, True]


def test_round_trip_through_response() -> None:
    frame = _frame()
    decoded = PandasCodec.decode_response(PandasCodec.encode_response("m", frame))
    assert decoded["b"].dtype == np.int64
    assert decoded["c"].tolist() == frame["c"].tolist()


def test_decode_hand_built_request() -> None:
    request = InferenceRequest(
        inputs=[
            RequestInput(name="x", shape=[3], datatype="FP64", data=[1, 2, 3]),
            RequestInput(
                name="y", shape=[3, 1], datatype="INT32", data=np.array([[4], [5], [6]], dtype="<i4")
            ),
            RequestInput(name="raw", shape=[3], datatype="BYTES", data=[b"p", "q", b"\xff"]),
        ]
    )
    frame = PandasCodec.decode_request(request)
    assert frame["x"].tolist() == [1.0, 2.0, 3.0]
    assert frame["y"].dtype == np.int32
    assert frame["y"].tolist() == [4, 5, 6]
    assert frame["raw"].tolist() == [b"p", "q", b"\xff"]


def test_decode_uses_each_inputs_content_type() -> None:
    request = InferenceRequest(
        inputs=[
            RequestInput(
                name="when",
                shape=[1],
                datatype="BYTES",
                data=[b"2024-05-01T10:00:00+00:00"],
                parameters=Parameters(content_type="datetime"),
            ),
            RequestInput(
                name="text",
                shape=[1],
                datatype="BYTES",
                data=[b"caf\xc3\xa9"],
                parameters=Parameters(content_type="str"),
            ),
        ]
    )
    frame = PandasCodec.decode_request(request)
    assert frame["text"].tolist() == ["café"]
    assert frame["when"][0] == pd.Timestamp(datetime(2024, 5, 1, 10, tzinfo=timezone.utc))


def test_multi_column_tensor_becomes_row_arrays() -> None:
    request = InferenceRequest(
        inputs=[
            RequestInput(
                name="v", shape=[2, 3], datatype="FP32", data=np.arange(6, dtype="<f4").reshape(2, 3)
            )
        ]
    )
    frame = PandasCodec.decode_request(request)
    assert len(frame) == 2
    assert frame["v"][1].tolist() == [3.0, 4.0, 5.0]


def test_columns_of_different_lengths() -> None:
    request = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[2], datatype="FP32", data=[1, 2]),
            RequestInput(name="b", shape=[3], datatype="FP32", data=[1, 2, 3]),
        ]
    )
    with pytest.raises(InferenceError, match="one length"):
        PandasCodec.decode_request(request)


def test_datetime_column_encodes_as_iso_text() -> None:
    frame = pd.DataFrame({"t": pd.to_datetime(["2024-01-01T00:00:00Z", "2024-06-01T12:30:00Z"])})
    output = PandasCodec.encode_response("m", frame).outputs[0]
    assert output.datatype == "BYTES"
    assert output.parameters.content_type == "datetime"
    assert output.data == [b"2024-01-01T00:00:00+00:00", b"2024-06-01T12:30:00+00:00"]


def test_unencodable_column() -> None:
    with pytest.raises(CodecError, match="column 'o'"):
        PandasCodec.encode_response("m", pd.DataFrame({"o": [object()]}))


def test_can_encode() -> None:
    assert PandasCodec.can_encode(_frame())
    assert not PandasCodec.can_encode(np.zeros(3))
    assert not PandasCodec.can_encode({"a": [1]})


def test_without_pandas_installed(tmp_path) -> None:
    # A real interpreter in which pandas cannot be imported: v2d.codecs still imports,
    # and asking for "pd" gives a clear error.
    blocker = tmp_path / "pandas.py"
    blocker.write_text("raise ImportError('pandas is not installed here')\n")
    script = textwrap.dedent(
        """
        import sys
        import v2d.codecs as codecs
        from v2d.types import InferenceRequest, RequestInput
        assert "pandas" not in sys.modules
        assert not codecs.PandasCodec.can_encode([1])
        request = InferenceRequest(inputs=[RequestInput(name="a", shape=[1], datatype="FP32", data=[1])])
        try:
            codecs.PandasCodec.decode_request(request)
        except codecs.CodecError as e:
            print("ERROR:", e)
        """
    )
    root = str(Path(v2d.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": f"{tmp_path}:{root}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "needs pandas" in result.stdout
    assert "pip install pandas" in result.stdout
