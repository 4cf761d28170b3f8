"""Unit tests of the codec registries, the public exports and the model-level content type look-ups."""

from __future__ import annotations

from typing import Any, Iterator, List

import numpy as np
import pytest

import v2d.codecs
from v2d import MLModel
from v2d.codecs import (
    Base64Codec,
    CodecNotFound,
    DatetimeCodec,
    InputCodec,
    NumpyCodec,
    NumpyRequestCodec,
    PandasCodec,
    RequestCodec,
    StringCodec,
    StringRequestCodec,
    _registry,
    find_input_codec,
    find_request_codec,
    register_input_codec,
    register_request_codec,
)
from v2d.settings import ModelSettings
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)


class Point:
    """A user type with its own codec."""

    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y


class PointCodec(InputCodec):
    ContentType = "point"
    TypeHint = Point

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return isinstance(payload, Point)

    @classmethod
    def encode_output(cls, name: str, payload: Point, **kwargs: Any) -> ResponseOutput:
        return ResponseOutput(
            name=name,
            shape=[2],
            datatype="FP64",
            data=np.array([payload.x, payload.y]),
            parameters=Parameters(content_type=cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> Point:
        x, y = np.asarray(request_input.data, dtype=float).ravel().tolist()
        return Point(x, y)


class ShoutCodec(InputCodec):
    """Overrides the built-in codec for ``List[str]``."""

    ContentType = "shout"
    TypeHint = List[str]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return StringCodec.can_encode(payload)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[str]:
        return [s.upper() for s in StringCodec.decode_input(request_input)]


@pytest.fixture
def registered() -> Iterator[None]:
    """Register the custom codecs for one test, then restore the built-in registry."""
    before_inputs = _registry.input_codecs.content_types()
    before_requests = _registry.request_codecs.content_types()
    register_input_codec(PointCodec)
    yield
    for registry, before in (
        (_registry.input_codecs, before_inputs),
        (_registry.request_codecs, before_requests),
    ):
        for content_type in registry.content_types():
            registry.unregister(content_type)
        for codec in before.values():
            registry.register(codec)


def test_public_names_are_the_private_ones() -> None:
    from v2d.codecs import _base, _base64, _datetime, _decorator, _numpy, _pandas, _string

    expected = {
        "InputCodec": _base.InputCodec,
        "RequestCodec": _base.RequestCodec,
        "SingleInputRequestCodec": _base.SingleInputRequestCodec,
        "NumpyCodec": _numpy.NumpyCodec,
        "NumpyRequestCodec": _numpy.NumpyRequestCodec,
        "StringCodec": _string.StringCodec,
        "StringRequestCodec": _string.StringRequestCodec,
        "Base64Codec": _base64.Base64Codec,
        "DatetimeCodec": _datetime.DatetimeCodec,
        "PandasCodec": _pandas.PandasCodec,
        "decode_args": _decorator.decode_args,
        "register_input_codec": _registry.register_input_codec,
        "register_request_codec": _registry.register_request_codec,
        "find_input_codec": _registry.find_input_codec,
        "find_request_codec": _registry.find_request_codec,
    }
    for name, obj in expected.items():
        assert name in v2d.codecs.__all__
        assert getattr(v2d.codecs, name) is obj
    for name in v2d.codecs.__all__:
        assert hasattr(v2d.codecs, name), name


def test_builtin_content_types() -> None:
    assert find_input_codec(content_type="np") is NumpyCodec
    assert find_input_codec(content_type="str") is StringCodec
    assert find_input_codec(content_type="base64") is Base64Codec
    assert find_input_codec(content_type="datetime") is DatetimeCodec
    assert find_request_codec(content_type="pd") is PandasCodec
    assert find_request_codec(content_type="np") is NumpyRequestCodec
    assert find_request_codec(content_type="str") is StringRequestCodec
    assert find_input_codec(content_type="nope") is None
    assert find_input_codec() is None


def test_builtin_lookup_by_payload_and_type_hint() -> None:
    from datetime import datetime

    assert find_input_codec(payload=np.zeros(1)) is NumpyCodec
    assert find_input_codec(payload=["a"]) is StringCodec
    assert find_input_codec(payload=[b"a"]) is Base64Codec
    assert find_input_codec(payload=[datetime(2020, 1, 1)]) is DatetimeCodec
    assert find_input_codec(payload=[]) is StringCodec
    assert find_input_codec(payload={"a": 1}) is None
    assert find_input_codec(type_hint=np.ndarray) is NumpyCodec
    assert find_input_codec(type_hint=List[str]) is StringCodec
    assert find_input_codec(type_hint=list[str]) is StringCodec
    assert find_input_codec(type_hint=list[bytes]) is Base64Codec
    assert find_input_codec(type_hint=List[datetime]) is DatetimeCodec
    assert find_input_codec(type_hint=list[int]) is None
    assert find_request_codec(payload=np.zeros(1)) is NumpyRequestCodec
    assert find_request_codec(payload=["a"]) is StringRequestCodec


def test_custom_codec_found_by_content_type_payload_and_hint(registered: None) -> None:
    assert find_input_codec(content_type="point") is PointCodec
    assert find_input_codec(payload=Point(1, 2)) is PointCodec
    assert find_input_codec(type_hint=Point) is PointCodec


def test_register_is_a_decorator(registered: None) -> None:
    @register_request_codec
    class Pairs(RequestCodec):
        ContentType = "pairs"

    assert Pairs.__name__ == "Pairs"
    assert find_request_codec(content_type="pairs") is Pairs


def test_latest_registration_wins_for_the_same_hint(registered: None) -> None:
    register_input_codec(ShoutCodec)
    assert find_input_codec(type_hint=List[str]) is ShoutCodec
    assert find_input_codec(content_type="str") is StringCodec


def test_register_needs_a_content_type() -> None:
    class Nameless(InputCodec):
        pass

    with pytest.raises(ValueError, match="ContentType"):
        register_input_codec(Nameless)


# -- MLModel.decode / decode_request / encode / encode_response ------------------------


def _model(**settings: Any) -> MLModel:
    values = {"name": "m", "versions": ["7"]}
    values.update(settings)
    return MLModel(ModelSettings.from_dict(values))


def test_decode_by_input_content_type() -> None:
    model = _model()
    request_input = RequestInput(
        name="x", shape=[1], datatype="BYTES", data=[b"hi"], parameters=Parameters(content_type="str")
    )
    assert model.decode(request_input) == ["hi"]


def test_decode_by_model_metadata() -> None:
    model = _model(
        inputs=[
            {"name": "x", "datatype": "BYTES", "shape": [-1], "parameters": {"content_type": "base64"}},
            {"name": "y", "datatype": "FP32", "shape": [-1]},
        ]
    )
    x = RequestInput(name="x", shape=[1], datatype="BYTES", data=["aGk="])
    assert model.decode(x) == [b"hi"]
    # The input's own content type beats the metadata's.
    x_as_str = RequestInput(
        name="x", shape=[1], datatype="BYTES", data=["aGk="], parameters=Parameters(content_type="str")
    )
    assert model.decode(x_as_str) == ["aGk="]
    # No content type anywhere: raw data, or the default codec.
    data = np.array([1.0], dtype=np.float32)
    y = RequestInput(name="y", shape=[1], datatype="FP32", data=data)
    assert model.decode(y) is data
    assert model.decode(RequestInput(name="z", shape=[1], datatype="BYTES", data=[b"q"]), StringCodec) == [
        "q"
    ]
    assert model.decode(RequestInput(name="z", shape=[1], datatype="BYTES", data=[b"q"]), "str") == ["q"]


def test_decode_unknown_content_type_falls_back() -> None:
    model = _model()
    request_input = RequestInput(
        name="x", shape=[1], datatype="BYTES", data=[b"q"], parameters=Parameters(content_type="unknown")
    )
    assert model.decode(request_input) == [b"q"]
    assert model.decode(request_input, default_codec=StringCodec) == ["q"]


def test_decode_custom_content_type(registered: None) -> None:
    model = _model(
        inputs=[{"name": "p", "datatype": "FP64", "shape": [2], "parameters": {"content_type": "point"}}]
    )
    point = model.decode(RequestInput(name="p", shape=[2], datatype="FP64", data=[3.0, 4.0]))
    assert (point.x, point.y) == (3.0, 4.0)


def test_decode_request_by_request_and_model_content_type() -> None:
    request = InferenceRequest(inputs=[RequestInput(name="x", shape=[2], datatype="INT8", data=[1, 2])])
    model = _model()
    assert model.decode_request(request) is request
    assert model.decode_request(request, default_codec=NumpyRequestCodec).tolist() == [1, 2]
    request.parameters = Parameters(content_type="np")
    assert model.decode_request(request).dtype == np.int8
    request.parameters = None
    model_np = _model(parameters={"content_type": "np"})
    assert model_np.decode_request(request).tolist() == [1, 2]


def test_decode_request_pandas() -> None:
    pd = pytest.importorskip("pandas")
    model = _model(parameters={"content_type": "pd"})
    request = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[2], datatype="FP32", data=[1, 2]),
            RequestInput(
                name="b",
                shape=[2],
                datatype="BYTES",
                data=["x", "y"],
                parameters=Parameters(content_type="str"),
            ),
        ]
    )
    frame = model.decode_request(request)
    assert isinstance(frame, pd.DataFrame)
    assert frame["b"].tolist() == ["x", "y"]


def test_encode_by_payload_requested_and_declared_content_type() -> None:
    model = _model(
        outputs=[{"name": "t", "datatype": "BYTES", "shape": [-1], "parameters": {"content_type": "base64"}}]
    )
    by_payload = model.encode(np.array([1, 2], dtype=np.int32), RequestOutput(name="y"))
    assert (by_payload.name, by_payload.datatype, by_payload.parameters.content_type) == ("y", "INT32", "np")
    assert model.encode(["a"], RequestOutput(name="s")).parameters.content_type == "str"
    declared = model.encode([b"\xff"], RequestOutput(name="t"))
    assert declared.data == [b"/w=="]
    # The requested content type beats the declared one.
    requested = model.encode(["é"], RequestOutput(name="t", parameters=Parameters(content_type="str")))
    assert requested.data == ["é".encode()]
    assert requested.parameters.content_type == "str"


def test_encode_with_default_codec_and_failure() -> None:
    model = _model()
    out = model.encode((1, 2), RequestOutput(name="y"), default_codec=NumpyCodec)
    assert out.datatype == "INT64"
    with pytest.raises(CodecNotFound, match="output 'y'.*dict"):
        model.encode({"a": 1}, RequestOutput(name="y"))


def test_encode_response() -> None:
    model = _model()
    response = model.encode_response(np.array([[1.0]]))
    assert isinstance(response, InferenceResponse)
    assert (response.model_name, response.model_version) == ("m", "7")
    assert response.outputs[0].name == "output-1"
    assert model.encode_response(["a"]).outputs[0].data == [b"a"]
    with pytest.raises(CodecNotFound):
        model.encode_response({"a": 1})


def test_encode_response_pandas() -> None:
    pd = pytest.importorskip("pandas")
    model = _model(parameters={"version": "9"})
    response = model.encode_response(pd.DataFrame({"p": [0.5, 0.25]}))
    assert response.model_version == "9"
    assert response.parameters.content_type == "pd"
    assert [o.name for o in response.outputs] == ["p"]


def test_decode_hand_built_dict_parameters() -> None:
    model = _model()
    request_input = RequestInput(
        name="x", shape=[1], datatype="BYTES", data=["hi"], parameters={"content_type": "str"}
    )
    assert model.decode(request_input) == ["hi"]
    request = InferenceRequest(
        parameters={"content_type": "np"},
        inputs=[RequestInput(name="x", shape=[1], datatype="FP64", data=[2])],
    )
    assert model.decode_request(request).tolist() == [2.0]


def test_codec_errors_cross_process_boundaries() -> None:
    import pickle

    from v2d.codecs import CodecError

    for error in (CodecError("bad output"), CodecNotFound("no codec for 'x'")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.kind == "INTERNAL"
