"""
gRPC served by Twisted itself: the ``h2`` engine (``--grpc-engine h2``, the default).

``_http2.py`` keeps each connection's HTTP/2 state (frames, flow control, settings,
pings; HPACK decoding is the hpack library's); this module adds gRPC on top: a call
per stream, length-prefixed messages, ``grpc-timeout`` deadlines, gzip/deflate
request messages, status and metadata in trailers. It serves the same
``grpc.RpcMethodHandler``s as grpc.aio (v2d's servicers, health and reflection), with a
context offering what ``grpc.aio.ServicerContext`` offers them.

Why: grpc.aio hands every call between grpc's own threads and the loop, which costs
more CPU per small call than v2d's whole handler (docs/benchmarks.md). Here a call is
read, served and answered within one ``dataReceived`` when the model answers at once:
a handler coroutine that never waits is run to its end in place, with no task (the
rest of it becomes a task only when it does wait).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
import socket
import struct
import time
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import quote

import grpc
from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet import defer, ssl
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d._coro import Resumed
from v2d._twisted import idle_socket, read_more
from v2d.grpc._http2 import (
    DEFAULT_WINDOW,
    NO_ERROR,
    Block,
    Connection,
    HTTP2Error,
    StreamGone,
    encode_headers,
)

__all__ = ["H2Server", "GRPCProtocol", "listen", "parse_timeout", "percent_encode"]

log = Logger()

#: Local settings announced to clients.
WINDOW = 4 * 1024 * 1024
MAX_STREAMS = 1024
MAX_HEADER_LIST = 16 * 1024
#: Seconds a connection closed at the end of a stop's grace has to take its last bytes.
ABORT_AFTER = 2.0

#: Request headers that are HTTP/2 or gRPC framing, not the call's metadata.
_RESERVED = frozenset(
    (b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"content-length")
)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_TIMEOUT = re.compile(rb"^([0-9]{1,8})([HMSmun])$")
_PREFIX = struct.Struct(">BI")

#: Printable ASCII but ``%``: what ``grpc-message`` keeps as it is (quote keeps letters and digits).
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
_ACCEPT_ENCODING = (b"grpc-accept-encoding", b"identity,deflate,gzip")
#: The header blocks of every answer, encoded once.
_RESPONSE_BLOCK = encode_headers(_RESPONSE_HEADERS + (_ACCEPT_ENCODING,))
_STATUS_BLOCK = encode_headers(_RESPONSE_HEADERS)  # a trailers-only answer's start
_OK_TRAILERS_BLOCK = encode_headers(((b"grpc-status", b"0"),))


def parse_timeout(value: bytes) -> Optional[float]:
    """Seconds of a ``grpc-timeout`` value (``100m``, ``5S``), None if malformed."""
    match = _TIMEOUT.match(value)
    if match is None:
        return None
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def percent_encode(text: str) -> bytes:
    """``grpc-message``'s encoding: UTF-8, with bytes outside 0x20-0x7E and ``%`` as ``%XX``."""
    return quote(text, safe=_MESSAGE_SAFE).encode("ascii")


def _metadata_value(key: str, value: Any) -> bytes:
    if key.endswith("-bin"):
        data = value if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8")
        return base64.b64encode(bytes(data)).rstrip(b"=")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return str(value).encode("latin-1")


def _encode_metadata(metadata: Optional[Iterable[Tuple[str, Any]]]) -> List[Tuple[bytes, bytes]]:
    """Metadata as header pairs (``-bin`` values base64, as the protocol says)."""
    pairs: List[Tuple[bytes, bytes]] = []
    for key, value in metadata or ():
        name = key.lower()
        pairs.append((name.encode("ascii"), _metadata_value(name, value)))
    return pairs


def _decode_metadata(headers: Sequence[Tuple[bytes, bytes]]) -> Tuple[Tuple[str, Any], ...]:
    pairs: List[Tuple[str, Any]] = []
    for name, value in headers:
        if name[:1] == b":" or name in _RESERVED:
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            try:
                pairs.append((key, base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)))
            except ValueError:
                continue
        else:
            pairs.append((key, value.decode("latin-1")))
    return tuple(pairs)


def _status_block(status: int, details: str, trailing: Sequence[Tuple[bytes, bytes]]) -> bytes:
    """The trailers of a status: ``grpc-status``, ``grpc-message`` and trailing metadata."""
    headers = [(b"grpc-status", b"%d" % status)]
    if details:
        headers.append((b"grpc-message", percent_encode(details)))
    headers.extend(trailing)
    return encode_headers(headers)


class _Aborted(Exception):
    """The call ended with a status before its handler finished (deadline, reset)."""


class Context:
    """What a handler gets as ``context``: the part of ``grpc.aio.ServicerContext`` v2d uses."""

    def __init__(self, call: "Call") -> None:
        self._call = call
        self._code: Optional[grpc.StatusCode] = None
        self._details = ""
        self._trailing: List[Tuple[bytes, bytes]] = []

    def invocation_metadata(self) -> Tuple[Tuple[str, Any], ...]:
        return self._call.metadata

    async def send_initial_metadata(self, metadata: Iterable[Tuple[str, Any]]) -> None:
        self._call.send_headers(_encode_metadata(metadata))

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Iterable[Tuple[str, Any]] = ()
    ) -> None:
        if code == grpc.StatusCode.OK:
            raise grpc.aio.UsageError("abort with OK")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = _encode_metadata(trailing_metadata)
        raise grpc.aio.AbortError()

    async def write(self, message: Any) -> None:
        """Send one response of a streaming call."""
        self._call.send_message(self._call.serialize(message))
        await self._call.wait_drained()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> Optional[grpc.StatusCode]:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Iterable[Tuple[str, Any]]) -> None:
        self._trailing = _encode_metadata(metadata)

    def time_remaining(self) -> Optional[float]:
        if self._call.deadline is None:
            return None
        return max(0.0, self._call.deadline - time.monotonic())

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.ended

    def peer(self) -> str:
        return self._call.protocol.peer_name()


class Call:
    """One gRPC call on one HTTP/2 stream."""

    def __init__(self, protocol: "GRPCProtocol", stream_id: int, method: str, metadata: Any) -> None:
        self.protocol = protocol
        self.stream_id = stream_id
        self.method = method
        self.metadata = metadata
        self.deadline: Optional[float] = None
        self.encoding = b"identity"
        self.head = bytearray()  # a message prefix that came split between frames
        self.incoming: Optional[List[memoryview]] = None  # a message coming in frame by frame
        self.expected = 0  # its length
        self.filled = 0  # how much of it has come
        self.flag = 0  # its compressed flag
        self.unconsumed = 0  # request bytes not yet given back to the client's window
        self.handler: Any = None
        self.serialize: Any = None  # a streaming call's response serializer (context.write)
        self.requests: Optional[asyncio.Queue] = None  # streaming requests
        self.message: Optional[bytes] = None  # a unary call's request
        self.received = 0  # messages received
        self.half_closed = False
        self.headers_sent = False
        self.ended = False
        self.cancelled = False
        self.task: Optional[asyncio.Future] = None
        self.timer: Any = None
        #: Response bytes waiting for the flow-control window (views of unchanging bytes).
        self.pending: List[memoryview] = []
        self.trailers: Optional[bytes] = None  # the block to send once pending is out
        self.drained: Optional[asyncio.Future] = None
        self.context = Context(self)

    # -- responses ---------------------------------------------------------------------

    def send_headers(self, extra: Sequence[Tuple[bytes, bytes]] = ()) -> None:
        if self.headers_sent or self.ended:
            return
        self.headers_sent = True
        block = _RESPONSE_BLOCK + encode_headers(extra) if extra else _RESPONSE_BLOCK
        self.protocol.conn.send_headers(self.stream_id, block)

    def send_message(self, data: bytes) -> None:
        """Queue one serialized response message (flow control permitting, sent at once)."""
        if self.ended:
            return
        limit = self.protocol.server.max_send
        if len(data) > limit:
            raise _StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(data)} vs. {limit})",
            )
        self.send_headers()
        prefix = _PREFIX.pack(0, len(data))
        if self.pending:  # after what waits already
            self.pending.append(memoryview(prefix))
            self.pending.append(memoryview(data))
            self.flush()
            return
        try:  # as much as the windows allow goes now (data itself, not a copy), the rest waits
            sent = self.protocol.conn.send_data(self.stream_id, data, prefix)
        except StreamGone:
            self.abandon()
            return
        if sent < 5 + len(data):
            if sent < 5:
                self.pending.append(memoryview(prefix)[sent:])
            self.pending.append(memoryview(data)[max(0, sent - 5) :])
            self.flush()
            return
        self.protocol.write_pending()

    def finish(
        self, code: grpc.StatusCode, details: str = "", trailing: Sequence[Tuple[bytes, bytes]] = ()
    ) -> None:
        """End the call with a status (after any response bytes still queued)."""
        if self.ended or self.trailers is not None:
            return
        status = code.value[0]
        if not self.headers_sent and not self.pending:
            # trailers-only: one HEADERS frame with the status
            block = _STATUS_BLOCK + _status_block(status, details, trailing)
            self.headers_sent = True
            self.trailers = b""
            self._close(block)
            return
        if status == 0 and not details and not trailing:
            self.trailers = _OK_TRAILERS_BLOCK
        else:
            self.trailers = _status_block(status, details, trailing)
        self.flush()

    def flush(self) -> None:
        conn = self.protocol.conn
        if self.ended:
            return
        pending = self.pending
        while pending:
            try:
                sent = conn.send_data(self.stream_id, pending[0])
            except StreamGone:
                pending.clear()
                self.abandon()
                return
            if sent < len(pending[0]):
                pending[0] = pending[0][sent:]
                break
            del pending[0]
        if not pending:
            if self.drained is not None and not self.drained.done():
                self.drained.set_result(None)
            self.drained = None
            if self.trailers is not None:
                self._close(self.trailers)
                return
        self.protocol.write_pending()

    def _close(self, block: bytes) -> None:
        """Send the trailers ``block``, ending the stream, and forget the call."""
        try:
            self.protocol.conn.send_headers(self.stream_id, block, end_stream=True)
        except StreamGone:
            pass
        self.ended = True
        self.protocol.write_pending()  # out before anything that waits for the call's end runs
        self.protocol.call_ended(self)

    async def wait_drained(self) -> None:
        """Wait while response bytes wait for the client's window (a slow reader)."""
        if self.pending and not self.ended:
            if self.drained is None:
                self.drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.drained)

    # -- ending --------------------------------------------------------------------------

    def cancel(self, code: Optional[grpc.StatusCode] = None, details: str = "") -> None:
        """The client went away, or the deadline passed: stop the handler."""
        if self.ended:
            return
        self.cancelled = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.requests is not None:
            self.requests.put_nowait(_Aborted())
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(_Aborted())
        if code is not None:
            self.pending.clear()
            self.finish(code, details)
            if not self.half_closed:
                # the status is sent; NO_ERROR tells the client to stop sending (RFC 9113 8.1)
                self.protocol.conn.reset(self.stream_id, NO_ERROR)
            self.protocol.write_pending()
        else:
            self.abandon()

    def abandon(self) -> None:
        """Forget the call without answering (the stream is gone)."""
        if not self.ended:
            self.ended = True
            self.protocol.call_ended(self)

    def stop_timer(self) -> None:
        """The call has ended: its deadline no longer matters."""
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class _StatusError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Details:
    """``grpc.HandlerCallDetails`` for handler lookup and interceptors."""

    __slots__ = ("method", "invocation_metadata")

    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


class GRPCProtocol(Protocol):
    """One HTTP/2 connection carrying gRPC calls."""

    def __init__(self, server: "H2Server") -> None:
        self.server = server
        self.conn: Connection = None  # type: ignore[assignment]  # made with the connection
        self.calls: Dict[int, Call] = {}
        self.closing = False
        self._receiving = False
        self._peer = ""

    # -- connection ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.server.connections.add(self)
        if hasattr(self.transport, "setTcpNoDelay"):  # as gRPC servers do: small frames go at once
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
            # the system's keepalive probes find peers gone without a word (after its
            # idle time, two hours by default: grpc core's own server keepalive time)
            self.transport.setTcpKeepAlive(True)  # type: ignore[union-attr]
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", "")
        port = getattr(peer, "port", "")
        self._peer = f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
        self.conn = Connection(
            self,
            window=WINDOW,
            connection_window=DEFAULT_WINDOW + 4 * WINDOW,
            max_streams=MAX_STREAMS,
            max_header_list=MAX_HEADER_LIST,
        )
        self.write_pending()

    def peer_name(self) -> str:
        return self._peer

    def write_pending(self, force: bool = False) -> None:
        """
        Send what the connection has queued. With nothing queued on the transport it goes on the
        socket at once (as the REST fast route's answers do), sparing the transport's
        writable-then-not cycle and a pass of the loop per call; what the socket does not
        take goes through ``transport.write``.
        """
        if self._receiving and not force:
            return  # dataReceived sends everything once, at its end
        pieces = self.conn.take_output()
        transport = self.transport
        if not pieces or transport is None:
            return
        sock = idle_socket(transport)
        if sock is not None and len(pieces) > 2 and sum(map(len, pieces)) > _GATHER_AT:
            # big DATA: the socket takes the pieces where they are (no copy into one)
            pieces = _send_gathered(sock, pieces)
            if pieces:
                transport.write(b"".join(pieces))
            return
        data = b"".join(pieces) if len(pieces) > 1 else bytes(pieces[0])
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:  # full, or broken: the transport finds out and says so
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            call.cancel()
        self.calls.clear()
        self.server.connection_lost(self)

    def dataReceived(self, data: bytes) -> None:
        if self.conn is None or self.conn.closed:
            return  # the connection is closing: nothing more is read
        self._receiving = True
        try:
            self.conn.receive(data)
        except HTTP2Error as e:
            log.info("gRPC connection from {peer} closed: {error}", peer=self._peer, error=e)
            self._drop()
        finally:
            self._receiving = False
        self.write_pending()

    def _drop(self) -> None:
        """Read no more; the connection closes once its last bytes (a GOAWAY) are out."""
        self.conn.closed = True
        for call in list(self.calls.values()):
            call.cancel()
        self._hang_up()

    def _hang_up(self) -> None:
        """Close the connection once what is queued has gone out."""
        self.write_pending(force=True)
        self.transport.loseConnection()  # type: ignore[union-attr]

    # -- what the HTTP/2 connection tells (_http2.Connection's handler) ------------------

    def stream_reset(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is not None:
            call.cancel()

    def peer_going_away(self) -> None:
        # the client opens no more streams; its calls in flight still get their answers
        self.closing = True
        if not self.calls:
            self._hang_up()

    def window_opened(self, stream_id: int) -> None:
        if stream_id:
            call = self.calls.get(stream_id)
            if call is not None:
                call.flush()
            return
        for call in list(self.calls.values()):
            if call.pending:
                call.flush()

    # -- calls ---------------------------------------------------------------------------

    def request_received(self, stream_id: int, block: Block) -> None:
        parsed = block.parsed
        if parsed is None:  # the first time this connection sees the block
            parsed = block.parsed = _read_request(block.headers)
        refusal, path, timeout, encoding, metadata = parsed
        if refusal is not None:
            self._http_refusal(stream_id, refusal)
            return
        call = Call(self, stream_id, path, metadata)
        self.calls[stream_id] = call
        if self.closing or self.server.stopping:
            call.finish(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            return
        if block.size > MAX_HEADER_LIST:
            call.finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the request's headers and metadata are {block.size} bytes, "
                f"over the limit of {MAX_HEADER_LIST}",
            )
            return
        if encoding is not None and encoding != b"identity":
            if encoding not in (b"gzip", b"deflate"):
                call.finish(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"Compression algorithm '{encoding.decode('ascii', 'replace')}' is not supported",
                )
                return
            call.encoding = encoding
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is None:
                call.finish(grpc.StatusCode.INVALID_ARGUMENT, "malformed grpc-timeout header")
                return
            call.deadline = time.monotonic() + seconds
            call.timer = self.server.reactor.callLater(
                seconds, call.cancel, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
            )
        handler = self.server.lookup(call.method, call.metadata)
        if handler is None:
            call.finish(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        call.handler = handler
        if handler.request_streaming:
            call.requests = asyncio.Queue()
            self._start(call, self._serve(call))

    def _http_refusal(self, stream_id: int, status: bytes) -> None:
        self.conn.send_headers(stream_id, encode_headers(((b":status", status),)), end_stream=True)

    def data_received(self, stream_id: int, data: memoryview) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.ended or call.trailers is not None:
            self.conn.consumed(stream_id, len(data))
            return
        if call.requests is not None and call.requests.qsize() >= _QUEUED:
            call.unconsumed += len(data)  # given back as the handler takes messages
        else:
            self.conn.consumed(stream_id, len(data))
        limit = self.server.max_receive
        pos, end = 0, len(data)
        while pos < end:
            incoming = call.incoming
            if incoming is None:  # a message starts
                head = call.head
                if head or end - pos < 5:
                    take = min(5 - len(head), end - pos)
                    head += data[pos : pos + take]
                    pos += take
                    if len(head) < 5:
                        return
                    flag, length = _PREFIX.unpack(head)
                    head.clear()
                else:
                    flag, length = _PREFIX.unpack_from(data, pos)
                    pos += 5
                if length > limit:
                    call.cancel(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"Received message larger than max ({length} vs. {limit})",
                    )
                    return
                if end - pos >= length:  # whole in this frame
                    pos += length
                    if not self._message(call, flag, bytes(data[pos - length : pos]), limit):
                        return
                    continue
                call.incoming = incoming = []
                call.expected, call.filled, call.flag = length, 0, flag
                if length >= _BIG:
                    read_more(self.transport, _BIG)
            # the frames' bytes are kept as they came (views of bytes, which do not
            # change) and joined once, when the message is whole
            take = min(call.expected - call.filled, end - pos)
            incoming.append(data[pos : pos + take])
            call.filled += take
            pos += take
            if call.filled == call.expected:
                call.incoming = None
                if not self._message(call, call.flag, b"".join(incoming), limit):
                    return

    def _message(self, call: Call, flag: int, message: bytes, limit: int) -> bool:
        """One request message of ``call``; False if that ended the call."""
        if flag & 1:
            try:
                message = self._inflate(call, message, limit)
            except _StatusError as e:
                call.cancel(e.code, e.details)
                return False
        call.received += 1
        if call.requests is not None:
            call.requests.put_nowait(message)
        elif call.received > 1:
            call.cancel(grpc.StatusCode.UNIMPLEMENTED, "a unary call carries one request message")
            return False
        else:
            call.message = message  # served at the stream's end
        return True

    @staticmethod
    def _inflate(call: Call, message: bytes, limit: int) -> bytes:
        if call.encoding == b"identity":
            raise _StatusError(grpc.StatusCode.INTERNAL, "a compressed message without grpc-encoding")
        wbits = 16 + zlib.MAX_WBITS if call.encoding == b"gzip" else zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(message, limit + 1)
        except zlib.error as e:
            raise _StatusError(
                grpc.StatusCode.INTERNAL, f"cannot decompress the request message: {e}"
            ) from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise _StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max (more than {limit})"
            )
        return data

    def stream_ended(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.half_closed:
            return
        call.half_closed = True
        if call.ended or call.trailers is not None:
            return
        if call.requests is not None:
            call.requests.put_nowait(None)
            return
        if call.head or call.incoming is not None:
            call.finish(grpc.StatusCode.INTERNAL, "the request ends inside a message")
            return
        if call.message is None:
            call.finish(grpc.StatusCode.UNIMPLEMENTED, "a unary call needs one request message")
            return
        self._start(call, self._serve(call))

    def _start(self, call: Call, coro: Any) -> None:
        """Run ``coro`` in place up to its first wait; the rest, if any, as a task."""
        try:
            first = coro.send(None)
        except StopIteration:
            return
        except BaseException:
            log.failure("serving a gRPC call failed")
            call.finish(grpc.StatusCode.INTERNAL, "internal error")
            return
        call.task = asyncio.ensure_future(Resumed(coro, first))

    async def _serve(self, call: Call) -> None:
        handler = call.handler
        context = call.context
        try:
            if handler.request_streaming:
                request: Any = self._request_iterator(call, handler.request_deserializer)
            else:
                data, call.message = call.message, None
                deserialize = handler.request_deserializer
                request = deserialize(data) if deserialize is not None else data
            serialize = handler.response_serializer or (lambda m: m)
            if handler.response_streaming:
                behaviour = handler.stream_stream if handler.request_streaming else handler.unary_stream
                call.serialize = serialize
                responses = behaviour(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        call.send_message(serialize(response))
                        await call.wait_drained()
                else:  # a coroutine that writes with context.write, or only aborts
                    await responses
            else:
                behaviour = handler.stream_unary if handler.request_streaming else handler.unary_unary
                response = await behaviour(request, context)
                if response is not None and not call.cancelled:
                    call.send_message(serialize(response))
            code = context._code or grpc.StatusCode.OK
            call.finish(code, context._details, context._trailing)
        except grpc.aio.AbortError:
            call.finish(context._code or grpc.StatusCode.UNKNOWN, context._details, context._trailing)
        except _StatusError as e:
            call.finish(e.code, e.details)
        except (asyncio.CancelledError, _Aborted):
            call.abandon()
        except Exception as e:
            log.failure("unexpected error serving {method}", method=call.method)
            call.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(e)}: {e}")
        finally:
            self.write_pending()

    async def _request_iterator(self, call: Call, deserialize: Any) -> Any:
        queue = call.requests
        assert queue is not None
        while True:
            item = await queue.get()
            if call.unconsumed and queue.qsize() < _QUEUED:  # the handler caught up
                self.conn.consumed(call.stream_id, call.unconsumed)
                call.unconsumed = 0
                self.write_pending()
            if item is None:
                return
            if isinstance(item, _Aborted):
                raise asyncio.CancelledError()
            yield deserialize(item) if deserialize is not None else item

    def call_ended(self, call: Call) -> None:
        if self.calls.get(call.stream_id) is call:
            del self.calls[call.stream_id]
        call.stop_timer()
        if self.closing and not self.calls:
            self._hang_up()  # the last call's answer goes out before the connection closes

    # -- shutdown ------------------------------------------------------------------------

    def go_away(self) -> None:
        """Tell the client to open no more streams here (GOAWAY); close once idle."""
        if self.closing:
            return
        self.closing = True
        # calls in flight still answer; streams the client opens anyway are refused
        # (UNAVAILABLE) by request_received
        self.conn.go_away()
        if self.calls:
            self.write_pending(force=True)
        else:
            self._hang_up()

    def cancel_all(self, details: str) -> None:
        for call in list(self.calls.values()):
            call.cancel(grpc.StatusCode.UNAVAILABLE, details)
        self.write_pending()
        self.transport.loseConnection()  # type: ignore[union-attr]
        # a client that reads nothing would hold the connection open: cut it soon after
        self.server.reactor.callLater(ABORT_AFTER, self._abort)

    def _abort(self) -> None:
        if self in self.server.connections:
            self.transport.abortConnection()  # type: ignore[union-attr]


#: Request messages a streaming call's handler may leave waiting before its client is
#: slowed down (the stream's window is then given back only as the handler takes them).
_QUEUED = 4
#: A request message this big has its connection read this much at a time from then on.
_BIG = 1024 * 1024
#: Answers at least this big go to the socket as the pieces they are (``sendmsg``).
_GATHER_AT = 64 * 1024
#: Pieces per ``sendmsg`` (Linux's IOV_MAX is 1,024).
_IOV_MAX = 1024


def _send_gathered(sock: socket.socket, pieces: List[Any]) -> List[Any]:
    """Send ``pieces`` with ``sendmsg`` while the socket takes them; what it did not take."""
    while pieces:
        batch = pieces[:_IOV_MAX]
        try:
            sent = sock.sendmsg(batch)
        except OSError:  # full, or broken: the transport finds out and says so
            return pieces
        taken = 0
        for piece in batch:
            size = len(piece)
            if sent < size:
                break
            sent -= size
            taken += 1
        if taken < len(batch):
            rest = pieces[taken:]
            if sent:
                rest[0] = memoryview(rest[0])[sent:]
            return rest
        pieces = pieces[taken:]
    return pieces


def _read_request(headers: Sequence[Tuple[bytes, bytes]]) -> Tuple[Any, str, Any, Any, Any]:
    """
    What a call needs of its request headers: an HTTP status refusing it (or None), the
    method's path, ``grpc-timeout``, ``grpc-encoding`` and the metadata.
    """
    method = path = content_type = b""
    timeout = encoding = None
    for name, value in headers:
        if name == b":path":
            path = value
        elif name == b":method":
            method = value
        elif name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            timeout = value
        elif name == b"grpc-encoding":
            encoding = value
    refusal = None
    if method != b"POST":
        refusal = b"405"
    elif not content_type.startswith(b"application/grpc"):
        refusal = b"415"
    return refusal, path.decode("ascii", "replace"), timeout, encoding, _decode_metadata(headers)


def _chain(interceptor: Any, continuation: Any) -> Any:
    async def intercepted(details: Any) -> Any:
        return await interceptor.intercept_service(continuation, details)

    return intercepted


def _now(coro: Any) -> Any:
    """The result of a coroutine that must not wait (v2d's own interceptors)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a gRPC interceptor of the h2 engine waited; they must answer at once")


@implementer(IProtocolFactory)
class H2Server(Factory):
    """
    A gRPC server on Twisted endpoints. Handlers are added as on grpc.aio's server
    (``add_generic_rpc_handlers``, ``add_registered_method_handlers``); ``stop(grace)``
    refuses new calls (GOAWAY), lets calls in progress end for up to ``grace`` seconds,
    then cancels the rest.
    """

    def __init__(
        self,
        reactor: Any,
        max_receive: int = 4 * 1024 * 1024,
        max_send: int = 4 * 1024 * 1024,
        interceptors: Sequence[Any] = (),
    ) -> None:
        self.reactor = reactor
        self.max_receive = max_receive
        self.max_send = max_send
        self.interceptors = list(interceptors)
        #: The interceptors chained once, ending in ``find`` (None without interceptors).
        self._intercepted: Optional[Callable[[Any], Any]] = None
        for interceptor in reversed(self.interceptors):
            self._intercepted = _chain(interceptor, self._intercepted or self._found)
        self.generic: List[Any] = []
        self.methods: Dict[str, Any] = {}
        self.connections: set = set()
        self.ports: List[Any] = []
        self.stopping = False
        self._idle: List[defer.Deferred] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        for handler in handlers:
            table = getattr(handler, "_method_handlers", None)
            if isinstance(table, dict):
                self.methods.update({k: v for k, v in table.items() if k not in self.methods})
            else:
                self.generic.append(handler)

    def add_registered_method_handlers(self, service: str, handlers: Dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self.methods[f"/{service}/{name}"] = handler

    def find(self, method: str) -> Any:
        handler = self.methods.get(method)
        if handler is not None:
            return handler
        for generic in self.generic:
            handler = generic.service(_Details(method, ()))
            if handler is not None:
                return handler
        return None

    def lookup(self, method: str, metadata: Any) -> Any:
        """The handler of ``method`` after the interceptors (None: no such method)."""
        if self._intercepted is None:
            return self.find(method)
        return _now(self._intercepted(_Details(method, metadata)))

    async def _found(self, details: Any) -> Any:
        return self.find(details.method)

    def buildProtocol(self, addr: Any) -> GRPCProtocol:
        return GRPCProtocol(self)

    def connection_lost(self, protocol: GRPCProtocol) -> None:
        # stopping, a connection closes when its last call has ended and its bytes are
        # out; the stop is over when none is left (before that, answers could be lost)
        if self._idle and not self.connections:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def stop(self, grace: Optional[float]) -> defer.Deferred:
        """Refuse new calls; fire when every call has ended (cancelled after ``grace``)."""
        self.stopping = True
        for port in self.ports:
            port.stopListening()
        self.ports = []
        for protocol in list(self.connections):
            protocol.go_away()
        if not self.connections:
            return defer.succeed(None)
        idle: defer.Deferred = defer.Deferred()
        self._idle.append(idle)

        def cancel_rest() -> None:
            for protocol in list(self.connections):
                protocol.cancel_all("the server is shutting down")

        if grace is not None:
            timer = self.reactor.callLater(grace, cancel_rest)
            idle.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        else:
            cancel_rest()
        return idle


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _certificates(pem: bytes, what: str) -> List[ssl.Certificate]:
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise ValueError(f"{what} holds no PEM certificate")
    return [ssl.Certificate.loadPEM(block) for block in blocks]


def tls_options(cert: bytes, key: bytes, client_ca: Optional[bytes]) -> ssl.CertificateOptions:
    """TLS for gRPC: the chain and key, ALPN ``h2``, client certificates when a CA is given."""
    chain = _certificates(cert, "the gRPC TLS certificate")
    private = ssl.KeyPair.load(key, FILETYPE_PEM)
    extra: Dict[str, Any] = {}
    if client_ca is not None:
        # a trust root makes Twisted ask for, and require, a client certificate signed by it
        extra["trustRoot"] = ssl.trustRootFromCertificates(_certificates(client_ca, "the gRPC client CA"))
    return ssl.CertificateOptions(
        privateKey=private.original,
        certificate=chain[0].original,
        extraCertChain=[c.original for c in chain[1:]],
        acceptableProtocols=[b"h2"],
        **extra,
    )


def _endpoint(reactor: Any, address: str) -> Any:
    """A TCP endpoint for a gRPC ``host:port`` (``[::]:port`` for IPv6)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"gRPC address {address!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    port = int(port_text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
    if ip.version == 6:
        return TCP6ServerEndpoint(reactor, port, interface=str(ip))
    return TCP4ServerEndpoint(reactor, port, interface=str(ip))


async def listen(server: H2Server, reactor: Any, address: str, tls: Optional[tuple] = None) -> int:
    """Listen on ``address`` (TLS: (chain, key, client CA or None) as PEM bytes); the port."""
    factory: Any = server
    if tls is not None:
        factory = TLSMemoryBIOFactory(tls_options(*tls), False, server)
    try:
        port = await _endpoint(reactor, address).listen(factory)
    except CannotListenError as e:
        why = getattr(e.socketError, "strerror", None) or str(e.socketError)
        # in grpc.aio's words, so that both engines fail to start with the same line
        raise RuntimeError(f"Failed to bind to address {address}; {why}") from None
    server.ports.append(port)
    return int(port.getHost().port)
