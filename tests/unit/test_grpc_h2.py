"""
The h2 gRPC engine's pieces that need no socket: ``grpc-timeout``, ``grpc-message``
encoding, metadata both ways, handler lookup through interceptors, running a handler
coroutine in place (the rest as a task only when it waits: ``v2d._coro``), gathered
sends on a socket pair, and the protocol over a ``StringTransport`` (flow control of a
streaming call, a client's GOAWAY). The engine on real sockets is tested in
tests/integration/test_grpc_h2_engine.py.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from urllib.parse import unquote

import grpc
import hpack
import pytest
from twisted.internet.testing import StringTransport

from v2d._coro import Resumed
from v2d.grpc import _h2, _http2


@pytest.mark.parametrize(
    "value, seconds",
    [(b"5S", 5.0), (b"100m", 0.1), (b"1H", 3600.0), (b"2M", 120.0), (b"7u", 7e-6), (b"9n", 9e-9)],
)
def test_parse_timeout(value, seconds):
    assert _h2.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"5", b"S", b"5s", b"123456789S", b"-1S", b"1.5S"])
def test_parse_timeout_refuses_malformed(value):
    assert _h2.parse_timeout(value) is None


def test_percent_encode_round_trips_through_unquote():
    text = "model 'ü' not found: 100% sure\n"
    encoded = _h2.percent_encode(text)
    assert encoded.isascii() and b"%25" in encoded and b"%0A" in encoded
    assert unquote(encoded.decode("ascii")) == text


def test_metadata_both_ways():
    pairs = _h2._encode_metadata([("X-Trace", "abc"), ("blob-bin", b"\x00\xff"), ("n", 3)])
    assert pairs == [
        (b"x-trace", b"abc"),
        (b"blob-bin", base64.b64encode(b"\x00\xff").rstrip(b"=")),
        (b"n", b"3"),
    ]
    headers = [(b":path", b"/a/b"), (b"te", b"trailers"), (b"content-type", b"application/grpc")] + pairs
    headers.append((b"grpc-timeout", b"1S"))
    assert _h2._decode_metadata(headers) == (("x-trace", "abc"), ("blob-bin", b"\x00\xff"), ("n", "3"))


def test_undecodable_binary_metadata_is_dropped():
    assert _h2._decode_metadata([(b"a-bin", b"!!!")]) == ()


class _Interceptor:
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.seen: list = []

    async def intercept_service(self, continuation, details):
        self.seen.append((details.method, tuple(details.invocation_metadata)))
        if self.refuse:
            return None
        return await continuation(details)


def _server(*interceptors):
    server = _h2.H2Server(reactor=None, interceptors=interceptors)
    handler = grpc.unary_unary_rpc_method_handler(lambda r, c: r)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("s.S", {"M": handler}),))
    server.add_registered_method_handlers("s.T", {"N": handler})
    return server, handler


def test_lookup_by_method_and_through_interceptors():
    server, handler = _server()
    assert server.lookup("/s.S/M", ()) is handler
    assert server.lookup("/s.T/N", ()) is handler
    assert server.lookup("/s.S/X", ()) is None
    seen = _Interceptor(refuse=False)
    server, handler = _server(seen)
    assert server.lookup("/s.S/M", (("k", "v"),)) is handler
    assert seen.seen == [("/s.S/M", (("k", "v"),))]
    server, _ = _server(_Interceptor(refuse=True))
    assert server.lookup("/s.S/M", ()) is None


def test_an_interceptor_that_waits_is_an_error():
    class Waits:
        async def intercept_service(self, continuation, details):
            await asyncio.sleep(0)

    server, _ = _server(Waits())
    with pytest.raises(RuntimeError, match="must answer at once"):
        server.lookup("/s.S/M", ())


def test_resume_continues_a_coroutine_that_waited():
    async def handler(steps):
        steps.append("start")
        await asyncio.sleep(0)
        steps.append("resumed")
        return 42

    async def main():
        steps: list = []
        coro = handler(steps)
        first = coro.send(None)  # run in place up to the first wait, as the engine does
        assert steps == ["start"]
        result = await asyncio.ensure_future(Resumed(coro, first))
        assert steps == ["start", "resumed"]
        return result

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == 42
    finally:
        loop.close()


def test_resume_passes_cancellation_into_the_coroutine():
    async def handler(seen):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main():
        seen: list = []
        coro = handler(seen)
        first = coro.send(None)
        task = asyncio.ensure_future(Resumed(coro, first))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == ["cancelled"]
    finally:
        loop.close()


def test_gathered_sends_return_what_the_socket_did_not_take():
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        data = bytes(range(256)) * 4096  # 1 MiB, more than the socket holds
        pieces = [b"head"] + [memoryview(data)[i : i + 1000] for i in range(0, len(data), 1000)]
        rest = _h2._send_gathered(ours, pieces)
        assert rest, "a full socket leaves pieces over"
        theirs.setblocking(False)
        got = bytearray()
        while True:
            try:
                chunk = theirs.recv(1 << 20)
            except BlockingIOError:
                break
            got += chunk
        assert bytes(got) + b"".join(rest) == b"head" + data
        assert _h2._send_gathered(ours, [b"small", memoryview(b"er")]) == []
        assert theirs.recv(100) == b"smaller"
    finally:
        ours.close()
        theirs.close()


_HEAD = struct.Struct(">IBI")


def frame(kind, flags, stream_id, payload=b""):
    """One HTTP/2 frame, as a client sends it."""
    return _HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def _served(method, handler):
    """A server with ``handler`` as ``/s.S/<method>``, and a request header block for it."""
    server = _h2.H2Server(reactor=None)
    server.add_registered_method_handlers("s.S", {method: handler})
    block = hpack.Encoder().encode(
        [(":method", "POST"), (":path", f"/s.S/{method}"), ("content-type", "application/grpc")]
    )
    return server, block


def test_a_streaming_handler_that_falls_behind_slows_its_client():
    """
    Requests of a streaming call that wait in its queue are not given back to the
    client's window until the handler takes them (a protocol over a StringTransport:
    no socket and no reactor; the handler never gets to run, as if it were busy).
    """

    async def stream(requests, context):  # pragma: no cover - never resumed here
        async for _ in requests:
            yield b""

    server, block = _served("Stream", grpc.stream_stream_rpc_method_handler(stream))
    message = b"\x00" + struct.pack(">I", 1000) + b"m" * 1000

    async def main():
        protocol = server.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(
            _http2.PREFACE
            + frame(_http2.SETTINGS, 0, 0)
            + frame(_http2.HEADERS, _http2.END_HEADERS, 1, block)
            + b"".join(frame(_http2.DATA, 0, 1, message) for _ in range(10))
        )
        call = protocol.calls[1]  # its handler waits for the loop, which this does not give it
        assert call.requests.qsize() == 10
        queued_after = _h2._QUEUED * len(message)
        assert call.unconsumed == 10 * len(message) - queued_after, "past the queue's bound: held back"
        assert protocol.conn.streams[1].unacknowledged == queued_after
        protocol.connectionLost(None)

    asyncio.run(main())


def test_a_client_going_away_still_gets_its_answers():
    async def echo(request, context):
        return request

    server, block = _served("Echo", grpc.unary_unary_rpc_method_handler(echo))

    async def main():
        transport = StringTransport()
        protocol = server.buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.dataReceived(
            _http2.PREFACE
            + frame(_http2.SETTINGS, 0, 0)
            + frame(_http2.HEADERS, _http2.END_HEADERS, 1, block)
        )
        protocol.dataReceived(frame(_http2.GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
        assert not transport.disconnecting, "a call is in flight"
        protocol.dataReceived(frame(_http2.DATA, _http2.END_STREAM, 1, b"\x00\x00\x00\x00\x02hi"))
        assert transport.disconnecting, "closed once the last call has its answer"
        answer = transport.value()
        assert b"\x00\x00\x00\x00\x02hi" in answer
        decoder = hpack.Decoder()
        blocks = []
        pos = 0
        while pos < len(answer):
            size, kind = int.from_bytes(answer[pos : pos + 3], "big"), answer[pos + 3]
            if kind == _http2.HEADERS:
                blocks.append(decoder.decode(answer[pos + 9 : pos + 9 + size], raw=True))
            pos += 9 + size
        assert blocks[-1] == [(b"grpc-status", b"0")]

    asyncio.run(main())
