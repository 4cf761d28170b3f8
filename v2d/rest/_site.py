"""
The HTTP site: twisted.web with request and channel classes that bound what a client
can make the server hold, and for how long.

- Bodies are kept in memory (never spilled to a temporary file: the limits bound
  them), and memory follows the bytes received, not the ``Content-Length`` announced:
  headers alone cost nothing.
- A body over ``max_body_size`` is refused with 413 without being stored.
- The bodies in flight hold ``max_bodies_in_flight`` bytes between them at most; a
  request that would take more gets 503 with ``Retry-After`` (the server is busy, not
  the client wrong). A body alone is always let in, up to ``max_body_size``.
- A request, headers and body, must arrive within ``request_read_timeout`` seconds of
  its first byte, else 408 and the connection is closed (slow clients cannot hold a
  connection for hours by sending a byte now and then; the idle timeout only counts
  silence).
- Freed bodies are reported to a ``FreedMemoryTrim`` (v2d.memory): after big ones,
  freed memory is returned to the system down to ``retain_memory``.
"""

from __future__ import annotations

import io
from typing import Any, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from v2d._twisted import http_channel_protocol, site_options
from v2d.memory import FreedMemoryTrim
from v2d.rest._channel import JSONErrorChannel
from v2d.rest._json import error_body

__all__ = ["BodyMemory", "ReceivedBody", "V2DChannel", "V2DRequest", "V2DSite", "make_site"]

#: what a 503 for a full body budget tells clients to wait, in seconds
RETRY_AFTER = 1


class BodyMemory:
    """
    The bytes held by the request bodies in flight, against a bound (0: none); freed
    bodies are reported to ``trim`` (freed memory returned to the system after big ones).
    """

    def __init__(self, limit: int = 0, trim: Optional[FreedMemoryTrim] = None) -> None:
        self.limit = limit
        self.held = 0
        self._trim = trim

    def has_room(self, size: int, own: int = 0) -> bool:
        """Whether a body holding ``own`` bytes may take ``size`` more (always, when it is the only one)."""
        return not self.limit or self.held + size <= self.limit or self.held <= own

    def take(self, size: int) -> None:
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        if self._trim is not None:
            self._trim.freed(size)


class ReceivedBody:
    """
    A request body kept in memory as it arrives; offers the file methods twisted.web
    uses on ``content``.

    The chunks are kept as they come until more than half of the announced length has
    arrived; then one buffer of that length takes them and the rest is received
    straight into it. Memory stays under twice the bytes received, each byte is
    copied once, and reading back the whole body copies nothing. A body without an
    announced length (chunked) is joined once, when read.
    """

    def __init__(self, memory: BodyMemory, length: Optional[int] = None) -> None:
        self.held = 0
        self._memory = memory
        self._length = length or 0
        self._chunks: List[bytes] = []
        self._buffer: Optional[bytearray] = None
        self._view: Optional[memoryview] = None
        self._end = 0
        self._pos = 0

    def _charge(self, size: int) -> bool:
        if not self._memory.has_room(size, own=self.held):
            return False
        self._memory.take(size)
        self.held += size
        return True

    def write(self, data: bytes) -> bool:
        """Keep ``data``; False (nothing kept) when the bodies in flight have no room for it."""
        end = self._end + len(data)
        if self._view is not None and end <= len(self._view):
            self._view[self._end : end] = data
        elif self._buffer is None and end <= self._length < 2 * end:
            if not self._charge(self._length - self.held):
                return False
            self._into_buffer(bytearray(self._length))
            assert self._view is not None
            self._view[self._end : end] = data
        else:
            if not self._charge(len(data)):
                return False
            if self._view is not None:  # more than announced: keep it all
                self._chunks = [bytes(self._view[: self._end])]
                self._release_view()
                self._buffer = None
            self._chunks.append(data)
        self._end = self._pos = end
        return True

    def _into_buffer(self, buffer: bytearray) -> None:
        self._buffer = buffer
        self._view = memoryview(buffer)
        at = 0
        for chunk in self._chunks:
            self._view[at : at + len(chunk)] = chunk
            at += len(chunk)
        self._chunks = []

    def getvalue(self) -> bytearray:
        if self._buffer is None or self._chunks:
            joined = bytearray().join(self._chunks)
            self._chunks = []
            self._buffer, self._view = joined, memoryview(joined)
        if self._end == len(self._buffer):
            return self._buffer
        assert self._view is not None
        return bytearray(self._view[: self._end])

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else (self._end + offset if whence == 2 else self._pos + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._end if size < 0 else min(self._end, self._pos + size)
        data = bytes(memoryview(self.getvalue())[self._pos : end])
        self._pos = end
        return data

    def _release_view(self) -> None:
        if self._view is not None:
            self._view.release()
            self._view = None

    def close(self) -> None:
        """Give the memory back to the budget (the bytes live on while a reader holds them)."""
        self._release_view()
        self._chunks = []
        self._buffer = None
        held, self.held = self.held, 0
        if held:
            self._memory.give(held)


#: the budget of a site that sets none: no bound, no trim
_UNBOUNDED = BodyMemory()


class V2DRequest(Request):
    """
    A request that refuses bodies over ``site.max_body_size`` (413) and bodies that do
    not fit in ``site.body_memory`` (503 with Retry-After).

    A refused body is read and dropped, never stored, and the answer is sent once it has
    arrived, so that clients still sending see the answer rather than a reset.
    """

    refusal: Optional[Tuple[int, str]] = None
    #: The answer being computed (a Deferred), cancelled if the client goes away first.
    pending: Any = None
    _received = 0
    _limit = 0
    _memory = _UNBOUNDED

    @property
    def too_large(self) -> bool:
        return self.refusal is not None and self.refusal[0] == 413

    def _site_value(self, name: str, default: Any) -> Any:
        return getattr(getattr(self.channel, "site", None), name, default)

    def _refuse(self, code: int, message: str) -> None:
        if isinstance(self.content, ReceivedBody):
            self.content.close()
        self.refusal = (code, message)
        self.content = io.BytesIO()

    def gotLength(self, length: Optional[int]) -> None:
        limit = self._limit = self._site_value("max_body_size", 0) or 0
        memory = self._memory = self._site_value("body_memory", _UNBOUNDED)
        self.content = ReceivedBody(memory, length)  # type: ignore[assignment]
        if limit and length is not None and length > limit:
            self._refuse(413, f"request body is over the limit of {limit} bytes (setting max_body_size)")
        elif length and not memory.has_room(length):
            self._refuse(503, _busy(memory))

    def handleContentChunk(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        self._received += len(data)
        if self._limit and self._received > self._limit:
            self._refuse(
                413, f"request body is over the limit of {self._limit} bytes (setting max_body_size)"
            )
        elif not self.content.write(data):  # type: ignore[union-attr]
            self._refuse(503, _busy(self._memory))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()

    def process(self) -> None:
        if self.refusal is None:
            super().process()
            return
        code, message = self.refusal
        self.setResponseCode(code)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"connection", b"close")
        if code == 503:
            self.setHeader(b"retry-after", str(RETRY_AFTER).encode())
        self.write(error_body(message))
        self.finish()


def _busy(memory: BodyMemory) -> str:
    return (
        f"the server holds too many request bodies ({memory.limit} bytes between them, setting "
        f"max_bodies_in_flight); retry in {RETRY_AFTER} s"
    )


class V2DChannel(JSONErrorChannel):
    """
    An HTTP/1.1 connection that gives each request ``site.read_timeout`` seconds from
    its first byte to arrive whole, headers and body (0: no limit); 408 and close
    otherwise. The idle timeout, which only counts silence, stays as it is. A request
    the HTTP parser refuses is answered with a JSON error (JSONErrorChannel).
    """

    log = Logger()
    #: the timer of the read timeout: kept from request to request (moved on, which is
    #: cheap) and only made again after it went off
    _read_deadline: Optional[Any] = None
    _reading = False
    _read_timeout: float = 0
    #: a request has arrived whole and is being answered (bytes arriving meanwhile are
    #: the next request's, which Twisted holds until this one is done)
    _answering = False

    def dataReceived(self, data: bytes) -> None:
        if not self._reading and not self._answering:
            timeout = getattr(getattr(self, "site", None), "read_timeout", 0)
            if timeout:
                self._reading = True
                self._read_timeout = timeout
                if self._read_deadline is None:
                    self._read_deadline = self.callLater(timeout, self._read_timed_out)
                else:
                    self._read_deadline.reset(timeout)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._reading = False
        self._answering = True
        super().allContentReceived()

    def requestDone(self, request: HTTPRequest) -> None:
        self._answering = False
        super().requestDone(request)

    def connectionMade(self) -> None:
        super().connectionMade()
        site = getattr(self, "site", None)
        if isinstance(site, V2DSite):
            site.channels.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        site = getattr(self, "site", None)
        if isinstance(site, V2DSite):
            site.channel_closed(self)
        self._reading = False
        if self._read_deadline is not None:
            if self._read_deadline.active():
                self._read_deadline.cancel()
            self._read_deadline = None
        super().connectionLost(reason)

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self._reading or self.transport is None:
            return  # went off between requests, or while one is served: not the read's business
        timeout = self._read_timeout
        self.log.info(
            "request from {peer} not received within {timeout}s (request_read_timeout): 408",
            peer=str(self.transport.getPeer()),
            timeout=timeout,
        )
        body = error_body(f"request not received within {timeout:g} s (setting request_read_timeout)")
        head = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        self.transport.write(head + body)
        self.timeoutConnection()


def _channel_protocol() -> Any:
    return http_channel_protocol(V2DChannel())


class V2DSite(Site):
    """A Site with v2d's request and channel bounds; its access log is optional (off by default)."""

    protocol = staticmethod(_channel_protocol)
    access_log = False
    max_body_size = 0
    read_timeout: float = 0
    body_memory = _UNBOUNDED

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The open connections (V2DChannel adds and removes itself).
        self.channels: set = set()
        self._all_closed: List[Deferred] = []

    def log(self, request: Any) -> None:
        if self.access_log:
            super().log(request)

    def channel_closed(self, channel: Any) -> None:
        self.channels.discard(channel)
        if not self.channels and self._all_closed:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_connections(self, clock: IReactorTime, timeout: float) -> Deferred:
        """
        Close every connection once what was written to it has gone out (a drained
        server's answers, which the reactor's stop would otherwise cut); fires when
        all are closed, aborting those still open after ``timeout`` s (a client that
        does not read).
        """
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.loseConnection()
        if not self.channels:
            return succeed(None)
        d: Deferred = Deferred()
        self._all_closed.append(d)

        def abort(result: Any, timeout: float) -> None:
            self._all_closed.remove(d)
            for channel in list(self.channels):
                if channel.transport is not None:
                    channel.transport.abortConnection()
            self.channels.clear()

        return d.addTimeout(timeout, clock, onTimeoutCancel=abort)


def make_site(
    resource: IResource,
    max_body_size: int,
    access_log: bool = False,
    max_bodies_in_flight: int = 0,
    read_timeout: float = 0,
    trim: Optional[FreedMemoryTrim] = None,
    **kwargs: Any,
) -> V2DSite:
    """
    A Site serving ``resource`` with the body size limit, the bound of the bodies in
    flight (0: none) and the request read timeout (0: none); freed bodies are reported
    to ``trim``.
    """
    # v2d never reads HTML form posts; Twisted's check for them parses Content-Type
    # through the email package on every POST, a large share of a small request.
    site = V2DSite(resource, requestFactory=V2DRequest, **site_options(), **kwargs)
    site.max_body_size = max_body_size
    site.access_log = access_log
    site.read_timeout = read_timeout
    site.body_memory = BodyMemory(max_bodies_in_flight, trim)
    site.displayTracebacks = False
    site.noisy = False
    return site
