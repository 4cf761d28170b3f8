"""
Cross-origin resource sharing for the REST endpoints, answering as MLServer does
(its ``cors_settings`` drive Starlette's CORS middleware there):

- a request without ``Origin`` is served untouched;
- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here and
  never reaches the API: 200 ``OK``, or 400 ``Disallowed CORS origin, method, headers``
  naming what was refused, with the allowed methods, headers and max age either way;
- any other request with ``Origin`` is served, with ``Access-Control-Allow-Origin``
  (``*`` when every origin is allowed, the origin itself when it is allowed by name or
  by the regular expression, or when a request to a ``*`` policy carries cookies),
  ``Access-Control-Allow-Credentials`` and ``Access-Control-Expose-Headers`` as set.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from v2d.settings import CORSSettings

__all__ = ["CORSPolicy"]

#: What ``"*"`` in ``allow_methods`` stands for.
ALL_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

#: Request headers always allowed (the CORS-safelisted ones).
SAFELISTED_HEADERS = ("Accept", "Accept-Language", "Content-Language", "Content-Type")


class CORSPolicy:
    """One ``cors_settings``, applied to twisted.web requests."""

    def __init__(self, settings: CORSSettings) -> None:
        self.allow_all_origins = "*" in settings.allow_origins
        self.allow_origins = frozenset(settings.allow_origins)
        self.origin_regex = re.compile(settings.allow_origin_regex) if settings.allow_origin_regex else None
        self.allow_methods: List[str] = (
            list(ALL_METHODS) if "*" in settings.allow_methods else list(settings.allow_methods)
        )
        self.allow_all_headers = "*" in settings.allow_headers
        allowed_headers = sorted(set(SAFELISTED_HEADERS) | set(settings.allow_headers))
        self.allow_headers = frozenset(h.lower() for h in allowed_headers)
        # Name the origin in preflight answers unless every origin is allowed without credentials.
        self.preflight_names_origin = not self.allow_all_origins or settings.allow_credentials

        self.simple_headers: Dict[bytes, bytes] = {}
        if self.allow_all_origins:
            self.simple_headers[b"access-control-allow-origin"] = b"*"
        if settings.allow_credentials:
            self.simple_headers[b"access-control-allow-credentials"] = b"true"
        if settings.expose_headers:
            self.simple_headers[b"access-control-expose-headers"] = _latin1(
                ", ".join(settings.expose_headers)
            )

        self.preflight_headers: Dict[bytes, bytes] = {}
        if self.preflight_names_origin:
            self.preflight_headers[b"vary"] = b"Origin"
        else:
            self.preflight_headers[b"access-control-allow-origin"] = b"*"
        self.preflight_headers[b"access-control-allow-methods"] = _latin1(", ".join(self.allow_methods))
        self.preflight_headers[b"access-control-max-age"] = b"%d" % settings.max_age
        if not self.allow_all_headers:
            self.preflight_headers[b"access-control-allow-headers"] = _latin1(", ".join(allowed_headers))
        if settings.allow_credentials:
            self.preflight_headers[b"access-control-allow-credentials"] = b"true"

    def allows_origin(self, origin: str) -> bool:
        """Whether ``origin`` may make cross-origin requests."""
        if self.allow_all_origins:
            return True
        if self.origin_regex is not None and self.origin_regex.fullmatch(origin):
            return True
        return origin in self.allow_origins

    def handle(self, request: Any) -> Optional[bytes]:
        """
        Apply the policy before ``request`` is served: the body of the answer when this
        was a preflight (the request is done), else None (serve it; the CORS headers of
        the response are already set).
        """
        raw_origin = request.getHeader(b"origin")
        if raw_origin is None:
            return None
        origin = raw_origin.decode("latin-1") if isinstance(raw_origin, bytes) else raw_origin
        if request.method == b"OPTIONS" and request.requestHeaders.hasHeader(
            b"access-control-request-method"
        ):
            return self.preflight(request, origin)
        for name, value in self.simple_headers.items():
            request.setHeader(name, value)
        if self.allow_all_origins:
            if request.requestHeaders.hasHeader(b"cookie"):
                self._name_origin(request, raw_origin)
        elif self.allows_origin(origin):
            self._name_origin(request, raw_origin)
        return None

    def preflight(self, request: Any, origin: str) -> bytes:
        """Answer a preflight request: 200, or 400 naming what the policy refuses."""
        method = _text(request.getHeader(b"access-control-request-method"))
        requested_headers = request.getHeader(b"access-control-request-headers")
        headers = dict(self.preflight_headers)
        failures = []
        if self.allows_origin(origin):
            if self.preflight_names_origin:
                headers[b"access-control-allow-origin"] = _latin1(origin)
        else:
            failures.append("origin")
        if method not in self.allow_methods:
            failures.append("method")
        if requested_headers is not None:
            if self.allow_all_headers:
                headers[b"access-control-allow-headers"] = requested_headers
            elif any(
                h.strip().lower() not in self.allow_headers for h in _text(requested_headers).split(",")
            ):
                failures.append("headers")
        body = ("Disallowed CORS " + ", ".join(failures)).encode() if failures else b"OK"
        request.setResponseCode(400 if failures else 200)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    @staticmethod
    def _name_origin(request: Any, origin: bytes) -> None:
        request.setHeader(b"access-control-allow-origin", origin)
        vary = request.responseHeaders.getRawHeaders(b"vary")
        request.setHeader(b"vary", b", ".join(vary + [b"Origin"]) if vary else b"Origin")


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", "replace")


def _text(raw: Any) -> str:
    return raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
