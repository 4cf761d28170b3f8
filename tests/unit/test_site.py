"""
The HTTP site's bounds in memory (v2d.rest._site): bodies held as they arrive, the
bound of the bodies in flight (503), the request read timeout (408), the trim of
freed memory after big bodies, and closing the connections at shutdown. Connections
are driven by hand over StringTransport with a Clock: no ports, no global reactor.
"""

from __future__ import annotations

import json
from typing import List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from v2d.memory import TRIM_AFTER, TRIM_DELAY, FreedMemoryTrim
from v2d.rest._site import BodyMemory, ReceivedBody, make_site

MiB = 1024 * 1024


class Echo(Resource):
    """Answers a POST with the length of its body, a GET with ``ok``."""

    isLeaf = True

    def render_GET(self, request):
        return b"ok"

    def render_POST(self, request):
        return b"%d" % len(request.content.getvalue())


def site_and_clock(**kwargs):
    clock = Clock()
    kwargs.setdefault("read_timeout", 60)
    kwargs.setdefault("max_bodies_in_flight", 8 * MiB)
    site = make_site(Echo(), 64 * MiB, reactor=clock, **kwargs)
    return site, clock


def connect(site) -> Tuple[object, StringTransport]:
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    protocol.makeConnection(transport)
    return protocol, transport


def post_head(length: int) -> bytes:
    return b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length


# -- bodies --------------------------------------------------------------------


def test_received_body_behaves_like_a_file():
    body = ReceivedBody(BodyMemory(), 6)
    body.write(b"abc")
    body.write(b"def")
    assert body.tell() == 6 and body.getvalue() == bytearray(b"abcdef")
    body.seek(0)
    assert body.read(2) == b"ab" and body.read() == b"cdef"
    body.write(b"gh")  # more than announced is kept, never dropped
    assert body.getvalue() == bytearray(b"abcdefgh")


def test_memory_follows_the_bytes_received_not_the_announced_length():
    memory = BodyMemory()
    body = ReceivedBody(memory, 100 * MiB)
    assert memory.held == 0, "headers alone cost nothing"
    body.write(b"x" * MiB)
    assert memory.held == MiB and body._buffer is None
    for _ in range(49):
        body.write(b"x" * MiB)
    assert memory.held == 50 * MiB and body._buffer is None, "chunks kept up to half the length"
    body.write(b"y" * MiB)
    assert memory.held == 100 * MiB and body._buffer is not None, "then one buffer of the whole length"
    for _ in range(49):
        body.write(b"z" * MiB)
    value = body.getvalue()
    assert value is body.getvalue(), "the whole buffer is handed out, not a copy"
    assert len(value) == 100 * MiB and value[50 * MiB] == ord("y") and value[-1] == ord("z")
    body.close()
    assert memory.held == 0
    body.close()
    assert memory.held == 0, "closing twice gives back once"


def test_a_small_body_in_one_piece_goes_straight_into_its_buffer():
    body = ReceivedBody(BodyMemory(), 5)
    body.write(b"hello")
    assert body._chunks == [] and body.getvalue() == bytearray(b"hello")


def test_a_chunked_body_is_joined_once_into_a_bytearray():
    memory = BodyMemory()
    body = ReceivedBody(memory)
    for piece in (b"ab", b"cd", b"e"):
        body.write(piece)
    assert memory.held == 5
    value = body.getvalue()
    assert isinstance(value, bytearray) and value == b"abcde" and value is body.getvalue()


def test_the_bound_lets_a_body_alone_in_and_refuses_what_does_not_fit():
    memory = BodyMemory(limit=10)
    first = ReceivedBody(memory, 30)
    assert first.write(b"x" * 20), "alone, a body may take more than the bound"
    assert not memory.has_room(1)
    second = ReceivedBody(memory)
    assert not second.write(b"y"), "no room beside it"
    assert memory.held == 30
    first.close()
    assert memory.held == 0
    assert second.write(b"y" * 4) and memory.held == 4
    assert memory.has_room(6) and not memory.has_room(7)
    assert memory.has_room(7, own=4), "the only body may grow past the bound"


def test_a_trim_follows_big_bodies_once_per_burst():
    clock = Clock()
    trims: List[int] = []
    memory = BodyMemory(limit=0, trim=FreedMemoryTrim(123, clock.callLater, trim=trims.append))
    memory.take(1)
    memory.give(1)
    clock.advance(TRIM_DELAY)
    assert trims == [], "small bodies are not followed by a trim"
    for _ in range(3):
        memory.take(TRIM_AFTER)
        memory.give(TRIM_AFTER)
    assert trims == []
    clock.advance(TRIM_DELAY)
    assert trims == [123], "one trim, keeping retain_memory"
    memory.take(TRIM_AFTER)
    memory.give(TRIM_AFTER)
    clock.advance(TRIM_DELAY)
    assert trims == [123, 123], "and one for the next burst"


# -- the site: 503 and 408 ---------------------------------------------------------


def test_a_request_beyond_the_bodies_in_flight_gets_503_with_retry_after():
    site, clock = site_and_clock(max_bodies_in_flight=4 * MiB)
    big, big_transport = connect(site)
    big.dataReceived(post_head(6 * MiB) + b"x" * (3 * MiB + 1))  # past half: 6 MiB held
    assert site.body_memory.held == 6 * MiB
    other, other_transport = connect(site)
    other.dataReceived(post_head(10) + b"0123456789")
    answer = other_transport.value()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 1\r\n" in answer
    assert b"max_bodies_in_flight" in answer
    big.dataReceived(b"x" * (3 * MiB - 1))
    answer = big_transport.value()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"%d" % (6 * MiB) in answer
    assert site.body_memory.held == 0, "a finished request gives its body back"
    again, again_transport = connect(site)
    again.dataReceived(post_head(10) + b"0123456789")
    assert again_transport.value().startswith(b"HTTP/1.1 200 ")


def test_a_chunked_body_that_outgrows_the_bound_is_dropped_and_answered_503():
    site, clock = site_and_clock(max_bodies_in_flight=4 * MiB)
    holder, _ = connect(site)
    holder.dataReceived(post_head(50 * MiB) + b"x" * (3 * MiB))
    chunked, transport = connect(site)
    chunked.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"y" * (512 * 1024)
    for _ in range(4):
        chunked.dataReceived(b"%x\r\n%s\r\n" % (len(piece), piece))
    assert site.body_memory.held == 3 * MiB, "the refused body was given back"
    chunked.dataReceived(b"0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 503 ")


def test_headers_arriving_slowly_get_408_at_the_read_timeout():
    site, clock = site_and_clock(read_timeout=10)
    protocol, transport = connect(site)
    for byte in b"GET /x HTTP/1.1\r\nHost: x\r\n":
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.5)  # each byte well within the idle timeout
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    assert transport.disconnecting
    body = transport.value().split(b"\r\n\r\n", 1)[1]
    assert "request_read_timeout" in json.loads(body)["error"]


def test_a_body_arriving_slowly_gets_408_too():
    site, clock = site_and_clock(read_timeout=10)
    protocol, transport = connect(site)
    protocol.dataReceived(post_head(1000))
    for _ in range(40):
        protocol.dataReceived(b"x")
        clock.advance(0.3)
    assert transport.value().startswith(b"HTTP/1.1 408 ")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert site.body_memory.held == 0, "the connection's body was given back"


def test_the_read_timeout_counts_from_each_request_and_spares_idle_keep_alive():
    site, clock = site_and_clock(read_timeout=10)
    protocol, transport = connect(site)
    for gap in (30, 5, 30, 9):  # idle between requests: the idle timeout's business (60 s)
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        clock.advance(9)  # each request within 10 s of its first byte
        protocol.dataReceived(b"\r\n")
        assert transport.value().startswith(b"HTTP/1.1 200 ")
        transport.clear()
        clock.advance(gap)
    assert not transport.disconnecting and transport.value() == b""
    protocol.dataReceived(b"GET /x HTTP/1.1\r\n")
    clock.advance(10)
    assert transport.value().startswith(b"HTTP/1.1 408 "), "and the next slow one is still caught"


class Slow(Resource):
    """Answers each GET when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: List[object] = []

    def render_GET(self, request):
        self.waiting.append(request)
        return NOT_DONE_YET


def test_a_pipelined_request_waits_for_the_answer_before_its_read_timeout_counts():
    clock = Clock()
    slow = Slow()
    site = make_site(slow, MiB, reactor=clock, read_timeout=10)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n")
    clock.advance(30)  # the first answer is slow; the second request is held meanwhile
    assert transport.value() == b"" and len(slow.waiting) == 1
    first = slow.waiting.pop()
    first.write(b"a")
    first.finish()
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    clock.advance(9)
    assert transport.value() == b"", "the second request's 10 s count from the first's answer"
    clock.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 ")


def test_no_read_timeout_when_turned_off():
    site, clock = site_and_clock(read_timeout=0)
    protocol, transport = connect(site)
    protocol.dataReceived(b"GET /x HTTP/1.1\r\n")
    clock.advance(59)
    protocol.dataReceived(b"Host: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")


# -- the settings ------------------------------------------------------------------


def test_the_bounds_are_settings_options_and_variables(tmp_path, monkeypatch):
    import v2d.tap
    from v2d.settings import Settings

    assert (Settings().max_bodies_in_flight, Settings().request_read_timeout) == (1024 * MiB, 60.0)
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"max_bodies_in_flight": 5 * MiB, "request_read_timeout": 7}))
    s = Settings.load(str(config), {"V2D_REQUEST_READ_TIMEOUT": "2.5"})
    assert (s.max_bodies_in_flight, s.request_read_timeout) == (5 * MiB, 2.5)
    monkeypatch.setattr(v2d.tap, "install_asyncio_reactor", lambda event_loop="auto": object())
    monkeypatch.delenv("V2D_CONFIG", raising=False)
    options = v2d.tap.Options()
    options.parseOptions(
        ["--models", "m", "--max-bodies-in-flight", "3000000", "--request-read-timeout", "0"]
    )
    s = options["settings"]
    assert (s.max_bodies_in_flight, s.request_read_timeout) == (3000000, 0.0)
    problems = Settings(max_bodies_in_flight=0, request_read_timeout=-1).problems()
    assert any("max_bodies_in_flight" in p for p in problems)
    assert any("request_read_timeout" in p for p in problems)
    with pytest.raises(SystemExit, match="--request-read-timeout must be a number of seconds"):
        v2d.tap.Options().parseOptions(["--request-read-timeout", "soon"])


# -- closing at shutdown -----------------------------------------------------------


def test_closing_connections_lets_their_bytes_out_then_aborts_what_stays_open():
    site, clock = site_and_clock()
    first, first_transport = connect(site)
    second, second_transport = connect(site)
    assert len(site.channels) == 2
    closed = []
    site.close_connections(clock, 1.0).addCallback(closed.append)
    assert first_transport.disconnecting and second_transport.disconnecting, "closed once written"
    first.connectionLost(Failure(ConnectionDone()))
    assert closed == [] and len(site.channels) == 1
    clock.advance(1.0)  # the second client reads nothing: cut
    assert closed == [None] and second_transport.disconnected and not site.channels


def test_closing_no_connection_is_done_at_once():
    site, clock = site_and_clock()
    closed = []
    site.close_connections(clock, 1.0).addCallback(closed.append)
    assert closed == [None]
