"""The Klein app in memory (StubTreq), over a real DataPlane and registry: no ports, no reactor."""

from __future__ import annotations

import json
import textwrap

import pytest
from treq.testing import StubTreq

from v2d.dataplane import DataPlane
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.rest import RestAPI
from v2d.rest._router import RootResource
from v2d.wrappers import LocalModelFactory

RUNTIME = """
import numpy as np
from v2d import MLModel
from v2d.errors import InferenceError
from v2d.types import InferenceResponse, Parameters, ResponseOutput

class Echo(MLModel):
    def predict(self, payload):
        if payload.parameters and payload.parameters.get("fail"):
            raise InferenceError("asked to fail")
        inp = payload.inputs[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="out", shape=inp.shape, datatype=inp.datatype, data=inp.data)],
            parameters=Parameters(headers={"X-Got": payload.parameters.headers.get("X-Send", "")}),
        )
"""


@pytest.fixture
def api(tmp_path):
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps({"name": "echo", "implementation": "models.Echo"}))
    (folder / "models.py").write_text(textwrap.dedent(RUNTIME))
    repository = ModelRepository(str(tmp_path), environ={})
    registry = ModelRegistry(factory_for=lambda settings: LocalModelFactory())
    dataplane = DataPlane(registry=registry, repository=repository)
    dataplane.load_all()
    api = RestAPI(dataplane)
    return StubTreq(RootResource(api, api.app.resource())), dataplane


def call(stub, method, path, body=None, headers=None):
    results = []
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    d = stub.request(method, "http://v2d" + path, data=data, headers=headers or {})
    d.addCallback(lambda response: stub.content(response).addCallback(lambda content: (response, content)))
    d.addBoth(results.append)
    stub.flush()
    response, content = results[0]
    return response.code, json.loads(content), response.headers


def test_health(api):
    stub, dataplane = api
    assert call(stub, "GET", "/v2/health/live")[:2] == (200, {"live": True})
    assert call(stub, "GET", "/v2/health/ready")[:2] == (200, {"ready": True})
    dataplane.draining = True
    assert call(stub, "GET", "/v2/health/ready")[:2] == (503, {"ready": False})


def test_infer_roundtrip_with_headers(api):
    stub, _ = api
    body = {
        "id": "1",
        "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT16", "data": [[1, 2], [3, 4]]}],
    }
    code, answer, headers = call(stub, "POST", "/v2/models/echo/infer", body, {"X-Send": ["yes"]})
    assert code == 200
    assert answer == {
        "model_name": "echo",
        "id": "1",
        "outputs": [{"name": "out", "shape": [2, 2], "datatype": "INT16", "data": [1, 2, 3, 4]}],
    }
    assert headers.getRawHeaders("X-Got") == ["yes"]


def test_runtime_errors_map_to_statuses(api):
    stub, _ = api
    body = {
        "parameters": {"fail": True},
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
    }
    code, answer, _ = call(stub, "POST", "/v2/models/echo/infer", body)
    assert (code, answer) == (400, {"error": "asked to fail"})
    code, answer, _ = call(stub, "POST", "/v2/models/nope/infer", body)
    assert code == 404 and "nope" in answer["error"]


def test_unknown_routes_are_json(api):
    stub, _ = api
    code, answer, headers = call(stub, "GET", "/nothing")
    assert code == 404 and "error" in answer
    assert headers.getRawHeaders("content-type") == ["application/json"]


def test_repository_index_and_unload(api):
    stub, _ = api
    code, answer, _ = call(stub, "POST", "/v2/repository/index", b"")
    assert code == 200 and answer == [{"name": "echo", "state": "READY", "reason": ""}]
    assert call(stub, "POST", "/v2/repository/models/echo/unload", b"")[0] == 200
    code, answer, _ = call(stub, "POST", "/v2/repository/index", {"ready": True})
    assert answer == []
    assert call(stub, "POST", "/v2/repository/models/echo/load", b"")[0] == 200
    assert call(stub, "GET", "/v2/models/echo/ready")[1] == {"name": "echo", "ready": True}


def test_versions_and_escaped_names_on_the_direct_route(api):
    stub, _ = api
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    assert call(stub, "POST", "/v2/models/%65cho/infer", body)[0] == 200
    code, answer, _ = call(stub, "POST", "/v2/models/echo/versions/3/infer", body)
    assert code == 404 and "version '3'" in answer["error"]
