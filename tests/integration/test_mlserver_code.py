"""
Runtime code written for MLServer, served by a real ``twistd v2d`` without MLServer
installed: ``import mlserver...`` in a model folder resolves to v2d's modules of the
same paths, in-process, in worker processes and in an environment of another Python
(which has numpy and nothing of MLServer's or v2d's).

The runtimes are the examples of MLServer's documentation on custom runtimes, as
written there; where an example leaves a name undefined (``load_my_custom_model``) or
misspells one (``payload.parametes``, a missing import), the model folder supplies the
name or the fix, and says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import textwrap

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration

# "Writing a custom inference runtime": the advanced interface, as the docs write it.
ADVANCED = '''
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse

from helpers import load_my_custom_model  # the docs leave it undefined


class MyCustomRuntime(MLModel):

  async def load(self) -> bool:
    # TODO: Replace for custom logic to load a model artifact
    self._model = load_my_custom_model()
    return True

  async def predict(self, payload: InferenceRequest) -> InferenceResponse:
    # TODO: Replace for custom logic to run inference
    return self._model.predict(payload)
'''

HELPERS = '''
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class _Doubler:
    def predict(self, payload):
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(model_name="sum-model", outputs=[NumpyCodec.encode_output("y", x * 2)])


def load_my_custom_model():
    return _Doubler()
'''

# "Simplified interface", as written (the docs use np without importing numpy).
SIMPLIFIED = '''
import numpy as np  # missing from the docs' example

from mlserver import MLModel
from mlserver.codecs import decode_args
from typing import List


class _QA:
    def predict(self, questions, context):
        return np.array([len(q) + len(c) for q, c in zip(questions, context)])


def load_my_custom_model():  # the docs leave it undefined
    return _QA()


class MyCustomRuntime(MLModel):

  async def load(self) -> bool:
    # TODO: Replace for custom logic to load a model artifact
    self._model = load_my_custom_model()
    return True

  @decode_args
  async def predict(self, questions: List[str], context: List[str]) -> np.ndarray:
    # TODO: Replace for custom logic to run inference
    return self._model.predict(questions, context)
'''

# "Read and write headers": both halves in one runtime (the docs misspell
# ``parameters`` once, import no Parameters and give no model_name).
HEADERS = '''
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, Parameters


class CustomHeadersRuntime(MLModel):

  async def predict(self, payload: InferenceRequest) -> InferenceResponse:
    seen = "-"
    if payload.parameters and payload.parameters.headers:
      # These are all the incoming HTTP headers / gRPC metadata
      print(payload.parameters.headers)
      seen = payload.parameters.headers.get("x-tenant", "-")
    return InferenceResponse(
      model_name=self.name,
      # Include any actual outputs from inference
      outputs=[],
      parameters=Parameters(headers={"foo": "bar", "x-seen-tenant": seen})
    )
'''


def write_folder(root: str, folder: str, settings: dict, files: dict) -> str:
    path = os.path.join(root, folder)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model-settings.json"), "w") as f:
        json.dump(settings, f)
    for name, source in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(textwrap.dedent(source))
    return path


def docs_models(root: str) -> str:
    # The docs' model-settings.json form: "model" (not "name") and the implementation.
    write_folder(root, "sum-model", {"model": "sum-model", "implementation": "models.MyCustomRuntime"},
                 {"models.py": ADVANCED, "helpers.py": HELPERS})
    write_folder(root, "qa", {"name": "qa", "implementation": "models.MyCustomRuntime"},
                 {"models.py": SIMPLIFIED})
    write_folder(root, "headers", {"name": "headers", "implementation": "models.CustomHeadersRuntime"},
                 {"models.py": HEADERS})
    return root


def check_docs_models(d: Daemon) -> None:
    status, out, _ = d.post("/v2/models/sum-model/infer", {
        "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert status == 200, out
    assert out["model_name"] == "sum-model"
    assert out["outputs"][0]["data"] == [2, 4, 6]

    status, out, _ = d.post("/v2/models/qa/infer", {"inputs": [
        {"name": "questions", "shape": [2], "datatype": "BYTES", "data": ["what?", "who?"]},
        {"name": "context", "shape": [2], "datatype": "BYTES", "data": ["abc", "x"]}]})
    assert status == 200, out
    assert out["outputs"][0]["data"] == [8, 5]

    status, out, headers = d.post(
        "/v2/models/headers/infer",
        {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
        headers={"X-Tenant": "acme"},
    )
    assert status == 200, out
    lowered = {k.lower(): v for k, v in headers.items()}
    assert lowered["foo"] == "bar"
    assert lowered["x-seen-tenant"] == "acme"
    assert "parameters" not in out or "headers" not in out["parameters"]


def test_server_lacks_mlserver():
    assert importlib.util.find_spec("mlserver") is None, "these tests are about MLServer being absent"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_mlserver_docs_examples_run_as_written(tmp_path, workers):
    models = docs_models(str(tmp_path / "models"))
    with Daemon(models, "--workers", workers, grpc=False) as d:
        check_docs_models(d)


def test_mlserver_imports_in_an_environment_of_another_python(env_tarball, tmp_path):
    """The docs' environment example: a tarball without MLServer (or v2d), the runtime imports mlserver."""
    models = str(tmp_path / "models")
    folder = write_folder(
        models, "sum-model",
        {"model": "sum-model", "implementation": "models.MyCustomRuntime",
         "parameters": {"environment_tarball": "./environment.tar.gz"}},
        {"models.py": ADVANCED, "helpers.py": HELPERS},
    )
    shutil.copy(env_tarball, os.path.join(folder, "environment.tar.gz"))
    with Daemon(models, "--envs-dir", str(tmp_path / "envs"), grpc=False) as d:
        status, out, _ = d.post("/v2/models/sum-model/infer", {
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT32", "data": [5, 7]}]})
        assert status == 200, (out, d.log())
        assert out["outputs"][0]["data"] == [10, 14]
        assert "worker" in d.log()
