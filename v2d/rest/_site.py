"""
The HTTP site: twisted.web with a request class that enforces the body size limit.

Bodies are kept in memory (never spilled to a temporary file: the limit bounds them),
and a body over the limit is refused with 413 without being stored.
"""

from __future__ import annotations

import io
from typing import Any, Optional

from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from v2d.rest._channel import JSONErrorChannel
from v2d.rest._json import error_body

__all__ = ["V2DRequest", "make_site"]


class PreallocatedBody:
    """
    A request body of known length, received straight into one buffer (no growing,
    no copy when read back). Offers the file methods twisted.web uses on ``content``.
    """

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)
        self._end = 0
        self._pos = 0

    def write(self, data: bytes) -> None:
        n = len(data)
        if self._end + n > len(self.buffer):  # more than announced: keep it all
            self.buffer = bytearray(self._view[: self._end]) + data
            self._view = memoryview(self.buffer)
        else:
            self._view[self._end : self._end + n] = data
        self._end += n
        self._pos = self._end

    def getvalue(self) -> bytearray:
        if self._end == len(self.buffer):
            return self.buffer
        return bytearray(self._view[: self._end])

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else (self._end + offset if whence == 2 else self._pos + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._end if size < 0 else min(self._end, self._pos + size)
        data = bytes(self._view[self._pos : end])
        self._pos = end
        return data

    def close(self) -> None:
        self._view.release()


class V2DRequest(Request):
    """
    A request that refuses bodies over ``site.max_body_size`` with 413.

    An oversized body is read and dropped, never stored, and the 413 is sent once it
    has arrived, so that clients still sending see the answer rather than a reset.
    """

    too_large = False
    _received = 0

    def _limit(self) -> int:
        return getattr(getattr(self.channel, "site", None), "max_body_size", 0) or 0

    def gotLength(self, length: Optional[int]) -> None:
        limit = self._limit()
        if limit and length is not None and length > limit:
            self.too_large = True
        if length and not self.too_large:
            self.content = PreallocatedBody(length)  # type: ignore[assignment]
        else:
            self.content = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        limit = self._limit()
        if limit and self._received > limit:
            self.too_large = True
            self.content = io.BytesIO()
            return
        self.content.write(data)  # type: ignore[union-attr]

    def process(self) -> None:
        if not self.too_large:
            super().process()
            return
        limit = self._limit()
        self.setResponseCode(413)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"connection", b"close")
        self.write(error_body(f"request body is over the limit of {limit} bytes (setting max_body_size)"))
        self.finish()


class V2DSite(Site):
    """A Site whose per-request access log is optional (off by default: it costs)."""

    access_log = False
    max_body_size = 0

    def log(self, request: Any) -> None:
        if self.access_log:
            super().log(request)


def make_site(resource: IResource, max_body_size: int, access_log: bool = False, **kwargs: Any) -> Site:
    """A Site serving ``resource`` with the body size limit."""
    site = V2DSite(resource, requestFactory=V2DRequest, **kwargs)
    site.max_body_size = max_body_size
    site.access_log = access_log
    site.displayTracebacks = False
    # v2d never reads HTML form posts; Twisted's check for them parses Content-Type
    # through the email package on every POST, a large share of a small request.
    site._parsePOSTFormSubmission = False
    site.noisy = False
    site.protocol = JSONErrorChannel  # type: ignore[method-assign,assignment]  # malformed requests: JSON
    return site
