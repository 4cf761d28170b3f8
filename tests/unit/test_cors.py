"""
CORS, root_path and the metrics endpoints of the REST resource, in memory (StubTreq over
the service's own site resource; a MemoryReactorClock, never the global reactor).

The expected CORS answers are those of MLServer 1.7 (Starlette's CORS middleware), with
one difference: v2d applies ``expose_headers``, which MLServer accepts but never passes on.
"""

from __future__ import annotations

import json

import pytest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from tests.support.model_folder import ECHO, write_model
from v2d.rest._cors import CORSPolicy
from v2d.service import V2DService
from v2d.settings import CORSSettings, Settings

INFER = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [7]}]}


@pytest.fixture
def models(tmp_path):
    write_model(tmp_path / "models", "echo", "models.Echo", ECHO)
    return str(tmp_path / "models")


def serve(models, **fields):
    """The service's REST resource (models loaded) in a StubTreq, and the service."""
    settings = Settings(models=models, grpc=None, envs_dir="unused", **fields)
    service = V2DService(settings, MemoryReactorClock(), environ={})
    if settings.load_models_at_startup:
        service.dataplane.load_all()
    else:
        service.dataplane.started = True
    return StubTreq(service.site.resource), service


def call(stub, method, path, headers=None, body=None):
    """(status, body bytes, headers) of one request."""
    results = []
    data = None if body is None else json.dumps(body).encode()
    d = stub.request(method, "http://v2d" + path, headers=headers or {}, data=data)
    d.addCallback(lambda response: stub.content(response).addCallback(lambda content: (response, content)))
    d.addBoth(results.append)
    stub.flush()
    response, content = results[0]
    return response.code, content, response.headers


def header(headers, name):
    values = headers.getRawHeaders(name.encode())
    return values[0].decode() if values else None


CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-max-age",
    "vary",
)


def cors_headers(headers):
    return {name: header(headers, name) for name in CORS_HEADERS if header(headers, name) is not None}


NAMED = CORSSettings(
    allow_origins=["http://a.example"],
    allow_origin_regex=r"https://.*\.b\.example",
    allow_methods=["GET", "POST"],
    allow_headers=["X-Custom"],
    expose_headers=["X-Out"],
    allow_credentials=True,
    max_age=30,
)


def test_preflight_allowed(models):
    stub, _ = serve(models, cors_settings=NAMED)
    code, body, headers = call(
        stub,
        "OPTIONS",
        "/v2/models/echo/infer",
        {
            "Origin": "http://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-custom, content-type",
        },
    )
    assert (code, body) == (200, b"OK")
    assert header(headers, "content-type") == "text/plain; charset=utf-8"
    assert cors_headers(headers) == {
        "vary": "Origin",
        "access-control-allow-methods": "GET, POST",
        "access-control-max-age": "30",
        "access-control-allow-headers": "Accept, Accept-Language, Content-Language, Content-Type, X-Custom",
        "access-control-allow-credentials": "true",
        "access-control-allow-origin": "http://a.example",
    }


def test_preflight_refused_names_each_reason(models):
    stub, _ = serve(models, cors_settings=NAMED)
    code, body, headers = call(
        stub,
        "OPTIONS",
        "/v2/health/live",
        {
            "Origin": "http://c.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-other",
        },
    )
    assert (code, body) == (400, b"Disallowed CORS origin, method, headers")
    assert "access-control-allow-origin" not in cors_headers(headers)


def test_preflight_by_regex_and_wildcards(models):
    stub, _ = serve(models, cors_settings=NAMED)
    code, _, headers = call(
        stub, "OPTIONS", "/v2", {"Origin": "https://x.b.example", "Access-Control-Request-Method": "GET"}
    )
    assert code == 200 and header(headers, "access-control-allow-origin") == "https://x.b.example"
    # the regular expression must match the whole origin
    code, body, _ = call(
        stub, "OPTIONS", "/v2", {"Origin": "https://x.b.example.evil", "Access-Control-Request-Method": "GET"}
    )
    assert (code, body) == (400, b"Disallowed CORS origin")

    stub, _ = serve(
        models, cors_settings=CORSSettings(allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    )
    code, _, headers = call(
        stub,
        "OPTIONS",
        "/v2/models/echo/infer",
        {
            "Origin": "http://any",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "X-A",
        },
    )
    assert code == 200
    assert cors_headers(headers) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT",
        "access-control-max-age": "600",
        "access-control-allow-headers": "X-A",
    }


def test_mlserver_default_methods_refuse_post_preflight(models):
    # MLServer's documented {"allow_origins": ["*"]} keeps allow_methods at ["GET"]
    stub, _ = serve(models, cors_settings=CORSSettings(allow_origins=["*"]))
    code, body, _ = call(
        stub,
        "OPTIONS",
        "/v2/models/echo/infer",
        {"Origin": "http://x", "Access-Control-Request-Method": "POST"},
    )
    assert (code, body) == (400, b"Disallowed CORS method")


def test_simple_requests(models):
    stub, _ = serve(models, cors_settings=NAMED)
    code, body, headers = call(
        stub, "POST", "/v2/models/echo/infer", {"Origin": "https://x.b.example"}, INFER
    )
    assert code == 200 and json.loads(body)["outputs"][0]["data"] == [7]
    assert cors_headers(headers) == {
        "access-control-allow-origin": "https://x.b.example",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "X-Out",
        "vary": "Origin",
    }
    # an origin not allowed: served, without an allow-origin header (the browser refuses it)
    code, _, headers = call(stub, "GET", "/v2/health/live", {"Origin": "http://c.example"})
    assert code == 200 and header(headers, "access-control-allow-origin") is None
    # no Origin: no CORS headers at all
    code, _, headers = call(stub, "GET", "/v2/health/live")
    assert code == 200 and cors_headers(headers) == {}
    # OPTIONS without Access-Control-Request-Method is not a preflight: it reaches the API
    code, _, headers = call(stub, "OPTIONS", "/v2/health/live", {"Origin": "http://a.example"})
    assert code == 405 and header(headers, "access-control-allow-origin") == "http://a.example"


def test_any_origin_with_cookies_names_the_origin(models):
    stub, _ = serve(models, cors_settings=CORSSettings(allow_origins=["*"]))
    _, _, headers = call(stub, "GET", "/v2", {"Origin": "http://x"})
    assert cors_headers(headers) == {"access-control-allow-origin": "*"}
    _, _, headers = call(stub, "GET", "/v2", {"Origin": "http://x", "Cookie": "a=b"})
    assert cors_headers(headers) == {"access-control-allow-origin": "http://x", "vary": "Origin"}


def test_no_cors_settings_no_cors(models):
    stub, _ = serve(models)
    code, _, headers = call(
        stub, "OPTIONS", "/v2/health/live", {"Origin": "http://x", "Access-Control-Request-Method": "GET"}
    )
    assert code == 405 and cors_headers(headers) == {}


def test_policy_from_settings_is_precomputed():
    policy = CORSPolicy(CORSSettings(allow_origins=["*"], allow_credentials=True))
    # credentials with any origin: preflights name the origin, as Starlette's do
    assert policy.preflight_names_origin
    assert policy.simple_headers == {
        b"access-control-allow-origin": b"*",
        b"access-control-allow-credentials": b"true",
    }


# -- root_path ---------------------------------------------------------------------


def test_root_path_serves_both_paths(models):
    stub, _ = serve(models, root_path="/ml")
    for prefix in ("", "/ml"):
        code, body, _ = call(stub, "GET", prefix + "/v2/health/ready")
        assert (code, json.loads(body)) == (200, {"ready": True}), prefix
        code, body, _ = call(stub, "POST", prefix + "/v2/models/echo/infer", body=INFER)
        assert code == 200 and json.loads(body)["model_name"] == "echo", prefix
        code, body, _ = call(stub, "GET", prefix + "/v2/models/echo")
        assert code == 200 and json.loads(body)["name"] == "echo", prefix
        assert call(stub, "GET", prefix + "/metrics")[0] == 200
    # a path that only starts with the same letters is not under the prefix
    assert call(stub, "GET", "/mlx/v2/health/live")[0] == 404
    code, body, _ = call(stub, "GET", "/ml/nope")
    assert code == 404 and json.loads(body) == {"error": "no such endpoint: GET /ml/nope"}


def test_root_path_deeper_and_with_trailing_slash(models):
    stub, _ = serve(models, root_path="/a/b/")
    assert call(stub, "GET", "/a/b/v2/health/live")[0] == 200
    assert call(stub, "GET", "/a/v2/health/live")[0] == 404


# -- metrics ---------------------------------------------------------------------


def test_metrics_on_rest_by_default_and_at_metrics_path(models):
    stub, _ = serve(models)
    code, body, _ = call(stub, "GET", "/metrics")
    assert code == 200 and b"model_infer_request_success" in body
    stub, _ = serve(models, metrics_path="/prometheus")
    assert call(stub, "GET", "/prometheus")[0] == 200
    assert call(stub, "GET", "/metrics")[0] == 404


def test_metrics_off(models):
    stub, service = serve(models, metrics_path=None)
    assert service.dataplane.observer is None, "requests are not counted when nothing serves the counts"
    assert call(stub, "GET", "/metrics")[0] == 404
    assert call(stub, "POST", "/v2/models/echo/infer", body=INFER)[0] == 200


def test_separate_metrics_listener_resource(models):
    stub, service = serve(models, metrics="tcp:0", metrics_path="/metrics")
    assert call(stub, "GET", "/metrics")[0] == 404  # moved off the REST endpoints
    call(stub, "POST", "/v2/models/echo/infer", body=INFER)
    metrics = StubTreq(service.metrics_site.resource)
    code, body, _ = call(metrics, "GET", "/metrics")
    assert code == 200 and b'model_infer_request_success_total{model="echo",version=""} 1.0' in body
    code, body, _ = call(metrics, "GET", "/v2/health/live")
    assert code == 404 and "serves the metrics at /metrics" in json.loads(body)["error"]
    assert call(metrics, "POST", "/metrics")[0] == 405


# -- server metadata and start-up ------------------------------------------------------


def test_server_metadata_from_settings(models):
    stub, _ = serve(models, server_name="custom", server_version="1.2.3", extensions=["a", "b"])
    code, body, _ = call(stub, "GET", "/v2")
    assert (code, json.loads(body)) == (200, {"name": "custom", "version": "1.2.3", "extensions": ["a", "b"]})
    stub, _ = serve(models)
    meta = json.loads(call(stub, "GET", "/v2")[1])
    assert meta["name"] == "v2d" and "model_repository" in meta["extensions"]


def test_no_models_at_startup(models):
    settings = Settings(models=models, grpc=None, envs_dir="unused", load_models_at_startup=False)
    reactor = MemoryReactorClock()
    service = V2DService(settings, reactor, environ={})
    service.startService()
    stub = StubTreq(service.site.resource)
    assert service.registry.names() == []
    # ready as MLServer reports it: every loaded model (none) is ready
    assert call(stub, "GET", "/v2/health/ready")[0] == 200
    index = json.loads(call(stub, "POST", "/v2/repository/index", body={})[1])
    assert index == [{"name": "echo", "state": "UNAVAILABLE", "reason": "not loaded"}]
    assert call(stub, "POST", "/v2/repository/models/echo/load", body={})[0] == 200
    assert call(stub, "POST", "/v2/models/echo/infer", body=INFER)[0] == 200


def test_debug_logs_requests(models):
    _, service = serve(models, debug=True)
    assert service.site.access_log
    _, service = serve(models)
    assert not service.site.access_log
