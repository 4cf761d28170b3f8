"""
Custom handlers (``@custom_handler``): finding them on a runtime, binding a request to
their arguments, and serving them from the REST tree in memory (StubTreq over a real
registry and dataplane; no ports, no reactor).
"""

from __future__ import annotations

import json
import textwrap
from typing import Any, List, Optional

import pytest
from treq.testing import StubTreq

from tests.support.model_folder import write_model
from v2d.dataplane import DataPlane
from v2d.errors import FailedPrecondition, InvalidArgument
from v2d.handlers import custom_handler, get_custom_handlers
from v2d.handlers._arguments import bind_arguments
from v2d.handlers.custom import HandlerRoute, handler_routes
from v2d.metrics import Metrics
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.rest import RestAPI
from v2d.rest._custom import CustomRoutes, encode_result, klein_serves
from v2d.rest._router import RootResource
from v2d.wrappers import LocalModelFactory

# -- finding handlers -------------------------------------------------------------


class _Base:
    @custom_handler(rest_path="/base")
    def base(self, payload: list) -> int:
        return len(payload)

    @custom_handler(rest_path="/overridden")
    def overridden(self) -> str:
        return "base"


class _Runtime(_Base):
    def overridden(self) -> str:  # not marked here: no longer a handler
        return "sub"

    @custom_handler(rest_path="/get", rest_method="get")
    def get(self, x: int) -> int:
        return x

    @property
    def boom(self) -> Any:
        raise RuntimeError("properties are never evaluated")


class _ForeignMarker:
    """What another framework's decorator leaves (MLServer's is a pydantic model)."""

    def __init__(self, rest_path: str, rest_method: str) -> None:
        self.rest_path = rest_path
        self.rest_method = rest_method


class _Foreign:
    def handler(self) -> str:
        return "foreign"

    handler.__custom_handler__ = _ForeignMarker("/foreign", "put")  # type: ignore[attr-defined]


def test_handlers_are_found_on_the_class_chain_without_evaluating_properties():
    runtime = _Runtime()
    found = get_custom_handlers(runtime)
    assert sorted(h.rest_path for h, _ in found) == ["/base", "/get"]
    by_path = {h.rest_path: m for h, m in found}
    assert by_path["/get"](3) == 3 and by_path["/base"]([1, 2]) == 2
    assert handler_routes(runtime) == [
        HandlerRoute(method="POST", path="/base", attribute="base"),
        HandlerRoute(method="GET", path="/get", attribute="get"),
    ]


def test_any_marker_with_rest_path_and_method_counts():
    assert handler_routes(_Foreign()) == [HandlerRoute(method="PUT", path="/foreign", attribute="handler")]


# -- binding arguments --------------------------------------------------------------


def _marker(kind: str, default: Any = ..., embed: bool = False) -> Any:
    """A stand-in for FastAPI's Body(...) / Query(...) (FastAPI need not be installed)."""
    cls = type(kind, (), {"__module__": "fastapi.params"})
    marker = cls()
    marker.default = default
    marker.embed = embed
    return marker


BODY = _marker("Body")
EMBEDDED_BODY = _marker("Body", embed=True)
QUERY_5 = _marker("Query", 5)
REQUIRED_QUERY = _marker("Query")


class _Signatures:
    def one(self, payload: list) -> Any:
        return payload

    def several(self, a: int, b: str = "b", c: Optional[float] = None) -> Any:
        return a, b, c

    def union(self, a: int | None, b: "float | None" = None) -> Any:
        return a, b

    def query(self, n: int, flag: bool = False, tags: List[str] = []) -> Any:  # noqa: B006
        return n, flag, tags

    def fastapi(self, payload: list = BODY, limit: int = QUERY_5) -> Any:
        return payload, limit

    def embedded(self, payload: list = EMBEDDED_BODY) -> Any:
        return payload

    def required_query(self, key: str = REQUIRED_QUERY) -> Any:
        return key


def _bind(name: str, body: Any = None, query: Optional[dict] = None, has_body: Optional[bool] = None) -> Any:
    method = getattr(_Signatures(), name)
    present = body is not None if has_body is None else has_body
    args, kwargs = bind_arguments(method, present, body, query or {})
    return method(*args, **kwargs)


def test_one_parameter_takes_the_whole_body():
    assert _bind("one", [1, 2, 3]) == [1, 2, 3]


def test_several_parameters_take_the_body_members_by_name_then_the_query_then_defaults():
    assert _bind("several", {"a": 1, "c": 2}) == (1, "b", 2)
    assert _bind("several", None, {"a": ["7"], "b": ["x"]}) == (7, "x", None)


def test_optional_arguments_take_null_and_convert_as_their_type():
    assert _bind("union", {"a": None, "b": 2}) == (None, 2)
    assert _bind("union", None, {"a": ["4"], "b": ["0.5"]}) == (4, 0.5)
    with pytest.raises(InvalidArgument, match="argument 'a' must be an integer, got str"):
        _bind("union", {"a": "4"})


def test_query_strings_are_converted_by_annotation():
    assert _bind("query", None, {"n": ["3"], "flag": ["true"], "tags": ["a", "b"]}) == (3, True, ["a", "b"])


def test_fastapi_markers_say_where_an_argument_comes_from():
    assert _bind("fastapi", [1], {"limit": ["9"]}) == ([1], 9)
    assert _bind("fastapi", [1]) == ([1], 5)
    assert _bind("embedded", {"payload": [4]}) == [4]
    with pytest.raises(InvalidArgument, match="missing argument 'key' \\(expected in the query string\\)"):
        _bind("required_query", {"key": "in the body is not enough"})


@pytest.mark.parametrize(
    "name, body, query, message",
    [
        ("one", None, None, "missing argument 'payload' (expected in the JSON body)"),
        ("several", [1], None, "request body must be a JSON object with the members 'a', 'b', 'c'"),
        ("several", {"b": "x"}, None, "missing argument 'a' (expected in the JSON body or the query string)"),
        ("several", {"a": "1"}, None, "argument 'a' must be an integer, got str"),
        ("several", {"a": True}, None, "argument 'a' must be an integer, got bool"),
        ("one", {"x": 1}, None, "argument 'payload' must be a list, got dict"),
        ("query", None, {"n": ["three"]}, "query parameter 'n' must be an integer, got 'three'"),
        ("query", None, {"n": ["1"], "flag": ["maybe"]}, "query parameter 'flag' must be true or false"),
        ("fastapi", None, None, "missing argument 'payload' (expected in the JSON body)"),
    ],
)
def test_bad_arguments_are_named(name, body, query, message):
    with pytest.raises(InvalidArgument) as info:
        _bind(name, body, query)
    assert message in str(info.value)


def test_results_encode_as_json():
    import numpy as np

    class Model:
        def model_dump(self) -> dict:
            return {"a": np.float32(1.5)}

    assert json.loads(encode_result({"x": np.arange(3), "m": Model(), "s": {1}, "b": b"hi"})) == {
        "x": [0, 1, 2],
        "m": {"a": 1.5},
        "s": [1],
        "b": "hi",
    }
    with pytest.raises(TypeError):
        encode_result(object())


# -- served from the REST tree --------------------------------------------------------

RUNTIME = """
import os
from twisted.internet.defer import succeed
from v2d import MLModel
from v2d.errors import InferenceError
from v2d.handlers import custom_handler


class Teapot(Exception):
    status_code = 418


class Handlers(MLModel):
    @custom_handler(rest_path="/sum")
    def total(self, payload: list) -> int:
        return sum(payload)

    @custom_handler(rest_path="/scale", rest_method="GET")
    def scale(self, value: float, factor: int = 2):
        return {"scaled": value * factor, "model": self.name}

    @custom_handler(rest_path="/deferred")
    def deferred(self, a: int, b: int):
        return succeed(a * b)

    @custom_handler(rest_path="/fail")
    def fail(self, how: str):
        if how == "inference":
            raise InferenceError("bad input for fail()")
        if how == "teapot":
            raise Teapot("short and stout")
        raise ValueError("it broke")

    def predict(self, payload):
        raise NotImplementedError
"""

OTHER = """
from v2d import MLModel
from v2d.handlers import custom_handler


class Other(MLModel):
    @custom_handler(rest_path=PATH, rest_method=METHOD)
    def clash(self):
        return "other"

    def predict(self, payload):
        raise NotImplementedError
"""


@pytest.fixture
def served(tmp_path):
    write_model(tmp_path, "handlers", "models.Handlers", RUNTIME)
    repository = ModelRepository(str(tmp_path), environ={})
    routes = CustomRoutes(
        reserved=lambda method, path: path == "/metrics" or klein_serves(RestAPI.app, method, path),
        draining=lambda: dataplane.draining,
    )
    factory = LocalModelFactory(metrics=Metrics())
    registry = ModelRegistry(
        factory_for=lambda settings: factory, on_ready=routes.mount, on_unload=routes.unmount
    )
    dataplane = DataPlane(registry=registry, repository=repository)
    dataplane.load_all()
    api = RestAPI(dataplane)
    stub = StubTreq(RootResource(api, api.app.resource(), routes=routes))
    return stub, dataplane, routes, tmp_path


def call(stub: StubTreq, method: str, path: str, body: Any = None) -> tuple:
    results: List[Any] = []
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    d = stub.request(method, "http://v2d" + path, data=data)
    d.addCallback(lambda response: stub.content(response).addCallback(lambda content: (response, content)))
    d.addBoth(results.append)
    stub.flush()
    response, content = results[0]
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    return response.code, json.loads(content)


def test_post_with_a_json_body(served):
    stub = served[0]
    assert call(stub, "POST", "/sum", [1, 2, 3, 4]) == (200, 10)


def test_get_with_query_parameters(served):
    stub = served[0]
    assert call(stub, "GET", "/scale?value=1.5") == (200, {"scaled": 3.0, "model": "handlers"})
    assert call(stub, "GET", "/scale?value=2&factor=10") == (200, {"scaled": 20.0, "model": "handlers"})


def test_a_deferred_result_and_arguments_by_name(served):
    stub = served[0]
    assert call(stub, "POST", "/deferred", {"a": 6, "b": 7}) == (200, 42)


def test_bad_requests_are_400_naming_the_problem(served):
    stub = served[0]
    code, body = call(stub, "POST", "/sum", b"[1, 2")
    assert code == 400 and body["error"].startswith("request body is not valid JSON")
    missing = "missing argument 'payload' (expected in the JSON body)"
    assert call(stub, "POST", "/sum") == (400, {"error": missing})
    assert call(stub, "GET", "/scale?value=x") == (
        400,
        {"error": "query parameter 'value' must be a number, got 'x'"},
    )


def test_errors_of_the_handler(served):
    stub = served[0]
    assert call(stub, "POST", "/fail", "inference") == (400, {"error": "bad input for fail()"})
    assert call(stub, "POST", "/fail", "teapot") == (418, {"error": "short and stout"})
    assert call(stub, "POST", "/fail", "other") == (500, {"error": "ValueError: it broke"})
    assert call(stub, "POST", "/fail?how=teapot") == (418, {"error": "short and stout"})


def test_calls_are_refused_while_the_server_drains(served):
    stub, dataplane = served[:2]
    dataplane.draining = True
    assert call(stub, "POST", "/sum", [1]) == (503, {"error": "server is shutting down"})


def test_the_wrong_method_is_not_served(served):
    stub = served[0]
    assert call(stub, "GET", "/sum")[0] == 404


def test_unload_removes_the_routes_and_load_brings_them_back(served):
    stub, dataplane, routes, _ = served
    dataplane.unload_model("handlers")
    assert len(routes) == 0
    assert call(stub, "POST", "/sum", [1]) == (404, {"error": "no such endpoint: POST /sum"})
    dataplane.load_model("handlers")
    assert call(stub, "POST", "/sum", [1]) == (200, 1)


@pytest.mark.parametrize(
    "path, method, reason",
    [
        ("/sum", "POST", "POST /sum is already served by model 'handlers'"),
        ("/items/{id}", "GET", "has path parameters"),
        ("relative", "POST", "must start with '/'"),
    ],
)
def test_a_model_whose_handler_cannot_be_mounted_fails_to_load(served, path, method, reason):
    stub, dataplane, routes, root = served
    write_model(root, "other", "models.Other", f"PATH = {path!r}\nMETHOD = {method!r}\n" + OTHER)
    failures: List[Any] = []
    dataplane.load_model("other").addErrback(failures.append)
    assert len(failures) == 1 and isinstance(failures[0].value, FailedPrecondition)
    assert "custom handler clash() of model 'other'" in str(failures[0].value)
    assert reason in str(failures[0].value)
    entry = [e for e in dataplane.repository_index() if e["name"] == "other"][0]
    assert entry["state"] == "UNAVAILABLE" and reason in entry["reason"]
    assert call(stub, "POST", "/sum", [2]) == (200, 2), "the first model keeps its route"
    assert sorted(r.path for r in routes) == ["/deferred", "/fail", "/scale", "/sum"]


@pytest.mark.parametrize("path, method", [("/v2/health/live", "GET"), ("/metrics", "GET"),
                                          ("/v2/models/other/config", "GET")])
def test_a_handler_at_one_of_the_servers_endpoints_is_left_out(served, path, method):
    """A runtime written for MLServer may add an endpoint MLServer lacks (a /config): v2d keeps its own."""
    stub, dataplane, routes, root = served
    write_model(root, "other", "models.Other", f"PATH = {path!r}\nMETHOD = {method!r}\n" + OTHER)
    loaded: List[Any] = []
    dataplane.load_model("other").addBoth(loaded.append)
    assert loaded and not hasattr(loaded[0], "value"), loaded
    entry = [e for e in dataplane.repository_index() if e["name"] == "other"][0]
    assert entry["state"] == "READY"
    assert path not in [r.path for r in routes]


def test_a_reload_replaces_the_models_routes(served):
    stub, dataplane, routes, root = served
    (root / "handlers" / "models.py").write_text(
        textwrap.dedent(
            """
            from v2d import MLModel
            from v2d.handlers import custom_handler

            class Handlers(MLModel):
                @custom_handler(rest_path="/sum")
                def total(self, payload: list) -> int:
                    return -sum(payload)

                def predict(self, payload):
                    raise NotImplementedError
            """
        )
    )
    dataplane.load_model("handlers")
    assert call(stub, "POST", "/sum", [1, 2]) == (200, -3)
    assert [r.path for r in routes] == ["/sum"]


def test_a_handler_at_a_reserved_path_is_left_out_and_the_others_mounted():
    routes = CustomRoutes(reserved=lambda method, path: path == "/taken")

    class Model:
        custom_handlers = [HandlerRoute("POST", "/free", "a"), HandlerRoute("POST", "/taken", "b")]

    from zope.interface import directlyProvides

    from v2d.interfaces import ICustomHandlers

    model = Model()
    directlyProvides(model, ICustomHandlers)
    routes.mount("m", "", model)
    assert [r.path for r in routes] == ["/free"], "v2d's own endpoint is kept, the rest mounted"


def test_fastapis_own_markers_when_it_is_installed():
    fastapi = pytest.importorskip("fastapi")

    class Runtime:
        def handler(self, payload: list = fastapi.Body(...), limit: int = fastapi.Query(5)) -> Any:  # noqa: B008
            return payload, limit

        def required(self, key: str = fastapi.Query(...)) -> Any:  # noqa: B008
            return key

    method = Runtime().handler
    args, kwargs = bind_arguments(method, True, [1, 2], {"limit": ["3"]})
    assert method(*args, **kwargs) == ([1, 2], 3)
    args, kwargs = bind_arguments(method, True, [1], {})
    assert method(*args, **kwargs) == ([1], 5)
    with pytest.raises(InvalidArgument, match="missing argument 'payload'"):
        bind_arguments(method, False, None, {})
    with pytest.raises(InvalidArgument, match="missing argument 'key'"):
        bind_arguments(Runtime().required, False, None, {})
