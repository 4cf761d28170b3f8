"""
The adapter that serves subclasses of the real ``mlserver.MLModel``: messages, settings
and errors converted both ways, and the runtime around an MLServer model.

Needs MLServer: skipped where the test venv lacks it. The integration tests
(tests/integration/test_mlserver_runtimes.py) run this file in a venv that has it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os

import numpy as np
import pytest

mlserver = pytest.importorskip("mlserver", reason="MLServer is not installed in this venv")

from mlserver import errors as mlerrors  # noqa: E402
from mlserver import types as mltypes  # noqa: E402
from mlserver.codecs import (  # noqa: E402
    Base64Codec,
    NumpyCodec,
    NumpyRequestCodec,
    PandasCodec,
    StringCodec,
)
from mlserver.utils import get_model_uri  # noqa: E402

from v2d.errors import StatusCodeError  # noqa: E402
from v2d.mlserver_adapter import (  # noqa: E402
    MLServerRuntime,
    is_mlserver_model,
    to_mlserver_request,
    to_mlserver_settings,
    to_v2d_error,
    to_v2d_metadata,
    to_v2d_response,
)
from v2d.runtimes import build_runtime, is_streaming  # noqa: E402
from v2d.settings import ModelSettings  # noqa: E402
from v2d.types import (  # noqa: E402
    DATATYPES,
    HeaderDict,
    InferenceRequest,
    Parameters,
    RequestInput,
    RequestOutput,
)

NUMERIC = [d for d, dtype in DATATYPES.items() if dtype is not None]


def _sample(datatype: str) -> np.ndarray:
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, True, True]])
    return (np.arange(6).reshape(2, 3) * 3 + 1).astype(dtype)


def _request(*inputs: RequestInput, **kwargs) -> InferenceRequest:
    return InferenceRequest(inputs=list(inputs), **kwargs)


def _response(*outputs) -> mltypes.InferenceResponse:
    return mltypes.InferenceResponse(model_name="m", outputs=list(outputs))


# -- requests -----------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_inputs_reach_mlserver_codecs_unchanged(datatype):
    array = _sample(datatype)
    request = to_mlserver_request(_request(RequestInput("x", [2, 3], datatype, array)))
    [converted] = request.inputs
    assert (converted.name, converted.shape, converted.datatype) == ("x", [2, 3], datatype)
    decoded = NumpyCodec.decode_input(converted)
    assert decoded.dtype == array.dtype and decoded.shape == (2, 3)
    assert np.array_equal(decoded, array)
    assert np.shares_memory(converted.data.root, array), "tensor data is not copied"
    assert np.array_equal(NumpyRequestCodec.decode_request(request), array)


def test_bytes_inputs_as_bytes_and_as_str():
    raw = to_mlserver_request(_request(RequestInput("s", [2], "BYTES", [b"caf\xc3\xa9", b"x"])))
    text = to_mlserver_request(_request(RequestInput("s", [2], "BYTES", ["café", "x"])))
    assert StringCodec.decode_input(raw.inputs[0]) == ["café", "x"]
    assert StringCodec.decode_input(text.inputs[0]) == ["café", "x"]
    assert list(raw.inputs[0].data) == [b"caf\xc3\xa9", b"x"]
    objects = np.array([b"a", b"bc"], dtype=object)
    array = to_mlserver_request(_request(RequestInput("s", [2], "BYTES", objects)))
    assert StringCodec.decode_input(array.inputs[0]) == ["a", "bc"]
    encoded = to_mlserver_request(_request(RequestInput("b", [1], "BYTES", [b"aGk="])))
    assert Base64Codec.decode_input(encoded.inputs[0]) == [b"hi"]


def test_request_parameters_headers_id_and_requested_outputs():
    request = _request(
        RequestInput("x", [1], "FP32", np.ones(1, np.float32), parameters=Parameters(content_type="np")),
        id="abc",
        parameters=Parameters(headers=HeaderDict({"X-Trace": "t1"}), content_type="pd", custom=3),
        outputs=[RequestOutput("predict_proba", parameters=Parameters(content_type="np"))],
    )
    converted = to_mlserver_request(request)
    assert converted.id == "abc"
    assert converted.parameters.headers == {"x-trace": "t1"}
    assert converted.parameters.content_type == "pd"
    assert converted.parameters.custom == 3
    assert converted.inputs[0].parameters.content_type == "np"
    assert [o.name for o in converted.outputs] == ["predict_proba"]
    assert converted.outputs[0].parameters.content_type == "np"
    bare = to_mlserver_request(_request(RequestInput("x", [1], "FP32", np.ones(1, np.float32))))
    assert bare.id is None and bare.parameters is None and bare.outputs is None


def test_pandas_request_codec_reads_converted_requests():
    request = to_mlserver_request(
        _request(
            RequestInput("a", [2], "INT64", np.array([1, 2])),
            RequestInput("b", [2], "BYTES", [b"x", b"y"], parameters=Parameters(content_type="str")),
        )
    )
    native = mltypes.InferenceRequest(
        inputs=[
            mltypes.RequestInput(name="a", shape=[2], datatype="INT64", data=[1, 2]),
            mltypes.RequestInput(
                name="b", shape=[2], datatype="BYTES", data=[b"x", b"y"],
                parameters=mltypes.Parameters(content_type="str"),
            ),
        ]
    )
    frame = PandasCodec.decode_request(request)
    assert frame.equals(PandasCodec.decode_request(native)), "as MLServer decodes its own request"
    assert list(frame["a"]) == [1, 2]


# -- responses ----------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_outputs_become_shaped_arrays(datatype):
    array = _sample(datatype)
    output = NumpyCodec.encode_output("y", array)
    converted = to_v2d_response(_response(output))
    [out] = converted.outputs
    assert (out.name, out.shape, out.datatype) == ("y", [2, 3], datatype)
    assert isinstance(out.data, np.ndarray) and out.data.dtype == DATATYPES[datatype]
    assert np.array_equal(out.data, array)
    assert out.parameters.content_type == "np"


def test_one_dimensional_outputs_get_mlservers_batch_dimension():
    out = to_v2d_response(_response(NumpyCodec.encode_output("y", np.array([1, 0, 1])))).outputs[0]
    assert out.shape == [3, 1] and out.data.shape == (3, 1)


def test_nan_travels_as_none_and_comes_back():
    out = to_v2d_response(_response(NumpyCodec.encode_output("y", np.array([1.5, np.nan])))).outputs[0]
    assert out.data[0, 0] == 1.5 and np.isnan(out.data[1, 0])


def test_bytes_outputs_one_item_per_element():
    strings = to_v2d_response(_response(StringCodec.encode_output("s", ["café", "x"]))).outputs[0]
    assert (strings.datatype, strings.shape, strings.data) == ("BYTES", [2, 1], [b"caf\xc3\xa9", b"x"])
    labels = to_v2d_response(_response(NumpyCodec.encode_output("l", np.array(["cat", "dog"])))).outputs[0]
    assert labels.data == [b"cat", b"dog"]
    fixed = to_v2d_response(_response(NumpyCodec.encode_output("f", np.array([b"ab", b"c"])))).outputs[0]
    assert fixed.data == [b"ab", b"c"], "a fixed-width array's single buffer is split per element"


def test_response_fields_and_parameters():
    response = mltypes.InferenceResponse(
        model_name="m",
        model_version="2",
        id="r1",
        parameters=mltypes.Parameters(headers={"X-Out": "1"}, extra_key="v"),
        outputs=[mltypes.ResponseOutput(name="y", shape=[1], datatype=mltypes.Datatype.FP32, data=[2.0])],
    )
    converted = to_v2d_response(response)
    assert (converted.model_name, converted.model_version, converted.id) == ("m", "2", "r1")
    assert converted.parameters.headers == {"X-Out": "1"}
    assert converted.parameters.get("extra_key") == "v"
    assert converted.outputs[0].datatype == "FP32" and converted.outputs[0].parameters is None
    unvalidated = mltypes.InferenceResponse.model_construct(
        model_name="m",
        parameters={"headers": {"a": "b"}},
        outputs=[mltypes.ResponseOutput.model_construct(
            name="y", shape=[2], datatype=mltypes.Datatype.INT32, data=np.array([1, 2]))],
    )
    loose = to_v2d_response(unvalidated)
    assert loose.parameters.headers == {"a": "b"}
    assert loose.outputs[0].datatype == "INT32" and loose.outputs[0].data.dtype == np.int32


def test_output_data_that_does_not_fit_its_shape_is_an_internal_error():
    bad = mltypes.ResponseOutput(name="y", shape=[3], datatype="FP32", data=[1.0, 2.0])
    with pytest.raises(StatusCodeError) as info:
        to_v2d_response(_response(bad))
    assert info.value.status_code == 500 and "output 'y'" in str(info.value)


def test_metadata():
    metadata = mltypes.MetadataModelResponse(
        name="m",
        platform="sklearn",
        versions=["1"],
        inputs=[mltypes.MetadataTensor(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[],
        parameters=mltypes.Parameters(content_type="np"),
    )
    converted = to_v2d_metadata(metadata)
    assert converted.to_dict() == {
        "name": "m",
        "versions": ["1"],
        "platform": "sklearn",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [],
        "parameters": {"content_type": "np"},
    }


# -- settings -----------------------------------------------------------------------


def _settings(tmp_path, **values) -> ModelSettings:
    values.setdefault("name", "m")
    values.setdefault("implementation", "mlserver_sklearn.SKLearnModel")
    return ModelSettings.from_dict(values, folder=str(tmp_path))


def test_settings_translation(tmp_path):
    settings = _settings(
        tmp_path,
        platform="sklearn",
        versions=["a/1"],
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4], "parameters": {"content_type": "np"}}],
        outputs=[{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
        max_batch_size=8,
        max_batch_time=0.01,
        parameters={"uri": "./model.joblib", "version": "v3", "content_type": "np",
                    "extra": {"predict_fn": "predict_proba"}, "format": "joblib"},
    )
    converted = to_mlserver_settings(settings)
    assert converted.name == "m" and converted.implementation_ == "mlserver_sklearn.SKLearnModel"
    assert converted.platform == "sklearn" and converted.versions == ["a/1"]
    assert converted.inputs[0].name == "x" and converted.inputs[0].parameters.content_type == "np"
    assert converted.outputs[0].shape == [-1, 1]
    assert (converted.max_batch_size, converted.max_batch_time) == (8, 0.01)
    assert converted.version == "v3"
    assert converted.parameters.uri == str(tmp_path / "model.joblib")
    assert converted.parameters.content_type == "np"
    assert converted.parameters.format == "joblib"
    assert converted.parameters.extra == {"predict_fn": "predict_proba"}
    assert converted._source == str(tmp_path / "model-settings.json")


def test_get_model_uri_resolves_against_the_model_folder(tmp_path):
    (tmp_path / "model.joblib").write_bytes(b"")
    (tmp_path / "artefacts").mkdir()
    (tmp_path / "artefacts" / "model.ubj").write_bytes(b"")
    resolve = asyncio.run
    file_uri = to_mlserver_settings(_settings(tmp_path, parameters={"uri": "model.joblib"}))
    assert resolve(get_model_uri(file_uri)) == str(tmp_path / "model.joblib")
    folder_uri = to_mlserver_settings(_settings(tmp_path, parameters={"uri": "./artefacts"}))
    assert resolve(get_model_uri(folder_uri, wellknown_filenames=["model.ubj"])) == str(
        tmp_path / "artefacts" / "model.ubj"
    )
    remote = to_mlserver_settings(_settings(tmp_path, parameters={"uri": "s3://bucket/model"}))
    assert remote.parameters.uri == "s3://bucket/model"
    with pytest.raises(mlerrors.InvalidModelURI):
        resolve(get_model_uri(to_mlserver_settings(_settings(tmp_path))))


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error,status,kind",
    [
        (mlerrors.InferenceError("bad input"), 400, "INVALID_ARGUMENT"),
        (mlerrors.ModelNotFound("m"), 404, "NOT_FOUND"),
        (mlerrors.InvalidModelURI("m", "/nowhere"), 422, "FAILED_PRECONDITION"),
        (mlerrors.MLServerError("boom", 500), 500, "INTERNAL"),
        (mlerrors.MLServerError("teapot", 418), 418, "UNKNOWN"),
    ],
)
def test_mlserver_errors_keep_their_status(error, status, kind):
    converted = to_v2d_error(error)
    assert isinstance(converted, StatusCodeError)
    assert (converted.status_code, converted.kind, str(converted)) == (status, kind, str(error))


def test_other_errors_stay_as_they_are():
    error = ValueError("x")
    assert to_v2d_error(error) is error


# -- the runtime --------------------------------------------------------------------

RUNTIME = '''
import asyncio
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.context import model_name_var
from mlserver.errors import InferenceError
from mlserver.types import InferenceResponse, Parameters
from mlserver.utils import get_model_uri


class Doubler(MLModel):
    async def load(self):
        self.uri = await get_model_uri(self.settings)
        return True

    async def predict(self, payload):
        if payload.inputs[0].name != "x":
            raise InferenceError("input must be called x")
        x = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        await asyncio.sleep(0)
        return InferenceResponse(
            model_name=self.name,
            id="ignored",
            parameters=Parameters(headers={"x-model": model_name_var.get(), "x-id": payload.id}),
            outputs=[NumpyCodec.encode_output("y", x * 2)],
        )


class Quick(MLModel):
    async def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        if x.sum() < 0:
            raise InferenceError("negative")
        return InferenceResponse(
            model_name=self.name,
            parameters=Parameters(headers={"x-model": model_name_var.get()}),
            outputs=[NumpyCodec.encode_output("y", x + 1)],
        )


class Slow(Quick):
    async def predict(self, payload):
        await asyncio.sleep(0.01)
        return await super().predict(payload)


class Bounded(Quick):
    calls = 0

    async def predict(self, payload):
        type(self).calls += 1
        async with asyncio.timeout(5):  # needs a task from the first step
            await asyncio.sleep(0)
            return await super().predict(payload)


class Chat(Doubler):
    async def predict_stream(self, payloads):
        async for payload in payloads:
            words = StringCodec.decode_input(payload.inputs[0])
            for word in words:
                outputs = [StringCodec.encode_output("w", [word.upper()])]
                yield InferenceResponse(model_name=self.name, outputs=outputs)
'''


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "models.py").write_text(RUNTIME)
    (tmp_path / "weights.bin").write_bytes(b"")
    return tmp_path


def _build(folder, implementation):
    settings = ModelSettings.from_dict(
        {"name": "doubler", "implementation": implementation,
         "parameters": {"uri": "weights.bin", "version": "7"}},
        folder=str(folder),
    )
    runtime, namespace = build_runtime(settings)
    return runtime, namespace


def test_a_folder_class_on_the_real_mlmodel_is_adapted(folder):
    runtime, namespace = _build(folder, "models.Doubler")
    try:
        assert isinstance(runtime, MLServerRuntime) and is_mlserver_model(type(runtime.model))
        assert not is_streaming(runtime)
        assert (runtime.name, runtime.version) == ("doubler", "7")

        async def scenario():
            assert await runtime.load() is True
            assert runtime.model.uri == str(folder / "weights.bin")
            runtime.ready = True
            assert runtime.model.ready is True
            x = np.array([[1.0, 2.0]], dtype=np.float32)
            request = _request(RequestInput("x", [1, 2], "FP32", x), id="req-1")
            answer = await _settle(runtime.predict(request))
            assert answer.id == "req-1", "the response has the request's id, as MLServer's dataplane sets it"
            assert answer.parameters.headers == {"x-model": "doubler", "x-id": "req-1"}
            assert np.array_equal(answer.outputs[0].data, x * 2)
            one = RequestInput("x", [1], "FP32", np.ones(1, np.float32))
            anonymous = await _settle(runtime.predict(_request(one)))
            assert anonymous.id and anonymous.id == anonymous.parameters.headers["x-id"]
            with pytest.raises(StatusCodeError) as info:
                wrong = RequestInput("z", [1], "FP32", np.ones(1, np.float32))
                await _settle(runtime.predict(_request(wrong)))
            assert (info.value.status_code, str(info.value)) == (400, "input must be called x")
            await runtime.unload()

        asyncio.run(scenario())
        assert runtime.metadata().name == "doubler"
    finally:
        namespace.forget()


async def _settle(value):
    return await value if inspect.isawaitable(value) else value


def test_a_predict_that_never_waits_is_answered_at_once(folder):
    from mlserver.context import model_name_var

    runtime, namespace = _build(folder, "models.Quick")
    try:
        asyncio.run(runtime.load())
        x = np.array([1.0, 2.0], dtype=np.float32)
        answer = runtime.predict(_request(RequestInput("x", [2], "FP32", x)))
        assert not inspect.isawaitable(answer), "no task for a coroutine that finishes at once"
        assert np.array_equal(answer.outputs[0].data.reshape(-1), x + 1)
        assert answer.parameters.headers == {"x-model": "doubler"}
        assert model_name_var.get("unset") == "unset", "the model context is undone after the call"
        with pytest.raises(StatusCodeError) as info:
            runtime.predict(_request(RequestInput("x", [2], "FP32", -x)))
        assert (info.value.status_code, str(info.value)) == (400, "negative")
    finally:
        namespace.forget()


def test_a_predict_that_waits_goes_on_as_a_task(folder):
    runtime, namespace = _build(folder, "models.Slow")

    async def scenario():
        await runtime.load()
        x = np.array([1.0], dtype=np.float32)
        pending = runtime.predict(_request(RequestInput("x", [1], "FP32", x), id="s"))
        assert inspect.isawaitable(pending)
        answer = await asyncio.ensure_future(pending)
        assert answer.id == "s" and answer.parameters.headers == {"x-model": "doubler"}
        assert answer.outputs[0].data.reshape(-1).tolist() == [2.0]
        with pytest.raises(StatusCodeError):
            await asyncio.ensure_future(runtime.predict(_request(RequestInput("x", [1], "FP32", -x))))
        task = asyncio.ensure_future(runtime.predict(_request(RequestInput("x", [1], "FP32", x))))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(scenario())
    finally:
        namespace.forget()


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is Python 3.11+")
def test_a_predict_that_needs_a_task_from_its_first_step_gets_one(folder):
    runtime, namespace = _build(folder, "models.Bounded")

    async def scenario():
        await runtime.load()
        x = np.array([1.0], dtype=np.float32)
        answers = []
        loop = asyncio.get_running_loop()
        called: list = []

        def call():
            called.append(runtime.predict(_request(RequestInput("x", [1], "FP32", x))))

        for _ in range(3):
            # as the server calls it: from a loop callback, outside any task
            loop.call_soon(call)
            await asyncio.sleep(0)
            pending = called.pop()
            assert inspect.isawaitable(pending)
            answers.append(await asyncio.ensure_future(pending))
        return answers

    try:
        answers = asyncio.run(scenario())
        assert [a.outputs[0].data.reshape(-1).tolist() for a in answers] == [[2.0]] * 3
        assert type(runtime.model).calls == 4, "called again as a task once, then always as a task"
    finally:
        namespace.forget()


def test_streams(folder):
    runtime, namespace = _build(folder, "models.Chat")
    try:
        assert is_streaming(runtime)

        async def requests():
            yield _request(RequestInput("s", [2], "BYTES", [b"a", b"b"]), id="first")
            yield _request(RequestInput("s", [1], "BYTES", [b"c"]), id="second")

        async def scenario():
            await runtime.load()
            return [r async for r in runtime.predict_stream(requests())]

        answers = asyncio.run(scenario())
        assert [r.outputs[0].data for r in answers] == [[b"A"], [b"B"], [b"C"]]
        assert {r.id for r in answers} == {"first"}
    finally:
        namespace.forget()


def test_load_errors_keep_their_status(tmp_path):
    settings = ModelSettings.from_dict(
        {"name": "m", "implementation": "mlserver_sklearn.SKLearnModel",
         "parameters": {"uri": "missing.joblib"}},
        folder=str(tmp_path),
    )
    pytest.importorskip("mlserver_sklearn")
    runtime, namespace = build_runtime(settings)
    try:
        with pytest.raises(StatusCodeError) as info:
            asyncio.run(runtime.load())
        assert info.value.status_code == 422 and "missing.joblib" in str(info.value)
    finally:
        namespace.forget()


def test_settings_json_of_the_folder_is_what_mlserver_reads(folder):
    (folder / "model-settings.json").write_text(json.dumps({"implementation": "models.Doubler"}))
    runtime, namespace = _build(folder, "models.Doubler")
    try:
        assert os.path.dirname(runtime.model.settings._source) == str(folder)
    finally:
        namespace.forget()
