"""
v2d._twisted against real Twisted objects: a real asyncio reactor on a private loop
(never installed, never run), a real spawned process and its pipe writer, a real
HTTPChannel and Request over StringTransport. Each private attribute is also taken
away, to check the fallback a Twisted without it gets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, List

import pytest
from twisted.internet import process, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from v2d import _twisted
from v2d.rest._channel import MALFORMED
from v2d.rest._site import V2DChannel, make_site


@pytest.fixture
def asyncio_reactor():
    """A real asyncio reactor on a loop of its own; neither installed nor run."""
    loop = asyncio.new_event_loop()
    reactor = AsyncioSelectorReactor(loop)
    yield reactor
    reactor.removeAll()
    loop.close()


def test_the_asyncio_loop_of_a_real_reactor(asyncio_reactor):
    loop = _twisted.asyncio_loop(asyncio_reactor)
    assert isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_closed()
    assert _twisted.asyncio_loop(Clock()) is None, "not an asyncio reactor"


def test_the_asyncio_loop_falls_back_to_the_current_loop(asyncio_reactor, monkeypatch):
    loop = _twisted.asyncio_loop(asyncio_reactor)
    monkeypatch.delattr(asyncio_reactor, "_asyncioEventloop")
    asyncio.set_event_loop(loop)
    try:
        assert _twisted.asyncio_loop(asyncio_reactor) is loop
    finally:
        asyncio.set_event_loop(None)


class Child(ProcessProtocol):
    def __init__(self) -> None:
        self.exited: List[Any] = []

    def processExited(self, reason: Failure) -> None:
        self.exited.append(reason)


@pytest.fixture
def child(asyncio_reactor):
    """A real ``cat`` spawned by the (not running) reactor: its stdin stays open."""
    protocol = Child()
    proc = asyncio_reactor.spawnProcess(protocol, "cat", ["cat"], env={})
    yield proc, protocol
    if proc.pid is not None:
        proc.signalProcess("KILL")
        _reaped(protocol)
    for pipe in list(proc.pipes.values()):
        pipe.connectionLost(Failure(ConnectionDone()))


def _reaped(protocol: Child) -> bool:
    deadline = time.monotonic() + 10
    while not protocol.exited and time.monotonic() < deadline:
        assert _twisted.reap_processes()
        time.sleep(0.01)
    return bool(protocol.exited)


def test_a_real_pipe_writer_is_idle_until_bytes_are_queued(child):
    proc, _ = child
    writer = _twisted.pipe_writer(proc, 0)
    assert isinstance(writer, process.ProcessWriter)
    assert _twisted.pipe_writer(proc, 7) is None and _twisted.pipe_writer(object(), 0) is None
    assert _twisted.writer_idle(writer)
    proc.writeToChild(0, b"queued while the reactor does not run")
    assert not _twisted.writer_idle(writer)


def test_a_pipe_writer_without_its_buffer_attributes_is_never_idle(child, monkeypatch):
    proc, _ = child
    writer = _twisted.pipe_writer(proc, 0)
    monkeypatch.delattr(writer, "_tempDataLen")
    assert not _twisted.writer_idle(writer), "the transport's own queue is used"


def test_reap_processes_collects_a_real_child(child):
    proc, protocol = child
    proc.signalProcess("KILL")
    assert _reaped(protocol), "processExited is called once the exit is collected"
    assert proc.pid is None


def test_reap_processes_without_twisted_s_function(monkeypatch):
    monkeypatch.delattr(process, "reapAllProcesses")
    assert _twisted.reap_processes() is False


class Echo(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return json.dumps(sorted(k.decode() for k in request.args)).encode()


def _connect(site: Site) -> Any:
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_real_request_knows_its_client_left():
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    request = http.Request(channel)
    assert not _twisted.request_disconnected(request)
    request.connectionLost(Failure(ConnectionDone()))
    assert _twisted.request_disconnected(request)


def test_request_disconnected_falls_back_to_the_dropped_channel(monkeypatch):
    monkeypatch.delattr(http.Request, "_disconnected")
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    request = http.Request(channel)
    assert not _twisted.request_disconnected(request)
    request.connectionLost(Failure(ConnectionDone()))
    del request._disconnected  # as if this Twisted kept no such flag
    assert _twisted.request_disconnected(request)


def test_the_site_protocol_wraps_the_channel_as_twisted_does():
    site = make_site(Echo(), 1024, reactor=Clock())
    protocol, transport = _connect(site)
    assert type(protocol).__name__ == "_GenericHTTPChannelProtocol"
    assert isinstance(protocol._channel, V2DChannel)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200") and transport.value().endswith(b"ok")


def test_without_the_wrapper_the_site_serves_the_channel_itself(monkeypatch):
    monkeypatch.setattr(http, "_GenericHTTPChannelProtocol", None)  # as if gone
    site = make_site(Echo(), 1024, reactor=Clock())
    protocol, transport = _connect(site)
    assert isinstance(protocol, V2DChannel)
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200") and transport.value().endswith(b"ok")


FORM_POST = (
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 3\r\n\r\na=1"
)


def test_the_site_does_not_parse_form_bodies():
    assert _twisted.site_options() == {"parsePOSTFormSubmission": False}
    protocol, transport = _connect(make_site(Echo(), 1024, reactor=Clock()))
    protocol.dataReceived(FORM_POST)
    assert transport.value().endswith(b"[]"), "the body is not read as a form"
    protocol, transport = _connect(Site(Echo(), reactor=Clock()))
    protocol.dataReceived(FORM_POST)
    assert transport.value().endswith(b'["a"]'), "Twisted's default, for comparison"


def test_a_site_that_cannot_turn_form_parsing_off_still_serves(monkeypatch):
    original = Site.__init__

    def older_init(self: Site, resource: Any, requestFactory: Any = None, *args: Any, **kwargs: Any) -> None:
        original(self, resource, requestFactory, *args, **kwargs)

    monkeypatch.setattr(Site, "__init__", older_init)
    assert _twisted.site_options() == {}
    protocol, transport = _connect(make_site(Echo(), 1024, reactor=Clock()))
    protocol.dataReceived(FORM_POST)
    assert transport.value().startswith(b"HTTP/1.1 200")


def test_a_malformed_request_gets_the_json_error_through_twisted_s_hook():
    assert _twisted.bad_request_hook_supported()
    protocol, transport = _connect(make_site(Echo(), 1024, reactor=Clock()))
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body) == {"error": MALFORMED}
    assert transport.disconnecting


def test_the_hook_s_absence_is_detected(monkeypatch):
    monkeypatch.delattr(http.HTTPChannel, _twisted.BAD_REQUEST_HOOK)
    assert not _twisted.bad_request_hook_supported()


def test_the_default_bad_request_answer_is_twisted_s():
    channel = _twisted.HookedHTTPChannel()
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"NOT HTTP\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 400 Bad Request\r\n\r\n"


@pytest.fixture
def tcp_transport(asyncio_reactor):
    """A real Twisted TCP server transport over a connected loopback socket (reactor not run)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, address = listener.accept()
    accepted.setblocking(False)
    transport = tcp.Server(accepted, Protocol(), address, None, 1, asyncio_reactor)
    yield transport, client
    transport.connectionLost(Failure(ConnectionDone()))
    client.close()
    listener.close()


def test_an_idle_tcp_transport_gives_its_socket(tcp_transport):
    transport, client = tcp_transport
    sock = _twisted.idle_socket(transport)
    assert sock is transport.socket
    sock.send(b"at once")
    assert client.recv(100) == b"at once"
    transport.write(b"queued while the reactor does not run")
    assert _twisted.idle_socket(transport) is None, "bytes are queued: they go first"
    assert _twisted.idle_socket(StringTransport()) is None, "not a socket transport"
    wrapped = TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol)).buildProtocol(
        None
    )
    wrapped.transport = transport
    assert wrapped.socket is transport.socket, "the wrapper passes the attribute on"
    assert _twisted.idle_socket(wrapped) is None, "TLS: bytes must go through the wrapper"


def test_a_tcp_transport_without_its_buffer_attributes_gives_no_socket(tcp_transport, monkeypatch):
    transport, _ = tcp_transport
    monkeypatch.delattr(transport, "_tempDataLen")
    assert _twisted.idle_socket(transport) is None, "the transport's own queue is used"


def test_a_tcp_transport_can_be_told_to_read_more(tcp_transport):
    transport, _ = tcp_transport
    assert transport.bufferSize == 64 * 1024, "Twisted's default, which read_more raises"
    assert _twisted.read_more(transport, 1024 * 1024)
    assert transport.bufferSize == 1024 * 1024
    assert _twisted.read_more(transport, 4096) and transport.bufferSize == 1024 * 1024, "never lowered"
    assert not _twisted.read_more(StringTransport(), 1024 * 1024), "not a socket transport"
