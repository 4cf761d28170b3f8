"""
MLServer's public runtime API under v2d: names at MLServer's module paths, message
types that compare by value, pydantic's method names, the decoded-payload cache,
``SignatureCodec``, ``pd_json``, ``MLServerError`` and its status code,
``ModelSettings`` built as MLServer's, ``get_model_uri`` and the ``mlserver`` import
mapping of model folders.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pickle
import textwrap
from typing import List, Tuple

import numpy as np
import pytest

from v2d import codecs, errors
from v2d.codecs import utils as codec_utils
from v2d.settings import ModelParameters, ModelSettings
from v2d.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    TensorData,
)

# MLServer's module path -> names a runtime author imports from it.
PATHS = {
    "v2d.codecs.numpy": ["NumpyCodec", "NumpyRequestCodec", "to_datatype", "to_dtype"],
    "v2d.codecs.string": ["StringCodec", "StringRequestCodec", "encode_str", "decode_str"],
    "v2d.codecs.base64": ["Base64Codec"],
    "v2d.codecs.datetime": ["DatetimeCodec"],
    "v2d.codecs.pandas": ["PandasCodec"],
    "v2d.codecs.base": ["InputCodec", "RequestCodec", "register_input_codec", "register_request_codec",
                        "find_input_codec", "find_request_codec", "InputCodecLike", "RequestCodecLike"],
    "v2d.codecs.utils": ["DecodedParameterName", "has_decoded", "get_decoded", "get_decoded_or_raw",
                         "encode_inference_response", "encode_response_output", "decode_request_input",
                         "decode_inference_request", "SingleInputRequestCodec", "Codec", "InputOrOutput"],
    "v2d.codecs.errors": ["CodecError", "CodecNotFound", "InputsNotFound", "OutputNotFound"],
    "v2d.codecs.decorator": ["decode_args", "SignatureCodec"],
    "v2d.codecs.lists": ["is_list_of"],
    "v2d.model": ["MLModel"],
    "v2d.utils": ["get_model_uri", "insert_headers", "extract_headers", "AsyncManager"],
    "v2d.errors": ["MLServerError", "InferenceError", "ModelNotFound", "InvalidModelURI",
                   "ModelParametersMissing"],
    "v2d.handlers": ["custom_handler"],
    "v2d.types": ["Datatype", "TensorData", "InferenceRequest", "InferenceResponse", "RequestInput",
                  "RequestOutput", "ResponseOutput", "Parameters", "MetadataTensor",
                  "MetadataModelResponse", "MetadataServerResponse"],
    "v2d.settings": ["Settings", "ModelSettings", "ModelParameters"],
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_mlserver_module_paths_name_the_same_objects(path):
    module = importlib.import_module(path)
    for name in PATHS[path]:
        assert hasattr(module, name), f"{path}.{name}"
        if path.startswith("v2d.codecs.") and hasattr(codecs, name):
            assert getattr(module, name) is getattr(codecs, name), f"{path}.{name} is v2d.codecs.{name}"


# -- message types ---------------------------------------------------------------


def test_messages_compare_by_value_numpy_aware():
    column = np.array([[1], [2], [3]], dtype="i4")
    arr = ResponseOutput("y", [3, 1], "INT32", column, Parameters(content_type="np"))
    listed = ResponseOutput(name="y", shape=[3, 1], datatype=Datatype.INT32, data=[1, 2, 3],
                            parameters=Parameters(content_type="np"))
    assert arr == listed
    assert arr != ResponseOutput("y", [3, 1], "INT32", [1, 2, 4], Parameters(content_type="np"))
    nan = ResponseOutput("y", [2], "FP64", np.array([1.0, np.nan]))
    assert nan == ResponseOutput("y", [2], "FP64", [1.0, None]), "NaN equals JSON's null"
    assert InferenceResponse("m", outputs=[arr]) == InferenceResponse("m", outputs=[listed])
    assert InferenceRequest(inputs=[RequestInput("x", [1], "BYTES", [b"a"])]) != InferenceRequest(
        inputs=[RequestInput("x", [1], "BYTES", [b"b"])]
    )


def test_datatype_enum_is_kept_as_its_name():
    ri = RequestInput(name="x", shape=[1], datatype=Datatype.FP32, data=[1.0])
    assert type(ri.datatype) is str and ri.datatype == "FP32" == Datatype.FP32


def test_tensor_data():
    data = TensorData.parse_raw("[1, 2.5, true]")
    assert data == TensorData(root=[1, 2.5, True]) and list(data) == [1, 2.5, True] and len(data) == 3
    assert RequestInput("x", [2], "INT32", TensorData(root=[1, 2])).data == [1, 2]


def test_pydantic_method_names(tmp_path):
    body = {"id": "1", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5],
                                   "parameters": {"content_type": "np"}}], "outputs": [{"name": "y"}]}
    request = InferenceRequest.model_validate(body)
    assert isinstance(request.inputs[0], RequestInput) and isinstance(request.outputs[0], RequestOutput)
    assert request.inputs[0].parameters.content_type == "np"
    assert request.model_dump() == body and request.dict() == body
    assert json.loads(request.model_dump_json()) == body
    path = tmp_path / "r.json"
    path.write_text(json.dumps(body))
    assert InferenceRequest.parse_file(str(path)) == request == InferenceRequest.parse_raw(json.dumps(body))
    copy = request.model_copy(update={"id": "2"}, deep=True)
    assert copy.id == "2" and request.id == "1"
    with pytest.raises(errors.InferenceError, match="datatype"):
        InferenceRequest.model_validate(
            {"inputs": [{"name": "x", "shape": [1], "datatype": "F", "data": []}]}
        )


def test_hand_built_parameters_mappings_become_parameters():
    ri = RequestInput("x", [1], "BYTES", ["hi"], parameters={"content_type": "str"})
    assert isinstance(ri.parameters, Parameters) and ri.parameters.content_type == "str"


# -- the decoded-payload cache ---------------------------------------------------------


def test_decoded_payload_is_cached_and_never_serialised():
    ri = RequestInput("x", [2], "INT32", [1, 2], parameters=Parameters(content_type="np"))
    decoded = codecs.decode_request_input(ri)
    assert codecs.has_decoded(ri) and codecs.get_decoded(ri) is decoded
    assert codec_utils.DecodedParameterName not in ri.parameters.to_dict()
    assert ri.parameters == Parameters(content_type="np"), "equality ignores the cache"
    request = InferenceRequest(inputs=[RequestInput("x", [1], "INT32", [5],
                                                    parameters=Parameters(_decoded_payload=np.array([9])))])
    assert codecs.NumpyRequestCodec.decode_request(request).tolist() == [9], "a request codec uses the cache"
    assert codecs.get_decoded_or_raw(RequestInput("x", [1], "INT32", [7])) == [7]


def test_decode_inference_request_and_encode_helpers():
    request = InferenceRequest(parameters=Parameters(content_type="np"),
                               inputs=[RequestInput("x", [2], "FP32", [1, 2])])
    assert codecs.decode_inference_request(request).tolist() == [1.0, 2.0]
    settings = ModelSettings(name="m", implementation="models.M", parameters={"version": "3"})
    response = codecs.encode_inference_response(np.array([1, 2]), settings)
    assert (response.model_name, response.model_version) == ("m", "3")
    assert response.parameters.content_type == "np"
    output = codecs.encode_response_output(["a"], RequestOutput("o"))
    assert output.parameters.content_type == "str" and output.data == [b"a"]


# -- codecs -----------------------------------------------------------------------------


def predict(foo: np.ndarray, bar: List[str]) -> np.ndarray:
    return foo


def test_signature_codec():
    codec = codecs.SignatureCodec(predict)
    assert codec._input_codecs == {"foo": codecs.NumpyCodec, "bar": codecs.StringCodec}
    assert codec._output_codecs == [codecs.NumpyCodec]
    request = InferenceRequest(inputs=[codecs.NumpyCodec.encode_input("foo", np.array([[1, 2]])),
                                       codecs.StringCodec.encode_input("bar", ["q"])])
    kwargs = codec.decode_request(request)
    assert kwargs["bar"] == ["q"] and kwargs["foo"].tolist() == [[1, 2]]
    response = codec.encode_response(model_name="m", payload=np.array([3]))
    assert response.model_name == "m" and response.outputs[0].name == "output-0"
    request.inputs[0].name = "nope"
    with pytest.raises(codecs.InputsNotFound) as caught:
        codec.decode_request(request)
    assert caught.value.status_code == 400
    with pytest.raises(codecs.OutputNotFound):
        codec.encode_response(model_name="m", payload=("a", np.array([1])))


def tuple_return(foo: np.ndarray) -> (np.ndarray, List[str]):  # type: ignore[syntax]
    return foo, ["x"]


def typing_tuple_return(foo: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    return foo, ["x"]


@pytest.mark.parametrize("fn", [tuple_return, typing_tuple_return])
def test_tuple_return_annotations(fn):
    assert codecs.SignatureCodec(fn)._output_codecs == [codecs.NumpyCodec, codecs.StringCodec]


def test_base64_encodes_text_as_its_utf8_bytes():
    output = codecs.Base64Codec.encode_output("b", ["héllo"], use_bytes=False)
    assert output.data == ["aMOpbGxv"]
    assert codecs.Base64Codec.decode_output(output) == ["héllo".encode()]


def test_pandas_json_columns_round_trip():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [{"k": 1}, [1, 2]], "b": ["x", "y"], "c": [b"\xff", b"z"]})
    response = codecs.PandasCodec.encode_response("m", frame)
    by_name = {o.name: o for o in response.outputs}
    assert by_name["a"].parameters.content_type == "pd_json"
    assert by_name["a"].data == [b'{"k":1}', b"[1,2]"]
    assert by_name["b"].parameters.content_type == "str"
    assert by_name["c"].parameters is None, "bytes that are not UTF-8 are not called text"
    back = codecs.PandasCodec.decode_response(response)
    assert back["a"].tolist() == [{"k": 1}, [1, 2]]


# -- errors -----------------------------------------------------------------------------


def test_mlserver_error_keeps_its_status_code():
    error = errors.MLServerError("teapot", 418)
    assert (error.status_code, error.kind) == (418, "UNKNOWN"), "gRPC: UNKNOWN, as MLServer maps it"
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.status_code, str(again)) == (errors.MLServerError, 418, "teapot")
    assert errors.InvalidModelURI("m", "/x").status_code == 422
    assert isinstance(errors.InferenceError("x"), errors.MLServerError)
    assert isinstance(errors.ModelNotFound("m"), errors.MLServerError)
    assert errors.ModelNotFound("m").status_code == 404
    assert codecs.CodecError("x").status_code == 500


def test_mlserver_error_status_crosses_the_worker_pipe():
    from v2d.workers._errors import describe, rebuild

    class Custom(errors.MLServerError):
        pass

    rebuilt = rebuild(describe(Custom("conflict", 409)))
    assert rebuilt.status_code == 409 and str(rebuilt) == "conflict"


# -- settings -----------------------------------------------------------------------------


class Runtime:
    pass


def test_model_settings_built_as_mlservers(tmp_path):
    settings = ModelSettings(name="m", implementation=Runtime,
                             parameters={"uri": "./m.bin", "threshold": 0.5},
                             inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}])
    assert isinstance(settings.parameters, ModelParameters)
    assert settings.parameters.threshold == 0.5 and settings.parameters.extra == {"threshold": 0.5}
    assert settings.implementation is Runtime
    assert settings.implementation_ == f"{__name__}.Runtime"
    assert settings.inputs[0].name == "x"
    settings._source = str(tmp_path / "model-settings.json")
    assert settings.folder == str(tmp_path)


def test_model_settings_file_forms(tmp_path):
    (tmp_path / "model-settings.json").write_text(json.dumps(
        {"model": "sum-model", "implementation": "models.M", "parameters": {"uri": "./w.bin", "format": "x"},
         "warm_workers": True, "cache_enabled": False}
    ))
    settings = ModelSettings.parse_file(str(tmp_path / "model-settings.json"))
    assert settings.name == "sum-model", "the docs' 'model' field names the model"
    assert settings.parameters.uri == str(tmp_path / "w.bin")
    assert settings.unknown_fields == []
    keep = ModelSettings.from_dict({"name": "s", "implementation": "m.M", "parameters": {"uri": "s3://b/k"}},
                                   folder=str(tmp_path))
    assert keep.parameters.uri == "s3://b/k"


def test_mlserver_model_variables_override_and_v2d_wins():
    env = {"MLSERVER_MODEL_URI": "/m", "MLSERVER_MODEL_NAME": "a", "V2D_MODEL_NAME": "b",
           "MLSERVER_MODEL_VERSION": "7"}
    assert ModelSettings.environ_overrides(env) == {"parameters": {"uri": "/m", "version": "7"}, "name": "b"}


@pytest.mark.parametrize(
    "uri, source, expected",
    [
        ("s3://bucket/key", "/mnt/models/model-settings.json", "s3://bucket/key"),
        ("my-model.bin", "./folder/model-settings.json", "folder/my-model.bin"),
        ("file:my-model.bin", "./folder/../model-settings.json", "my-model.bin"),
        ("/abs/my-model.bin", "/mnt/models/model-settings.json", "/abs/my-model.bin"),
    ],
)
def test_get_model_uri(uri, source, expected, monkeypatch):
    from v2d.utils import get_model_uri

    settings = ModelSettings(name="m", implementation="m.M", parameters={"uri": uri})
    settings._source = source
    monkeypatch.setattr("os.path.isfile", lambda path: True)
    assert asyncio.run(get_model_uri(settings)) == expected


def test_get_model_uri_missing_file_is_a_422(tmp_path):
    from v2d.utils import get_model_uri

    settings = ModelSettings(name="m", implementation="m.M", parameters={"uri": "nope.bin"})
    settings._source = str(tmp_path / "model-settings.json")
    with pytest.raises(errors.InvalidModelURI) as caught:
        asyncio.run(get_model_uri(settings))
    assert caught.value.status_code == 422


# -- runtime -----------------------------------------------------------------------------


def test_predict_stream_falls_back_to_predict():
    from v2d import MLModel

    class Plain(MLModel):
        async def predict(self, payload):
            return InferenceResponse(model_name=self.name, id=payload.id)

    model = Plain(ModelSettings(name="p", implementation="m.M"))

    async def payloads():
        for i in ("1", "2"):
            yield InferenceRequest(id=i)

    async def collect():
        return [r.id async for r in model.predict_stream(payloads())]

    assert asyncio.run(collect()) == ["1", "2"]


def test_model_folder_imports_of_mlserver_map_to_v2d(tmp_path):
    from v2d import importer

    if importer.mlserver_installed():
        pytest.skip("MLServer is installed here: model code gets the real package")
    (tmp_path / "models.py").write_text(textwrap.dedent("""
        import mlserver.codecs
        from mlserver import MLModel
        from mlserver.codecs.numpy import NumpyCodec
        from mlserver.metrics import register, log
        CODECS = mlserver.codecs
        REGISTER = register
        class R(MLModel):
            pass
    """))
    cls, namespace = importer.load_implementation(str(tmp_path), "models.R")
    try:
        from v2d import MLModel

        assert issubclass(cls, MLModel)
        module = importlib.import_module(cls.__module__)
        assert module.CODECS is codecs
        from v2d import custom_metrics

        assert module.REGISTER is custom_metrics.register, "the child-safe module, not the server's"
    finally:
        namespace.forget()


def test_async_manager_runs_a_coroutine():
    from v2d.utils import AsyncManager

    async def answer():
        await asyncio.sleep(0)
        return 42

    assert AsyncManager().run(answer()) == 42
