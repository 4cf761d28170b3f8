"""
The REST root resource: inference requests go straight to their handler, a few fixed
paths (``/metrics``) and the runtimes' custom handlers (``routes``, by method and path)
to their own resources; every other path goes through Klein.

Before that, the CORS policy (if any) sees each request, a path under ``root_path``
(the prefix a proxy serves v2d under) is served as the path without it, and a request
to a restricted API group (``http_restricted_api``) without the header that opens it
gets 403.

Klein (werkzeug) routing costs a noticeable share of a small request's time, so the
one hot route, ``POST /v2/models/{m}[/versions/{v}]/infer``, is matched here with one
regular expression and handed to the same ``RestAPI.infer`` method Klein would call.
As Klein does for its routes, a client that goes away cancels the answer's Deferred
(and so the model's work).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional
from urllib.parse import unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from v2d._twisted import request_disconnected
from v2d.rest._json import error_body
from v2d.rest._site import V2DRequest
from v2d.restricted import Restrictions, rest_group

__all__ = ["RootResource"]

_INFER = re.compile(rb"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
log = Logger()


def _segment(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return unquote(text) if "%" in text else text


def cancel_on_disconnect(request: Any, answer: Deferred) -> None:
    """Cancel ``answer`` if ``request``'s client goes away before it fires."""
    if isinstance(request, V2DRequest):
        request.pending = answer  # cancelled by its connectionLost: nothing more per request
    else:
        request.notifyFinish().addErrback(lambda _: answer.cancel())


class _RequestHeaders:
    """A request's headers as the read-only mapping v2d.restricted asks (``get`` by name)."""

    __slots__ = ("request",)

    def __init__(self, request: Any) -> None:
        self.request = request

    def get(self, name: str, default: Any = None) -> Any:
        value = self.request.getHeader(name)
        return default if value is None else value


class RootResource(Resource):
    """Serves ``/infer`` directly and everything else through ``fallback`` (Klein)."""

    isLeaf = True

    def __init__(
        self,
        api: Any,
        fallback: IResource,
        extra: Optional[Dict[bytes, IResource]] = None,
        routes: Optional[Any] = None,
        root_path: str = "",
        cors: Optional[Any] = None,
        restrictions: Optional[Restrictions] = None,
        metrics_path: Optional[bytes] = None,
    ) -> None:
        super().__init__()
        self.api = api
        self.fallback = fallback
        self.extra = dict(extra or {})
        #: A mapping-like ``get((method, path))`` of dynamic routes (v2d.rest._custom).
        self.routes = routes
        self.root_path = root_path.rstrip("/").encode("utf-8")
        self._root_segments = self.root_path.split(b"/")[1:] if self.root_path else []
        self.cors = cors
        #: The restricted API groups (v2d.restricted); ``metrics_path`` is the metrics group.
        self.restrictions = restrictions or None
        self.metrics_path = metrics_path

    def _path(self, request: Any) -> bytes:
        """The path to route: without ``root_path`` when it starts with it (Klein is told too)."""
        path = request.path
        root = self.root_path
        if (
            root
            and path.startswith(root)
            and (len(path) == len(root) or path[len(root) : len(root) + 1] == b"/")
        ):
            count = len(self._root_segments)
            request.prepath = request.postpath[:count]
            request.postpath = request.postpath[count:]
            return path[len(root) :] or b"/"
        return path

    def render(self, request: Any) -> Any:
        if self.cors is not None:
            answer = self.cors.handle(request)
            if answer is not None:
                return answer
        path = self._path(request) if self.root_path else request.path
        if self.restrictions is not None:
            group = rest_group(path, self.metrics_path)
            refusal = self.restrictions.refusal(group, _RequestHeaders(request))
            if refusal is not None:
                request.setResponseCode(403)
                request.setHeader(b"content-type", b"application/json")
                return error_body(refusal)
        if request.method == b"POST":
            match = _INFER.match(path)
            if match is not None:
                version = match.group(2)
                result = self.api.infer(
                    request, _segment(match.group(1)), _segment(version) if version is not None else None
                )
                if isinstance(result, Deferred):
                    result.addCallback(self._write, request)
                    result.addErrback(self._failed, request)
                    if not result.called:
                        cancel_on_disconnect(request, result)
                    return NOT_DONE_YET
                request.setHeader(b"content-length", b"%d" % len(result))
                return result
        resource = self.extra.get(path)
        if resource is not None:
            return resource.render(request)
        if self.routes:
            resource = self.routes.get((request.method, path))
            if resource is not None:
                return resource.render(request)
        return self.fallback.render(request)

    @staticmethod
    def _write(body: bytes, request: Any) -> None:
        if request_disconnected(request):
            return
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    @staticmethod
    def _failed(failure: Any, request: Any) -> None:
        log.failure("failed writing a response", failure)
        if not request_disconnected(request) and not request.finished:
            request.setResponseCode(500)
            request.finish()
