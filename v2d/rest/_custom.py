"""
Runtimes' own REST endpoints (``@custom_handler`` methods), mounted while their model
serves.

As in MLServer, a handler is served at the top of the REST tree, exactly at its
``rest_path``, for its ``rest_method``. ``CustomRoutes.mount`` is told of each model as
it becomes ready (v2d.registry's ``on_ready``) and mounts every handler the model
offers (``ICustomHandlers``); it refuses, failing that model's load, a path and method
another model serves, one of v2d's own endpoints, or a path with parameters.
``unmount`` (``on_unload``) takes a model's routes away again.

A call: the body (if any) is parsed as JSON and the query string read; the model
binds them to the method's parameters (v2d.handlers._arguments) and calls it, in this
process or in a worker; the result goes back as JSON. Errors are ``{"error": ...}``: a
bad body or a missing argument is a 400 naming it, an exception's ``status_code`` (as
MLServer's errors have) is honoured, anything else is a 500 with the message.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import attrs
import orjson
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from v2d._twisted import request_disconnected
from v2d.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelNotReady,
    Unavailable,
    V2DError,
    http_status,
)
from v2d.interfaces import ICustomHandlers
from v2d.rest._api import request_body
from v2d.rest._json import error_body

__all__ = ["CustomRoutes", "encode_result", "klein_serves"]

_JSON = b"application/json"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _jsonable(value: Any) -> Any:
    """What orjson cannot encode itself: pydantic-like models, sets, bytes."""
    for name in ("model_dump", "to_dict", "dict"):
        method = getattr(value, name, None)
        if callable(method):
            return method()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_result(value: Any) -> bytes:
    """A handler's result as JSON bytes; TypeError when it cannot be encoded."""
    return orjson.dumps(value, default=_jsonable, option=_OPTIONS)


def klein_serves(app: Any, method: str, path: str) -> bool:
    """Whether a Klein app has a route answering ``method`` on ``path``."""
    try:
        app.url_map.bind("localhost").match(path, method)
    except HTTPException:
        return False
    return True


def _status_of(exc: BaseException) -> int:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return status
    if isinstance(exc, V2DError):
        return http_status(exc)
    if isinstance(exc, NotImplementedError):
        return 501
    return 500


def _message_of(exc: BaseException) -> str:
    if isinstance(exc, V2DError) or hasattr(exc, "status_code"):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _query(request: Any) -> Dict[str, List[str]]:
    return {
        name.decode("utf-8", "replace"): [v.decode("utf-8", "replace") for v in values]
        for name, values in (request.args or {}).items()
    }


def _check_path(path: Any) -> Optional[str]:
    """Why a handler path cannot be served, or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return f"rest_path {path!r} must start with '/'"
    if "{" in path or "}" in path:
        return f"rest_path {path!r} has path parameters, which v2d does not serve; use the query string"
    if "?" in path or "#" in path or any(c.isspace() for c in path):
        return f"rest_path {path!r} is not a plain URL path"
    return None


@attrs.frozen
class Route:
    """One mounted handler: which model serves it, with which method of its runtime."""

    owner: Tuple[str, str]
    model: Any
    method: str
    path: str
    attribute: str


class _RouteResource(Resource):
    """Serves one route."""

    isLeaf = True
    log = Logger()

    def __init__(self, route: Route, draining: Callable[[], bool], counted: Callable[..., Deferred]) -> None:
        super().__init__()
        self.route = route
        self.draining = draining
        self.counted = counted

    def render(self, request: Any) -> Any:
        d = maybeDeferred(self._call, request)
        # in flight for the drain until its answer is written
        self.counted(d, lambda result: self._reply(result, request))
        d.addErrback(lambda f: self.log.failure("failed writing a custom handler's response", f))
        return NOT_DONE_YET

    def _reply(self, result: Any, request: Any) -> None:
        if isinstance(result, Failure):
            self._failed(result, request)
        else:
            self._answer(result, request)

    def _call(self, request: Any) -> Any:
        route = self.route
        name = route.owner[0]
        if self.draining():
            raise Unavailable("server is shutting down")
        if not getattr(route.model, "ready", False):
            raise ModelNotReady(f"model '{name}' is not ready")
        raw = request_body(request)
        has_body = bool(raw.strip())
        body = None
        if has_body:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise InvalidArgument(f"request body is not valid JSON: {e}") from None
        return route.model.call_custom(route.attribute, has_body, body, _query(request))

    def _answer(self, result: Any, request: Any) -> None:
        try:
            body = encode_result(result)
        except TypeError as e:
            reason = f"the result of {self.route.attribute}() cannot be sent as JSON: {e}"
            self._failed(Failure(TypeError(reason)), request)
            return
        self._send(request, 200, body)

    def _failed(self, failure: Failure, request: Any) -> None:
        exc: Any = failure.value
        status = _status_of(exc)
        if status >= 500 and not isinstance(exc, V2DError):
            self.log.failure(
                "custom handler {method} {path} of model {model} failed",
                failure,
                method=self.route.method,
                path=self.route.path,
                model=self.route.owner[0],
            )
        self._send(request, status, error_body(_message_of(exc)))

    @staticmethod
    def _send(request: Any, status: int, body: bytes) -> None:
        if request_disconnected(request) or request.finished:
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class CustomRoutes:
    """
    The custom handlers of the models that serve, by (HTTP method, path).
    ``reserved(method, path)`` says whether v2d serves that itself; while
    ``draining()`` is true, calls are refused (503) as inference requests are, and
    ``counted(d, answer)`` counts each call in flight for the drain until ``answer``
    has written its answer (``DataPlane.counted``).
    """

    log = Logger()

    def __init__(
        self,
        reserved: Callable[[str, str], bool] = lambda method, path: False,
        draining: Callable[[], bool] = lambda: False,
        counted: Callable[..., Deferred] = lambda d, answer: d.addBoth(answer),
    ) -> None:
        self.reserved = reserved
        self.draining = draining
        self.counted = counted
        self._resources: Dict[Tuple[bytes, bytes], _RouteResource] = {}

    def get(self, key: Tuple[bytes, bytes]) -> Optional[Resource]:
        """The resource serving (method, path) as bytes, or None (the router's lookup)."""
        return self._resources.get(key)

    def __len__(self) -> int:
        return len(self._resources)

    def __iter__(self) -> Iterator[Route]:
        return iter([r.route for r in self._resources.values()])

    def mount(self, name: str, version: str, model: Any) -> None:
        """
        Serve ``model``'s handlers, in place of the ones that model version served
        before; FailedPrecondition (and nothing changed) if one cannot be served.
        """
        owner = (name, version)
        planned: Dict[Tuple[bytes, bytes], Route] = {}
        handlers = list(model.custom_handlers or []) if ICustomHandlers.providedBy(model) else []
        for handler in handlers:
            method, path = str(handler.method).upper(), handler.path
            key = (method.encode("ascii", "replace"), str(path).encode("utf-8"))
            if _check_path(path) is None and self.reserved(method, path):
                # v2d serves that endpoint itself (a runtime written for MLServer may
                # add one MLServer lacks, such as a model's /config): keep v2d's.
                self.log.warn(
                    "model {model}: custom handler {attribute}() is not mounted: "
                    "{method} {path} is one of the server's own endpoints, which v2d serves",
                    model=name,
                    attribute=handler.attribute,
                    method=method,
                    path=path,
                )
                continue
            problem = _check_path(path) or self._conflict(owner, key, planned, handler.attribute)
            if problem is not None:
                raise FailedPrecondition(f"custom handler {handler.attribute}() of model '{name}': {problem}")
            planned[key] = Route(owner, model, method, path, handler.attribute)
        self.unmount(name, version, quiet=True)
        for key, route in planned.items():
            self._resources[key] = _RouteResource(route, self.draining, self.counted)
            self.log.info(
                "model {model}: custom handler {attribute}() serves {method} {path}",
                model=name,
                attribute=route.attribute,
                method=route.method,
                path=route.path,
            )

    def _conflict(
        self,
        owner: Tuple[str, str],
        key: Tuple[bytes, bytes],
        planned: Dict[Tuple[bytes, bytes], Route],
        attribute: str,
    ) -> Optional[str]:
        """Why (method, path) cannot be mounted for ``owner``, or None."""
        method, path = key[0].decode("ascii"), key[1].decode("utf-8")
        if key in planned:
            return f"{method} {path} is served by two of its methods ({planned[key].attribute}, {attribute})"
        if self.reserved(method, path):
            return f"{method} {path} is one of the server's own endpoints"
        current = self._resources.get(key)
        if current is not None and current.route.owner != owner:
            return f"{method} {path} is already served by {_describe(current.route.owner)}"
        return None

    def unmount(self, name: str, version: str, quiet: bool = False) -> None:
        """Stop serving the handlers of a model version."""
        owner = (name, version)
        for key in [k for k, r in self._resources.items() if r.route.owner == owner]:
            route = self._resources.pop(key).route
            if not quiet:
                self.log.info(
                    "model {model}: {method} {path} no longer served",
                    model=name,
                    method=route.method,
                    path=route.path,
                )


def _describe(owner: Tuple[str, str]) -> str:
    name, version = owner
    return f"model '{name}' version '{version}'" if version else f"model '{name}'"
