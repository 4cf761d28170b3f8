"""
What serving MLServer runtimes needs that works without MLServer: implementations in
installed packages, errors that carry their own status code, runtimes built as before.
"""

from __future__ import annotations

import json
import textwrap

import grpc
import pytest
from treq.testing import StubTreq

from v2d.dataplane import DataPlane
from v2d.errors import InvalidArgument, StatusCodeError
from v2d.grpc._service import status_of
from v2d.importer import ImplementationError, load_implementation
from v2d.mlserver_adapter import is_mlserver_model
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.rest import RestAPI
from v2d.rest._router import RootResource
from v2d.runtime import MLModel
from v2d.runtimes import build_runtime, is_streaming
from v2d.settings import ModelSettings
from v2d.workers import _errors
from v2d.wrappers import LocalModelFactory

# -- implementation resolution -------------------------------------------------------


def test_an_installed_module_resolves_when_the_folder_lacks_it(tmp_path):
    cls, namespace = load_implementation(str(tmp_path), "json.decoder.JSONDecoder")
    import json.decoder

    assert cls is json.decoder.JSONDecoder
    namespace.forget()


def test_the_folder_comes_first(tmp_path):
    (tmp_path / "json.py").write_text("class JSONDecoder:\n    mine = True\n")
    cls, namespace = load_implementation(str(tmp_path), "json.JSONDecoder")
    assert cls.mine is True
    namespace.forget()


def test_neither_in_the_folder_nor_installed(tmp_path):
    with pytest.raises(ImplementationError) as info:
        load_implementation(str(tmp_path), "mlserver_nonexistent_runtime.Model")
    message = str(info.value)
    assert "no module 'mlserver_nonexistent_runtime' in model folder" in message
    assert "no installed module 'mlserver_nonexistent_runtime'" in message


def test_an_installed_module_whose_own_import_fails_says_so(tmp_path):
    pkg = tmp_path / "site" / "brokenruntime"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import a_dependency_that_is_missing\n")
    import sys

    sys.path.insert(0, str(tmp_path / "site"))
    try:
        with pytest.raises(ModuleNotFoundError) as info:
            load_implementation(str(tmp_path), "brokenruntime.Model")
        assert info.value.name == "a_dependency_that_is_missing"
    finally:
        sys.path.remove(str(tmp_path / "site"))
        sys.modules.pop("brokenruntime", None)


def test_v2d_runtimes_are_built_as_before(tmp_path):
    (tmp_path / "models.py").write_text(
        "from v2d import MLModel\n"
        "class Plain(MLModel):\n    def predict(self, payload):\n        return None\n"
        "class Streams(MLModel):\n"
        "    async def predict_stream(self, payloads):\n        yield None\n"
    )
    for implementation, streams in (("models.Plain", False), ("models.Streams", True)):
        settings = ModelSettings(name="m", implementation=implementation, folder=str(tmp_path))
        runtime, namespace = build_runtime(settings)
        assert isinstance(runtime, MLModel) and type(runtime).__name__ == implementation.split(".")[1]
        assert not is_mlserver_model(type(runtime))
        assert is_streaming(runtime) is streams
        namespace.forget()


# -- errors with their own status code ------------------------------------------------


@pytest.mark.parametrize(
    "status,kind,code",
    [
        (400, "INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
        (404, "NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        (422, "FAILED_PRECONDITION", grpc.StatusCode.FAILED_PRECONDITION),
        (500, "INTERNAL", grpc.StatusCode.INTERNAL),
        (503, "UNKNOWN", grpc.StatusCode.UNKNOWN),
    ],
)
def test_status_codes_map_as_mlserver_maps_them(status, kind, code):
    error = StatusCodeError("nope", status)
    assert (error.kind, error.status_code, str(error)) == (kind, status, "nope")
    assert status_of(error) == code


def test_status_codes_cross_the_worker_wire():
    again = _errors.rebuild(_errors.describe(StatusCodeError("bad uri", 422)))
    assert isinstance(again, StatusCodeError)
    assert (again.status_code, again.kind, again.message) == (422, "FAILED_PRECONDITION", "bad uri")
    plain = _errors.rebuild(_errors.describe(InvalidArgument("bad")))
    assert type(plain) is InvalidArgument and plain.status_code == 400


RAISES = """
from v2d import MLModel
from v2d.errors import StatusCodeError

class Raises(MLModel):
    def predict(self, payload):
        raise StatusCodeError("status from the runtime", int(payload.parameters.get("status")))
"""


@pytest.fixture
def stub(tmp_path):
    folder = tmp_path / "raises"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps({"implementation": "models.Raises"}))
    (folder / "models.py").write_text(textwrap.dedent(RAISES))
    registry = ModelRegistry(factory_for=lambda settings: LocalModelFactory())
    dataplane = DataPlane(registry=registry, repository=ModelRepository(str(tmp_path), environ={}))
    dataplane.load_all()
    api = RestAPI(dataplane)
    return StubTreq(RootResource(api, api.app.resource()))


@pytest.mark.parametrize("status", [400, 404, 422, 500, 503])
def test_rest_answers_with_the_errors_own_status(stub, status):
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    body = {"parameters": {"status": status}, "inputs": [tensor]}
    results: list = []
    d = stub.request("POST", "http://v2d/v2/models/raises/infer", data=json.dumps(body).encode())
    d.addCallback(lambda response: stub.content(response).addCallback(lambda content: (response, content)))
    d.addBoth(results.append)
    stub.flush()
    response, content = results[0]
    assert (response.code, json.loads(content)) == (status, {"error": "status from the runtime"})
