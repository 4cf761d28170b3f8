"""
Fixtures for MLServer's API tests run against v2d (copied next to them by run.py).

Written for v2d: models are built the way a runtime author builds them (settings
objects, ``await model.load()``), not through a server.
"""

import inspect
import json
import os

import pytest

from v2d import types
from v2d.settings import ModelSettings, Settings

from .fixtures import SimpleModel, SumModel, TextModel, TextStreamModel

TESTS_PATH = os.path.dirname(__file__)
TESTDATA_PATH = os.path.join(TESTS_PATH, "testdata")


def _read(name):
    with open(os.path.join(TESTDATA_PATH, name)) as f:
        return json.load(f)


async def _loaded(cls, settings):
    model = cls(settings)
    result = model.load()
    if inspect.isawaitable(result):
        result = await result
    model.ready = result if isinstance(result, bool) else True
    return model


@pytest.fixture
def sum_model_settings():
    values = _read("model-settings.json")
    values["implementation"] = SumModel
    return ModelSettings(**values)


@pytest.fixture
def simple_model_settings(sum_model_settings):
    sum_model_settings.name = "simple-model"
    sum_model_settings.implementation = SimpleModel
    return sum_model_settings


@pytest.fixture
def text_model_settings():
    return ModelSettings(
        name="text-model", implementation=TextModel, parallel_workers=0, parameters={"version": "v1.2.3"}
    )


@pytest.fixture
def text_stream_model_settings():
    return ModelSettings(
        name="text-stream-model",
        implementation=TextStreamModel,
        parallel_workers=0,
        parameters={"version": "v1.2.3"},
    )


@pytest.fixture
async def sum_model(sum_model_settings):
    return await _loaded(SumModel, sum_model_settings)


@pytest.fixture
async def simple_model(simple_model_settings):
    return await _loaded(SimpleModel, simple_model_settings)


@pytest.fixture
async def text_model(text_model_settings):
    return await _loaded(TextModel, text_model_settings)


@pytest.fixture
async def text_stream_model(text_stream_model_settings):
    return await _loaded(TextStreamModel, text_stream_model_settings)


@pytest.fixture
def inference_request():
    return types.InferenceRequest.parse_file(os.path.join(TESTDATA_PATH, "inference-request.json"))


@pytest.fixture
def generate_request():
    return types.InferenceRequest.parse_file(os.path.join(TESTDATA_PATH, "generate-request.json"))


@pytest.fixture
def inference_response():
    return types.InferenceResponse.parse_file(os.path.join(TESTDATA_PATH, "inference-response.json"))


@pytest.fixture
def inference_request_invalid_datatype():
    return _read("inference-request-invalid-datatype.json")


@pytest.fixture
def datatype_error_message():
    names = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
    names += ["FP16", "FP32", "FP64"]
    return "Input should be " + ", ".join(f"'{n}'" for n in names) + " or 'BYTES'"


@pytest.fixture
def settings():
    return Settings.parse_file(os.path.join(TESTDATA_PATH, "settings.json"))


def pytest_collection_modifyitems(config, items):
    """Of test_utils.py, only test_get_model_uri (the rest test MLServer's event-loop manager)."""
    keep, drop = [], []
    for item in items:
        if item.nodeid.startswith("tests/test_utils.py::") and not item.name.startswith("test_get_model_uri"):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
