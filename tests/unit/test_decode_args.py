"""Unit tests of ``@decode_args``: typed ``predict`` arguments and return values."""

import asyncio
import inspect
import sys
import typing
from datetime import datetime, timezone
from typing import Any, List, Optional, Tuple

import numpy as np
import pytest
from twisted.internet.defer import Deferred, succeed

from v2d import MLModel
from v2d.codecs import CodecError, CodecNotFound, InputCodec, _registry, decode_args, register_input_codec
from v2d.errors import InferenceError
from v2d.settings import ModelSettings
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)


def _settings(**values: Any) -> ModelSettings:
    base = {"name": "qa", "versions": ["1.2"]}
    base.update(values)
    return ModelSettings.from_dict(base)


def _bytes_input(name: str, items: List[Any]) -> RequestInput:
    return RequestInput(name=name, shape=[len(items)], datatype="BYTES", data=items)


def _run(response: Any) -> InferenceResponse:
    if inspect.iscoroutine(response):
        return asyncio.run(response)
    assert isinstance(response, InferenceResponse)
    return response


# -- the MLServer docs' questions/context runtime ---------------------------------------


class QuestionAnswering(MLModel):
    """The shape of MLServer's custom-runtime docs example."""

    async def load(self) -> bool:
        self._model = lambda questions, context: np.array(
            [context.find(q.split()[-1].rstrip("?")) for q, context in zip(questions, context)]
        )
        return True

    @decode_args
    async def predict(self, questions: List[str], context: List[str]) -> np.ndarray:
        await asyncio.sleep(0)  # a real await: asyncio semantics
        return self._model(questions, context)


def test_questions_context_example() -> None:
    model = QuestionAnswering(_settings())
    asyncio.run(model.load())
    request = InferenceRequest(
        id="req-1",
        inputs=[
            _bytes_input("questions", [b"where is paris?", "who is bob?"]),
            _bytes_input("context", ["paris is in france", b"alice and bob"]),
        ],
    )
    assert inspect.iscoroutinefunction(QuestionAnswering.predict)
    response = asyncio.run(model.predict(request))
    assert isinstance(response, InferenceResponse)
    assert (response.model_name, response.model_version, response.id) == ("qa", "1.2", "req-1")
    [output] = response.outputs
    assert output.name == "output-0"
    assert output.datatype == "INT64"
    assert output.shape == [2, 1]
    assert np.asarray(output.data).ravel().tolist() == [0, 10]
    assert output.parameters.content_type == "np"


# -- sync and async ------------------------------------------------------------------------


class SyncDoubler(MLModel):
    @decode_args
    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2


def test_plain_def_returns_a_plain_response() -> None:
    assert not inspect.iscoroutinefunction(SyncDoubler.predict)
    model = SyncDoubler(_settings(name="double"))
    data = np.array([[1.5, -2.0]], dtype=np.float32)
    response = model.predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1, 2], datatype="FP32", data=data)])
    )
    assert isinstance(response, InferenceResponse)
    assert response.model_name == "double"
    assert response.outputs[0].datatype == "FP32"
    assert response.outputs[0].data.tolist() == [[3.0, -4.0]]


def test_hand_built_request_with_plain_lists() -> None:
    model = SyncDoubler(_settings())
    response = model.predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[3], datatype="INT32", data=[1, 2, 3])])
    )
    assert response.outputs[0].datatype == "INT32"
    assert np.asarray(response.outputs[0].data).ravel().tolist() == [2, 4, 6]


def test_wrapper_signature_takes_the_request() -> None:
    signature = inspect.signature(SyncDoubler.predict)
    assert list(signature.parameters) == ["self", "payload"]
    assert SyncDoubler.predict.__name__ == "predict"
    assert SyncDoubler.predict.__qualname__.endswith("SyncDoubler.predict")


class DeferredModel(MLModel):
    @decode_args
    def predict(self, x: np.ndarray) -> np.ndarray:
        return succeed(x + 1)


def test_plain_def_returning_a_deferred() -> None:
    result = DeferredModel(_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="INT8", data=[1])])
    )
    assert isinstance(result, Deferred)
    responses: List[InferenceResponse] = []
    result.addCallback(responses.append)
    assert np.asarray(responses[0].outputs[0].data).ravel().tolist() == [2]


class AwaitableModel(MLModel):
    @decode_args
    def predict(self, x: np.ndarray) -> np.ndarray:
        async def later() -> np.ndarray:
            return x - 1

        return later()


def test_plain_def_returning_a_coroutine() -> None:
    result = AwaitableModel(_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="INT8", data=[1])])
    )
    assert inspect.iscoroutine(result)
    assert np.asarray(asyncio.run(result).outputs[0].data).ravel().tolist() == [0]


def test_async_predict_through_deferred_from_coroutine() -> None:
    class Echo(MLModel):
        @decode_args
        async def predict(self, words: List[str]) -> List[str]:
            return [w[::-1] for w in words]

    d = Deferred.fromCoroutine(
        Echo(_settings()).predict(InferenceRequest(inputs=[_bytes_input("words", ["abc"])]))
    )
    responses: List[InferenceResponse] = []
    d.addCallback(responses.append)
    assert responses[0].outputs[0].data == [b"cba"]


# -- inputs ------------------------------------------------------------------------------


class Mixed(MLModel):
    @decode_args
    def predict(
        self,
        numbers: np.ndarray,
        words: list[str],
        blobs: Optional[list[bytes]],
        when: Optional[List[datetime]] = None,
        scale: Optional[np.ndarray] = None,
    ) -> Tuple[np.ndarray, List[str], List[bytes], List[datetime]]:
        factor = 1 if scale is None else scale.item()
        return (
            numbers * factor,
            [w.upper() for w in words],
            blobs if blobs is not None else [b"none"],
            when if when is not None else [],
        )


def test_every_hint_kind_and_optionals() -> None:
    model = Mixed(_settings())
    moment = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)
    request = InferenceRequest(
        inputs=[
            RequestInput(name="numbers", shape=[2], datatype="FP64", data=np.array([1.0, 2.0])),
            _bytes_input("words", ["héllo", b"w\xc3\xb6rld"]),
            RequestInput(
                name="blobs",
                shape=[1],
                datatype="BYTES",
                data=["/wA="],
                parameters=Parameters(content_type="base64"),
            ),
            _bytes_input("when", [moment.isoformat()]),
            RequestInput(name="scale", shape=[1], datatype="FP64", data=[3.0]),
        ]
    )
    response = model.predict(request)
    numbers, words, blobs, when = response.outputs
    assert [o.name for o in response.outputs] == ["output-0", "output-1", "output-2", "output-3"]
    assert np.asarray(numbers.data).ravel().tolist() == [3.0, 6.0]
    assert words.data == ["HÉLLO".encode(), "WÖRLD".encode()]
    assert (blobs.parameters.content_type, blobs.data) == ("base64", [b"/wA="])
    assert when.data == [b"2024-03-01T09:30:00+00:00"]


def test_optional_inputs_may_be_absent() -> None:
    model = Mixed(_settings())
    request = InferenceRequest(
        inputs=[
            RequestInput(name="numbers", shape=[1], datatype="INT16", data=[5]),
            _bytes_input("words", ["a"]),
        ]
    )
    numbers, words, blobs, when = model.predict(request).outputs
    assert np.asarray(numbers.data).ravel().tolist() == [5]
    assert blobs.data == [b"bm9uZQ=="]  # base64 of b"none"
    assert when.data == []


def test_missing_input_names_it() -> None:
    model = Mixed(_settings())
    with pytest.raises(InferenceError, match="missing input 'words'"):
        model.predict(
            InferenceRequest(inputs=[RequestInput(name="numbers", shape=[1], datatype="FP32", data=[1])])
        )
    with pytest.raises(InferenceError, match="missing inputs 'numbers', 'words'"):
        model.predict(InferenceRequest(inputs=[]))


def test_unexpected_input_names_it() -> None:
    with pytest.raises(InferenceError, match="unexpected input 'y'.*'x'"):
        SyncDoubler(_settings()).predict(
            InferenceRequest(
                inputs=[
                    RequestInput(name="x", shape=[1], datatype="FP32", data=[1]),
                    RequestInput(name="y", shape=[1], datatype="FP32", data=[1]),
                ]
            )
        )


def test_bad_input_data_is_an_inference_error() -> None:
    with pytest.raises(InferenceError, match="input 'words'.*UTF-8"):
        Mixed(_settings()).predict(
            InferenceRequest(
                inputs=[
                    RequestInput(name="numbers", shape=[1], datatype="FP32", data=[1]),
                    _bytes_input("words", [b"\xff"]),
                ]
            )
        )


def test_raw_request_input_parameter() -> None:
    class Raw(MLModel):
        @decode_args
        def predict(self, x: RequestInput) -> List[str]:
            return [f"{x.name}:{x.datatype}:{x.shape}"]

    response = Raw(_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="UINT8", data=[1])])
    )
    assert response.outputs[0].data == [b"x:UINT8:[1]"]


# -- outputs -----------------------------------------------------------------------------


class Pair(MLModel):
    @decode_args
    def predict(self, x: np.ndarray) -> Tuple[np.ndarray, List[str]]:
        return x.sum(keepdims=True), [str(x.size)]


def _pair_request(outputs: Optional[List[str]] = None) -> InferenceRequest:
    return InferenceRequest(
        id="p",
        inputs=[
            RequestInput(
                name="x", shape=[2, 2], datatype="INT32", data=np.arange(4, dtype="<i4").reshape(2, 2)
            )
        ],
        outputs=[RequestOutput(name=n) for n in outputs] if outputs is not None else None,
    )


def test_tuple_return_gives_several_outputs_with_default_names() -> None:
    response = Pair(_settings()).predict(_pair_request())
    total, size = response.outputs
    assert (total.name, size.name) == ("output-0", "output-1")
    assert np.asarray(total.data).ravel().tolist() == [6]
    assert size.data == [b"4"]
    assert response.id == "p"


def test_requested_output_names_name_the_outputs() -> None:
    response = Pair(_settings()).predict(_pair_request(["total", "size"]))
    assert [o.name for o in response.outputs] == ["total", "size"]
    only_first = Pair(_settings()).predict(_pair_request(["total"]))
    assert [o.name for o in only_first.outputs] == ["total", "output-1"]


def test_declared_output_names_name_the_outputs() -> None:
    settings = _settings(
        outputs=[
            {"name": "sum", "datatype": "INT32", "shape": [1]},
            {"name": "count", "datatype": "BYTES", "shape": [1]},
        ]
    )
    response = Pair(settings).predict(_pair_request())
    assert [o.name for o in response.outputs] == ["sum", "count"]
    # The request's names still win.
    assert [o.name for o in Pair(settings).predict(_pair_request(["a", "b"])).outputs] == ["a", "b"]


def test_wrong_return_type_is_a_codec_error() -> None:
    class Liar(MLModel):
        @decode_args
        def predict(self, x: np.ndarray) -> np.ndarray:
            return [1, 2]  # type: ignore[return-value]

    with pytest.raises(CodecError, match="output 0.*ndarray"):
        Liar(_settings()).predict(_pair_request())


def test_wrong_tuple_length_is_a_codec_error() -> None:
    class Short(MLModel):
        @decode_args
        def predict(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            return (x,)  # type: ignore[return-value]

    with pytest.raises(CodecError, match="tuple of 2"):
        Short(_settings()).predict(_pair_request())


def test_unannotated_return_is_encoded_by_payload() -> None:
    class Loose(MLModel):
        @decode_args
        def predict(self, x: np.ndarray):
            return x, ["a"], None

    response = Loose(_settings()).predict(_pair_request())
    assert [o.datatype for o in response.outputs] == ["INT32", "BYTES"]


def test_variadic_tuple_and_optional_outputs() -> None:
    class Many(MLModel):
        @decode_args
        def predict(self, x: np.ndarray) -> Tuple[Optional[np.ndarray], ...]:
            return x, None, x + 1

    response = Many(_settings()).predict(_pair_request(["a", "b", "c"]))
    assert [o.name for o in response.outputs] == ["a", "c"]


def test_returning_an_inference_response_passes_it_through() -> None:
    class Manual(MLModel):
        @decode_args
        def predict(self, x: np.ndarray) -> InferenceResponse:
            return InferenceResponse(model_name="custom", outputs=[])

    assert Manual(_settings()).predict(_pair_request()).model_name == "custom"


# -- DataFrames ------------------------------------------------------------------------------


def test_dataframe_argument_takes_the_remaining_inputs_and_return() -> None:
    pd = pytest.importorskip("pandas")

    class Frame(MLModel):
        @decode_args
        def predict(self, threshold: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"high": frame["a"] > threshold.item(), "b": frame["b"]})

    request = InferenceRequest(
        inputs=[
            RequestInput(name="threshold", shape=[1], datatype="FP32", data=[1.5]),
            RequestInput(name="a", shape=[3], datatype="FP32", data=[1, 2, 3]),
            RequestInput(
                name="b",
                shape=[3],
                datatype="BYTES",
                data=["x", "y", "z"],
                parameters=Parameters(content_type="str"),
            ),
        ]
    )
    response = Frame(_settings()).predict(request)
    high, b = response.outputs
    assert (high.name, high.datatype, np.asarray(high.data).ravel().tolist()) == (
        "high",
        "BOOL",
        [False, True, True],
    )
    assert (b.name, b.data) == ("b", [b"x", b"y", b"z"])


# -- custom codecs and hint resolution ---------------------------------------------------------


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


class CelsiusCodec(InputCodec):
    ContentType = "celsius"
    TypeHint = Celsius

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return isinstance(payload, Celsius)

    @classmethod
    def encode_output(cls, name: str, payload: Celsius, **kwargs: Any) -> ResponseOutput:
        return ResponseOutput(name=name, shape=[1], datatype="FP64", data=np.array([payload.degrees]))

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> Celsius:
        return Celsius(float(np.asarray(request_input.data).ravel()[0]))


@pytest.fixture
def celsius_codec() -> Any:
    register_input_codec(CelsiusCodec)
    yield CelsiusCodec
    _registry.input_codecs.unregister("celsius")


def test_custom_codec_found_by_type_hint(celsius_codec: Any) -> None:
    class Thermo(MLModel):
        @decode_args
        def predict(self, t: Celsius) -> Celsius:
            return Celsius(t.degrees * 9 / 5 + 32)

    response = Thermo(_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="t", shape=[1], datatype="FP64", data=[100.0])])
    )
    assert np.asarray(response.outputs[0].data).tolist() == [212.0]


def test_unknown_input_hint_fails_at_decoration() -> None:
    with pytest.raises(CodecNotFound, match="parameter 'x'.*dict"):

        class Bad(MLModel):
            @decode_args
            def predict(self, x: dict) -> np.ndarray:
                return np.zeros(1)


def test_missing_input_hint_fails_at_decoration() -> None:
    with pytest.raises(CodecNotFound, match="parameter 'x' has no type hint"):

        class Bad(MLModel):
            @decode_args
            def predict(self, x) -> np.ndarray:
                return np.zeros(1)


def test_type_hints_are_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = typing.get_type_hints

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counting)

    class Counted(MLModel):
        @decode_args
        def predict(self, x: np.ndarray) -> np.ndarray:
            return x

    assert len(calls) == 1
    for _ in range(3):
        Counted(_settings()).predict(_pair_request())
    assert len(calls) == 1


FUTURE_MODULE = """
from __future__ import annotations

from typing import List, Optional

import numpy as np

from v2d import MLModel
from v2d.codecs import decode_args


class Later(MLModel):
    @decode_args
    def predict(self, words: Words, extra: Optional[np.ndarray] = None) -> tuple[np.ndarray, List[str]]:
        return np.array([len(w) for w in words]), [type(extra).__name__]


Words = list[str]
"""


def test_string_annotations_and_forward_references() -> None:
    # ``Words`` does not exist yet when ``predict`` is decorated: resolved at the first call.
    namespace: dict = {"__name__": "future_module"}
    exec(compile(FUTURE_MODULE, "future_module.py", "exec"), namespace)
    model = namespace["Later"](_settings())
    response = model.predict(InferenceRequest(inputs=[_bytes_input("words", ["ab", "c"])]))
    lengths, kind = response.outputs
    assert np.asarray(lengths.data).ravel().tolist() == [2, 1]
    assert kind.data == [b"NoneType"]


def test_ndarray_generic_hints() -> None:
    import numpy.typing as npt

    class Typed(MLModel):
        @decode_args
        def predict(self, x: npt.NDArray[np.float32]) -> "np.ndarray[Any, np.dtype[np.float32]]":
            return x * 3

    response = Typed(_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[2])])
    )
    assert response.outputs[0].data.ravel().tolist() == [6.0]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="X | None needs Python 3.10")
def test_pep604_optional() -> None:
    source = """
import numpy as np
from v2d import MLModel
from v2d.codecs import decode_args

class Union(MLModel):
    @decode_args
    def predict(self, x: np.ndarray, y: np.ndarray | None = None) -> list[str]:
        return [str(y)]
"""
    namespace: dict = {"__name__": "pep604"}
    exec(compile(source, "pep604.py", "exec"), namespace)
    response = namespace["Union"](_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[2])])
    )
    assert response.outputs[0].data == [b"None"]


def test_bare_ndarray_alias_hint() -> None:
    import numpy.typing as npt

    class Bare(MLModel):
        @decode_args
        def predict(self, x: npt.NDArray) -> npt.NDArray:
            return x

    response = Bare(_settings()).predict(
        InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="INT8", data=[5])])
    )
    assert response.outputs[0].datatype == "INT8"
