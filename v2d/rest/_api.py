"""
The Open Inference Protocol over REST, as a Klein app bound to a DataPlane.

Handlers are thin: decode the wire, call the dataplane, encode the answer. Errors are
v2d.errors answered with their HTTP status (v2d.errors' table) and ``{"error": "..."}``.
A client that goes away cancels its request (Klein cancels a route's Deferred; the
fast route does the same in v2d.rest._router).
"""

from __future__ import annotations

import functools
from typing import Any, AsyncIterator, Callable, Dict, Optional

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException

from v2d.aio import CANCELLATIONS, as_deferred
from v2d.errors import Internal, InvalidArgument, V2DError
from v2d.headers import attach_headers, take_headers
from v2d.interfaces import IDataPlane
from v2d.modelconfig import model_config
from v2d.rest._binary import HEADER_LENGTH, decode_infer_body, encode_infer_body
from v2d.rest._json import (
    dumps,
    encode_response,
    error_body,
    parse_json_object,
)
from v2d.rest._shm import cuda_answer, region_status, register_region, unregister_region
from v2d.types import HeaderDict, InferenceRequest, InferenceResponse

__all__ = ["HOP_BY_HOP", "RestAPI"]

#: Headers that describe one connection, never copied to or from a model.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        # framing of the binary tensor extension, not the caller's
        "inference-header-content-length",
    }
)

#: Headers a model may not set on a response: the server frames the body.
RESERVED_RESPONSE_HEADERS = HOP_BY_HOP | {"content-type"}

_JSON = b"application/json"
log = Logger()


def _error(request: Any, exc: V2DError) -> bytes:
    request.setResponseCode(exc.status_code)  # by kind, or an MLServerError's own status
    request.setHeader(b"content-type", _JSON)
    return error_body(exc.message)


def _unexpected(request: Any, failure: Failure) -> bytes:
    log.failure("unexpected error serving {path}", failure, path=request.path)
    request.setResponseCode(500)
    request.setHeader(b"content-type", _JSON)
    return error_body(f"internal error: {type(failure.value).__name__}: {failure.value}")


def _on_failure(request: Any) -> Callable[[Failure], bytes]:
    def handle(failure: Failure) -> bytes:
        if isinstance(failure.value, V2DError):
            return _error(request, failure.value)
        if isinstance(failure.value, CANCELLATIONS):
            return b""  # the client went away: nobody reads an answer
        return _unexpected(request, failure)

    return handle


def endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map v2d errors (raised or from a Deferred) to JSON error responses."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(self, request, *args, **kwargs)
        except V2DError as e:
            return _error(request, e)
        except Exception:
            return _unexpected(request, Failure())
        if isinstance(result, Deferred):
            return result.addErrback(_on_failure(request))
        return result

    return wrapper


def request_body(request: Any) -> bytes:
    """The whole request body (kept in memory by V2DRequest)."""
    content = request.content
    getvalue = getattr(content, "getvalue", None)
    if getvalue is not None:
        return getvalue()
    content.seek(0)
    return content.read()


def request_headers(request: Any) -> HeaderDict:
    """The request's headers (names lower-cased, lookups case-insensitive), hop-by-hop ones left out."""
    headers = HeaderDict()
    for raw_name, values in request.requestHeaders.getAllRawHeaders():
        name = raw_name.decode("latin-1").lower()
        if name in HOP_BY_HOP:
            continue
        headers[name] = ", ".join(v.decode("latin-1") for v in values)
    return headers


def send_headers(request: Any, headers: Optional[Dict[str, Any]]) -> None:
    """Set a model's response headers on the HTTP response (hop-by-hop and framing ones dropped)."""
    if not headers:
        return
    for name, value in headers.items():
        if name.lower() in RESERVED_RESPONSE_HEADERS:
            continue
        request.setHeader(str(name).encode("latin-1"), str(value).encode("latin-1"))


async def _one(payload: InferenceRequest) -> AsyncIterator[InferenceRequest]:
    yield payload


def _event_stream_started(request: Any, headers: Optional[Dict[str, Any]]) -> None:
    request.setHeader(b"content-type", b"text/event-stream")
    request.setHeader(b"cache-control", b"no-cache")
    send_headers(request, headers)


async def send_event_stream(request: Any, responses: Any) -> bytes:
    """
    Write a dataplane stream's responses as server-sent events (``data:`` and the JSON
    response each). An error before the first response is an ordinary error
    response; after it, an ``event: error`` with ``{"error": ...}`` ends the stream.
    The stream is closed at the end, whatever happens (a client that goes away
    cancels the Deferred of this coroutine, and so the model's step in flight).
    """
    started = False
    try:
        async for response in responses:
            headers = take_headers(response)
            body = encode_response(response)
            if not started:
                started = True
                _event_stream_started(request, headers)
            request.write(b"data: " + body + b"\n\n")
    except Exception as e:
        error = e if isinstance(e, V2DError) else None
        if error is None:
            log.failure("streaming a response failed")
            error = Internal(f"internal error: {type(e).__name__}: {e}")
        if not started:
            return _error(request, error)
        request.write(b"event: error\ndata: " + error_body(error.message) + b"\n\n")
    finally:
        await responses.aclose()
    if not started:
        _event_stream_started(request, None)
    return b""


class RestAPI:
    """The REST endpoints over a dataplane; ``app.resource()`` is the web resource."""

    app = Klein()

    def __init__(self, dataplane: IDataPlane) -> None:
        self.dataplane = dataplane

    # -- health -----------------------------------------------------------------

    @app.route("/v2/health/live", methods=["GET"])
    @endpoint
    def live(self, request: Any) -> bytes:
        request.setHeader(b"content-type", _JSON)
        if not self.dataplane.live():
            request.setResponseCode(503)
            return dumps({"live": False})
        return dumps({"live": True})

    @app.route("/v2/health/ready", methods=["GET"])
    @endpoint
    def ready(self, request: Any) -> bytes:
        request.setHeader(b"content-type", _JSON)
        if not self.dataplane.ready():
            request.setResponseCode(503)
            return dumps({"ready": False})
        return dumps({"ready": True})

    # -- metadata ----------------------------------------------------------------

    @app.route("/v2", methods=["GET"])
    @endpoint
    def server_metadata(self, request: Any) -> bytes:
        request.setHeader(b"content-type", _JSON)
        return dumps(self.dataplane.metadata().to_dict())

    @app.route("/v2/models/<name>", methods=["GET"])
    @app.route("/v2/models/<name>/versions/<version>", methods=["GET"])
    @endpoint
    def model_metadata(self, request: Any, name: str, version: Optional[str] = None) -> bytes:
        request.setHeader(b"content-type", _JSON)
        return dumps(self.dataplane.model_metadata(name, version).to_dict())

    @app.route("/v2/models/<name>/ready", methods=["GET"])
    @app.route("/v2/models/<name>/versions/<version>/ready", methods=["GET"])
    @endpoint
    def model_ready(self, request: Any, name: str, version: Optional[str] = None) -> bytes:
        request.setHeader(b"content-type", _JSON)
        ready = self.dataplane.model_ready(name, version)
        if not ready:
            request.setResponseCode(503)
        return dumps({"name": name, "ready": ready})

    @app.route("/v2/models/<name>/config", methods=["GET"])
    @app.route("/v2/models/<name>/versions/<version>/config", methods=["GET"])
    @endpoint
    def model_config(self, request: Any, name: str, version: Optional[str] = None) -> bytes:
        """The model configuration extension (v2d.modelconfig)."""
        request.setHeader(b"content-type", _JSON)
        return dumps(model_config(self.dataplane.model(name, version)))

    # -- inference ---------------------------------------------------------------

    def decode_infer(self, request: Any) -> InferenceRequest:
        """The InferenceRequest of an HTTP request (JSON, or JSON and binary data: v2d.rest._binary)."""
        return decode_infer_body(request_body(request), request.getHeader(HEADER_LENGTH))

    def encode_infer(self, request: Any, response: InferenceResponse, payload: InferenceRequest) -> bytes:
        """The HTTP body of an InferenceResponse (JSON, or JSON and binary data when asked for)."""
        body, header_length = encode_infer_body(
            response, payload, binary_request=request.getHeader(HEADER_LENGTH) is not None
        )
        if header_length is None:
            request.setHeader(b"content-type", _JSON)
        else:
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(HEADER_LENGTH, str(header_length).encode("ascii"))
        return body

    @app.route("/v2/models/<name>/infer", methods=["POST"])
    @app.route("/v2/models/<name>/versions/<version>/infer", methods=["POST"])
    @endpoint
    def infer(self, request: Any, name: str, version: Optional[str] = None) -> Any:
        payload = self.decode_infer(request)
        attach_headers(payload, request_headers(request))
        d = self.dataplane.infer(name, version, payload)

        def encode(response: InferenceResponse) -> bytes:
            headers = take_headers(response)
            body = self.encode_infer(request, response, payload)
            send_headers(request, headers)
            return body

        return d.addCallback(encode)

    @app.route("/v2/models/<name>/infer_stream", methods=["POST"])
    @app.route("/v2/models/<name>/versions/<version>/infer_stream", methods=["POST"])
    @endpoint
    def infer_stream(self, request: Any, name: str, version: Optional[str] = None) -> Any:
        """One request (JSON) served by the model's ``predict_stream``, answered as server-sent events."""
        payload = decode_infer_body(request_body(request), None)
        attach_headers(payload, request_headers(request))
        responses = self.dataplane.infer_stream(name, version, _one(payload))
        return as_deferred(send_event_stream(request, responses))

    # -- repository extension ----------------------------------------------------

    @app.route("/v2/repository/index", methods=["POST"])
    @endpoint
    def repository_index(self, request: Any) -> bytes:
        body = request_body(request)
        ready_only = False
        if body.strip():
            doc = parse_json_object(body)
            ready_only = doc.get("ready", False)
            if not isinstance(ready_only, bool):
                raise InvalidArgument("ready must be true or false")
        request.setHeader(b"content-type", _JSON)
        return dumps(self.dataplane.repository_index(ready_only))

    @app.route("/v2/repository/models/<name>/load", methods=["POST"])
    @endpoint
    def repository_load(self, request: Any, name: str) -> Deferred:
        def done(_: Any) -> bytes:
            request.setHeader(b"content-type", _JSON)
            return b"{}"

        return self.dataplane.load_model(name).addCallback(done)

    @app.route("/v2/repository/models/<name>/unload", methods=["POST"])
    @endpoint
    def repository_unload(self, request: Any, name: str) -> Deferred:
        def done(_: Any) -> bytes:
            request.setHeader(b"content-type", _JSON)
            return b"{}"

        return self.dataplane.unload_model(name).addCallback(done)

    # -- system shared-memory extension (v2d.rest._shm) ------------------------------

    @app.route("/v2/systemsharedmemory/status", methods=["GET"])
    @app.route("/v2/systemsharedmemory/region/<name>/status", methods=["GET"])
    @endpoint
    def shm_status(self, request: Any, name: Optional[str] = None) -> bytes:
        request.setHeader(b"content-type", _JSON)
        return dumps(region_status(self.dataplane.shared_memory, name))

    @app.route("/v2/systemsharedmemory/region/<name>/register", methods=["POST"])
    @endpoint
    def shm_register(self, request: Any, name: str) -> bytes:
        register_region(self.dataplane.shared_memory, name, parse_json_object(request_body(request)))
        request.setHeader(b"content-type", _JSON)
        return b"{}"

    @app.route("/v2/systemsharedmemory/unregister", methods=["POST"])
    @app.route("/v2/systemsharedmemory/region/<name>/unregister", methods=["POST"])
    @endpoint
    def shm_unregister(self, request: Any, name: Optional[str] = None) -> bytes:
        unregister_region(self.dataplane.shared_memory, name)
        request.setHeader(b"content-type", _JSON)
        return b"{}"

    @app.route("/v2/cudasharedmemory/status", methods=["GET"])
    @app.route("/v2/cudasharedmemory/region/<name>/status", methods=["GET"])
    @app.route("/v2/cudasharedmemory/unregister", methods=["POST"])
    @app.route("/v2/cudasharedmemory/region/<name>/unregister", methods=["POST"])
    @app.route("/v2/cudasharedmemory/region/<name>/register", methods=["POST"])
    @endpoint
    def cuda_shm(self, request: Any, name: Optional[str] = None) -> bytes:
        request.setHeader(b"content-type", _JSON)
        return dumps(cuda_answer(request.method, request.path, name))

    # -- anything else -------------------------------------------------------------

    @app.handle_errors(HTTPException)
    def http_error(self, request: Any, failure: Failure) -> bytes:
        exc: Any = failure.value
        code = exc.code or 500
        if 300 <= code < 400:
            # werkzeug redirects a path whose decoded form differs (e.g. %2F); v2d serves
            # no such path and never builds a URL from the client's Host header
            code = 404
        request.setResponseCode(code)
        request.setHeader(b"content-type", _JSON)
        if code == 404:
            message = f"no such endpoint: {request.method.decode()} {request.path.decode('latin-1')}"
        elif code == 405:
            message = f"method {request.method.decode()} not allowed on {request.path.decode('latin-1')}"
        else:
            message = exc.description or exc.name
        return error_body(message)
