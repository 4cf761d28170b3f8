"""
The only module that reaches into Twisted's private attributes.

v2d needs a few things Twisted keeps to itself: whether a process pipe has bytes
queued (to write a request at once), whether a request's client went away, the asyncio
loop under the reactor, the hook that answers a request the HTTP parser refuses, the
wrapper that lets a channel switch to HTTP/2. Each is read here, by name, and each has
a fallback for a Twisted that no longer has it: v2d then works as plain Twisted would
(slower, or with Twisted's own answer), never breaks. ``tests/unit/test_twisted_compat.py``
checks every access against real Twisted objects, and every fallback.

Nothing else in v2d may name a private Twisted attribute.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Dict, Optional

from twisted.internet import abstract
from twisted.internet.interfaces import IProtocol
from twisted.web import http
from twisted.web.server import Site

__all__ = [
    "HookedHTTPChannel",
    "asyncio_loop",
    "bad_request_hook_supported",
    "http_channel_protocol",
    "pipe_writer",
    "reap_processes",
    "request_disconnected",
    "site_options",
    "writer_idle",
]

#: HTTPChannel's method that answers a request its parser refused (400 and close).
BAD_REQUEST_HOOK = "_respondToBadRequestAndDisconnect"


def asyncio_loop(reactor: Any) -> Optional[asyncio.AbstractEventLoop]:
    """
    The asyncio loop Twisted's asyncio reactor runs on; None when ``reactor`` is not
    one. Fallback: the loop running, else the thread's current loop (the one ``tap``
    installs the reactor on).
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        return loop
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()


def pipe_writer(transport: Any, fd: int) -> Optional[Any]:
    """The writer of a spawned process's pipe ``fd`` (a ``ProcessWriter``), or None."""
    pipes = getattr(transport, "pipes", None)
    if not isinstance(pipes, dict):
        return None
    return pipes.get(fd)


def writer_idle(writer: Any) -> bool:
    """
    Whether a Twisted writer (``abstract.FileDescriptor``) is connected and has nothing
    queued, so that bytes written to its fd now keep their order. Fallback: False
    (everything goes through the writer's own queue).
    """
    try:
        return bool(
            writer.connected
            and not writer.disconnecting
            and not writer._tempDataLen
            and len(writer.dataBuffer) <= writer.offset
        )
    except AttributeError:
        return False


def idle_socket(transport: Any) -> Optional[Any]:
    """
    A TCP transport's socket, when nothing is queued on the transport, so that bytes
    sent on it now keep their order; None otherwise, and for TLS and other transports
    (everything then goes through ``transport.write``).
    """
    if not isinstance(transport, abstract.FileDescriptor):
        return None  # a wrapper (TLS) that passes ``socket`` on to the transport under it
    sock = getattr(transport, "socket", None)
    if sock is None or not hasattr(sock, "send") or not writer_idle(transport):
        return None
    return sock


def read_more(transport: Any, size: int) -> bool:
    """
    Let a socket transport read up to ``size`` bytes at a time (``bufferSize``, 64 KiB by
    default) when it reads less; False for transports that have no such knob (TLS).
    """
    if not isinstance(transport, abstract.FileDescriptor):
        return False
    if getattr(transport, "bufferSize", size) < size:
        transport.bufferSize = size
    return True


def request_disconnected(request: Any) -> bool:
    """
    Whether the client of a ``twisted.web`` request has gone (nothing can be written).
    Fallback: Twisted drops the request's channel when the connection is lost.
    """
    try:
        return bool(request._disconnected)
    except AttributeError:
        return getattr(request, "channel", None) is None


def reap_processes() -> bool:
    """
    Have Twisted collect every spawned child that has exited (and tell their
    protocols); False when this Twisted has no way to ask (children are then reaped
    at the next SIGCHLD).
    """
    from twisted.internet import process

    reap = getattr(process, "reapAllProcesses", None)
    if reap is None:
        return False
    reap()
    return True


def http_channel_protocol(channel: http.HTTPChannel) -> IProtocol:
    """
    ``channel`` as a Site's protocol: wrapped as Twisted's default is, so that a TLS
    connection that negotiates HTTP/2 switches to it. Fallback: the channel itself
    (HTTP/1.1 only).
    """
    generic = getattr(http, "_GenericHTTPChannelProtocol", None)
    if generic is None:
        return channel
    return generic(channel)


def _site_takes_form_option() -> bool:
    try:
        return "parsePOSTFormSubmission" in inspect.signature(Site.__init__).parameters
    except (TypeError, ValueError):
        return False


def site_options(parse_forms: bool = False) -> Dict[str, Any]:
    """
    Keyword arguments for ``Site(...)``: HTML form bodies not parsed (Twisted parses
    ``Content-Type`` through the email package on every POST for them) where this
    Twisted lets a Site turn that off; nothing where it always parses.
    """
    return {} if parse_forms or not _site_takes_form_option() else {"parsePOSTFormSubmission": False}


def bad_request_hook_supported() -> bool:
    """Whether Twisted's HTTPChannel still answers a refused request through ``BAD_REQUEST_HOOK``."""
    return callable(getattr(http.HTTPChannel, BAD_REQUEST_HOOK, None))


class HookedHTTPChannel(http.HTTPChannel):
    """
    An HTTPChannel that answers a request its parser refused with
    ``respond_to_bad_request`` (a subclass's). Where Twisted no longer calls the hook,
    Twisted's own 400 answers instead.
    """

    def respond_to_bad_request(self) -> None:
        """Answer a request the parser refused, and close the connection."""
        http.HTTPChannel._respondToBadRequestAndDisconnect(self)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.respond_to_bad_request()
