"""
The server side of HTTP/2 (RFC 9113) as gRPC uses it, for the h2 engine (``_h2.py``).

It keeps a connection's frames, streams, settings, pings and flow control; HPACK
decoding is the ``hpack`` library's. Why not the ``h2`` library, which the engine used
first: for a small call, h2's general state machines and frame objects cost about half
of the engine's CPU (docs/benchmarks.md, "The gRPC floor"), and gRPC needs a small part
of HTTP/2: no push, no priorities, POST streams of DATA ending in trailers.

What it does not do, on purpose:

- It never indexes what it sends (every header is a static-table reference or a literal
  "without indexing"), so answers are precomputed bytes and the peer's table size does not
  matter.
- A request header block that changes no HPACK state (only indexed fields and literals
  without indexing, which is what clients send once their table holds the headers) is
  decoded once per connection and remembered by its bytes; any block that changes the
  table forgets what was remembered, since indexes then mean other things.
- Priorities are read past and ignored (RFC 9113 deprecates them).

The handler given to :class:`Connection` is told of events by method calls:
``request_received(stream_id, block)``, ``data_received(stream_id, data)``,
``stream_ended(stream_id)``, ``stream_reset(stream_id)``, ``window_opened(stream_id)``
(0: the connection's window) and ``peer_going_away()``.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hpack.table import HeaderTable

__all__ = ["Connection", "HTTP2Error", "StreamGone", "Block", "encode_headers", "PREFACE"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = range(6)
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(6, 10)
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB
# settings
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
MAX_WINDOW = 2**31 - 1

#: A frame's head: length << 8 | type, flags, stream id.
_HEAD = struct.Struct(">IBI")
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")


class HTTP2Error(Exception):
    """The peer broke HTTP/2; the connection ends with a GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamGone(Exception):
    """Data sent on a stream that has ended or was reset."""


# -- HPACK output: never indexed, so stateless ---------------------------------------------


def _integer(value: int, bits: int, first: int) -> bytes:
    """HPACK's prefixed integer (RFC 7541 5.1)."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_STATIC_PAIRS: Dict[Tuple[bytes, bytes], int] = {}
_STATIC_NAMES: Dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_PAIRS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)


def encode_headers(headers: Iterable[Tuple[bytes, bytes]]) -> bytes:
    """
    A header block for ``headers`` (names lower case): static-table entries by index,
    everything else as literals without indexing (RFC 7541 6.1, 6.2.2).
    """
    out = bytearray()
    for name, value in headers:
        index = _STATIC_PAIRS.get((name, value))
        if index is not None:
            out += _integer(index, 7, 0x80)
            continue
        index = _STATIC_NAMES.get(name, 0)
        out += _integer(index, 4, 0x00)
        if not index:
            out += _integer(len(name), 7, 0x00)
            out += name
        out += _integer(len(value), 7, 0x00)
        out += value
    return bytes(out)


# -- HPACK input ---------------------------------------------------------------------------


def _read_integer(block: bytes, i: int, bits: int) -> Tuple[int, int]:
    limit = (1 << bits) - 1
    value = block[i] & limit
    i += 1
    if value < limit:
        return value, i
    shift = 0
    while True:
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def changes_table(block: bytes) -> bool:
    """
    Whether decoding ``block`` (well formed) changes the decoder's dynamic table: it holds
    a literal with incremental indexing or a table size update (RFC 7541 6).
    """
    i, end = 0, len(block)
    while i < end:
        byte = block[i]
        if byte & 0x80:  # indexed field
            _, i = _read_integer(block, i, 7)
            continue
        if byte & 0x60:  # 01: incremental indexing; 001: size update
            return True
        name, i = _read_integer(block, i, 4)  # 0000 / 0001: without indexing, never indexed
        if not name:
            length, i = _read_integer(block, i, 7)
            i += length
        length, i = _read_integer(block, i, 7)
        i += length
    return False


class Block:
    """
    A decoded request header block: its headers, their size as HTTP/2 counts it (RFC
    9113 6.5.2: names, values and 32 per field) and ``parsed``, the engine's own reading.
    """

    __slots__ = ("headers", "size", "parsed")

    def __init__(self, headers: List[Tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.size = sum(len(name) + len(value) + 32 for name, value in headers)
        self.parsed: Any = None


#: Header blocks a connection remembers at most (more are decoded each time).
_REMEMBERED = 32
#: A header list this many times the announced limit ends the connection; one over the
#: limit but under this is the handler's to refuse (``Block.size``), the connection going on.
HARD_LIMIT = 8


# -- streams -------------------------------------------------------------------------------


class _Stream:
    __slots__ = ("send_window", "receive_window", "unacknowledged", "remote_closed", "local_closed")

    def __init__(self, send_window: int, receive_window: int) -> None:
        self.send_window = send_window
        self.receive_window = receive_window
        self.unacknowledged = 0
        self.remote_closed = False
        self.local_closed = False


class Connection:
    """
    One server connection's HTTP/2 state: bytes in by :meth:`receive`, out by
    :meth:`take_output` (the buffers to send, in order: DATA payloads are views of what
    was given to :meth:`send_data`, not copies) or :meth:`data_to_send` (joined).
    """

    def __init__(
        self,
        handler: Any,
        window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_WINDOW,
        max_streams: int = 100,
        max_header_list: int = 16 * 1024,
    ) -> None:
        self.handler = handler
        #: Set to read nothing more (the connection is closing).
        self.closed = False
        self.streams: Dict[int, _Stream] = {}
        #: The highest stream id the peer has opened (a GOAWAY's last stream).
        self.highest = 0
        self._out: List[Any] = []
        self._in = bytearray()  # the start of a frame not whole yet
        self._need = 0  # the bytes it takes to be whole
        self._preface = True
        self._settled = False  # the peer's first SETTINGS has come
        self._continued: Optional[Tuple[int, int, bytearray]] = None  # a header block in pieces
        self._decoder = Decoder(max_header_list_size=HARD_LIMIT * max_header_list)
        self._blocks: Dict[bytes, Block] = {}
        # what we announce
        self.window = window
        self.max_streams = max_streams
        self.max_header_list = max_header_list
        self._receive_window = connection_window
        self._connection_window = connection_window
        self._unacknowledged = 0
        # what the peer announces
        self.send_window = DEFAULT_WINDOW
        self.peer_window = DEFAULT_WINDOW
        self.peer_frame = DEFAULT_FRAME
        settings = [
            (MAX_CONCURRENT_STREAMS, max_streams),
            (INITIAL_WINDOW_SIZE, window),
            (MAX_HEADER_LIST_SIZE, max_header_list),
            (ENABLE_PUSH, 0),
        ]
        self._frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings))
        if connection_window > DEFAULT_WINDOW:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(connection_window - DEFAULT_WINDOW))

    # -- output ----------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self._out.append(_HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload)

    def take_output(self) -> List[Any]:
        """The bytes-like buffers queued to send, in order (the queue is then empty)."""
        out = self._out
        self._out = []
        return out

    def data_to_send(self) -> bytes:
        """What is queued to send, joined."""
        return b"".join(self.take_output())

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool = False) -> None:
        """Send a header block (from :func:`encode_headers`); ``end_stream``: trailers."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamGone(stream_id)
        flags = END_STREAM if end_stream else 0
        limit = self.peer_frame
        if len(block) <= limit:
            self._frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            self._frame(HEADERS, flags, stream_id, block[:limit])
            for start in range(limit, len(block), limit):
                last = END_HEADERS if start + limit >= len(block) else 0
                self._frame(CONTINUATION, last, stream_id, block[start : start + limit])
        if end_stream:
            self._local_close(stream_id, stream)

    def send_data(self, stream_id: int, data: Union[bytes, memoryview], prefix: bytes = b"") -> int:
        """
        Send as much of ``prefix`` then ``data`` as the windows allow; how many bytes that
        was. ``data`` must not change until it is sent (it is queued as views, not copied).
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamGone(stream_id)
        head = len(prefix)
        total = head + len(data)
        size = min(total, self.send_window, stream.send_window)
        if size <= 0:
            return 0
        self.send_window -= size
        stream.send_window -= size
        limit = self.peer_frame
        out = self._out
        if size == total and size <= limit:
            out.append(_HEAD.pack(size << 8 | DATA, 0, stream_id) + prefix)
            out.append(data)
            return size
        view = memoryview(data)
        for start in range(0, size, limit):
            end = min(start + limit, size)
            out.append(_HEAD.pack((end - start) << 8 | DATA, 0, stream_id))
            if start < head:  # the prefix opens the first frame
                out.append(prefix[start : min(head, end)])
                if end > head:
                    out.append(view[: end - head])
            else:
                out.append(view[start - head : end - head])
        return size

    def can_send(self, stream_id: int) -> int:
        """Bytes of data the windows allow on ``stream_id`` now."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return min(self.send_window, stream.send_window)

    def reset(self, stream_id: int, code: int) -> None:
        """End a stream with RST_STREAM."""
        if self.streams.pop(stream_id, None) is not None:
            self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def go_away(self, code: int = NO_ERROR) -> None:
        """Tell the peer the last stream this side takes (the highest it opened)."""
        self._frame(GOAWAY, 0, 0, _GOAWAY.pack(self.highest, code))

    def _local_close(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    # -- input -----------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """
        Take bytes from the peer, telling the handler what they mean. A connection error
        raises :class:`HTTP2Error` once its GOAWAY is queued; nothing more should be read.
        """
        try:
            self._receive(data)
        except HTTP2Error as e:
            self.go_away(e.code)
            raise
        except HPACKError as e:
            code = ENHANCE_YOUR_CALM if isinstance(e, OversizedHeaderListError) else COMPRESSION_ERROR
            self.go_away(code)
            raise HTTP2Error(code, f"header block: {e}") from None

    def _receive(self, data: bytes) -> None:
        if self._in:
            self._in += data
            if len(self._in) < self._need:
                return  # a frame still coming in: not read again until it is whole
            data = bytes(self._in)
            self._in = bytearray()
        pos = 0
        if self._preface:
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    raise HTTP2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self._in = bytearray(data)
                self._need = len(PREFACE)
                return
            if not data.startswith(PREFACE):
                raise HTTP2Error(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            self._preface = False
            pos = len(PREFACE)
        end = len(data)
        limit = DEFAULT_FRAME  # ours: not announced, so the default
        need = 9
        while end - pos >= 9 and not self.closed:
            head, flags, stream_id = _HEAD.unpack_from(data, pos)
            length = head >> 8
            if length > limit:
                raise HTTP2Error(FRAME_SIZE_ERROR, f"a frame of {length} bytes (at most {limit})")
            if end - pos - 9 < length:
                need = 9 + length
                break
            start = pos + 9
            pos = start + length
            kind = head & 0xFF
            stream_id &= 0x7FFFFFFF
            if self._continued is not None and kind != CONTINUATION:
                raise HTTP2Error(PROTOCOL_ERROR, "a header block was left unfinished")
            if not self._settled and kind != SETTINGS:
                raise HTTP2Error(PROTOCOL_ERROR, "the first frame must be SETTINGS")
            if kind == DATA:
                self._data(flags, stream_id, data, start, pos)
            elif kind == HEADERS:
                self._headers(flags, stream_id, data[start:pos])
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id, data[start:pos])
            elif kind == SETTINGS:
                self._settings(flags, stream_id, data[start:pos])
            elif kind == PING:
                if stream_id:
                    raise HTTP2Error(PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    raise HTTP2Error(FRAME_SIZE_ERROR, "PING of other than 8 bytes")
                if not flags & ACK:
                    self._frame(PING, ACK, 0, data[start:pos])
            elif kind == RST_STREAM:
                self._rst_stream(stream_id, length, data[start:pos])
            elif kind == CONTINUATION:
                self._continuation(flags, stream_id, data[start:pos])
            elif kind == GOAWAY:
                if stream_id:
                    raise HTTP2Error(PROTOCOL_ERROR, "GOAWAY on a stream")
                self.handler.peer_going_away()
            elif kind == PRIORITY:
                if not stream_id:
                    raise HTTP2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
                if length != 5:
                    raise HTTP2Error(FRAME_SIZE_ERROR, "PRIORITY of other than 5 bytes")
            elif kind == PUSH_PROMISE:
                raise HTTP2Error(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
            # unknown frame types are ignored (RFC 9113 4.1)
        if pos < end and not self.closed:
            self._in = bytearray(memoryview(data)[pos:])
            self._need = need

    def _data(self, flags: int, stream_id: int, data: bytes, start: int, end: int) -> None:
        if not stream_id:
            raise HTTP2Error(PROTOCOL_ERROR, "DATA on stream 0")
        length = end - start
        self._receive_window -= length
        if self._receive_window < 0:
            raise HTTP2Error(FLOW_CONTROL_ERROR, "DATA past the connection's window")
        if flags & PADDED:
            if not length or data[start] >= length:
                raise HTTP2Error(PROTOCOL_ERROR, "padding as long as the frame")
            end -= data[start]
            start += 1
        self._acknowledge(length)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self.highest:
                raise HTTP2Error(PROTOCOL_ERROR, "DATA on a stream never opened")
            return  # a stream ended or reset here: its data is dropped (and acknowledged)
        stream.receive_window -= length
        if stream.receive_window < 0:
            raise HTTP2Error(FLOW_CONTROL_ERROR, "DATA past a stream's window")
        ended = flags & END_STREAM
        if ended:
            stream.remote_closed = True
        elif end - start < length:  # padding, which no handler consumes
            self.consumed(stream_id, length - (end - start))
        if end > start:
            self.handler.data_received(stream_id, memoryview(data)[start:end])
        if ended:
            if stream.local_closed:
                self.streams.pop(stream_id, None)
            self.handler.stream_ended(stream_id)

    def consumed(self, stream_id: int, length: int) -> None:
        """
        The handler is done with ``length`` bytes of the stream's data: the peer may send
        as much again (WINDOW_UPDATEs of at least half the window). The connection's own
        window is given back as data arrives; a stream's only when its handler says so,
        which is how a handler that falls behind slows its client down.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed or length <= 0:
            return
        stream.unacknowledged += length
        if stream.unacknowledged >= self.window >> 1:
            self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacknowledged))
            stream.receive_window += stream.unacknowledged
            stream.unacknowledged = 0

    def _acknowledge(self, length: int) -> None:
        """The connection's window back, in WINDOW_UPDATEs of at least half of it."""
        self._unacknowledged += length
        if self._unacknowledged >= self._connection_window >> 1:
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._unacknowledged))
            self._receive_window += self._unacknowledged
            self._unacknowledged = 0

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise HTTP2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not end or payload[0] >= end:
                raise HTTP2Error(PROTOCOL_ERROR, "padding as long as the frame")
            end -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            start += 5
            if start > end:
                raise HTTP2Error(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        block = payload[start:end] if start or end != len(payload) else payload
        if flags & END_HEADERS:
            self._header_block(flags, stream_id, block)
        else:
            self._continued = (stream_id, flags, bytearray(block))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        continued = self._continued
        if continued is None or continued[0] != stream_id:
            raise HTTP2Error(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = continued[2]
        block += payload
        if len(block) > HARD_LIMIT * self.max_header_list:
            raise HTTP2Error(ENHANCE_YOUR_CALM, "a header block larger than the header list limit")
        if flags & END_HEADERS:
            self._continued = None
            self._header_block(continued[1], stream_id, bytes(block))

    def _decode(self, block: bytes) -> Block:
        known = self._blocks.get(block)
        if known is not None:
            return known
        decoded = Block(self._decoder.decode(block, raw=True))  # type: ignore[arg-type]
        if changes_table(block):
            self._blocks.clear()  # indexes now mean other headers
        else:
            if len(self._blocks) >= _REMEMBERED:
                self._blocks.clear()
            self._blocks[block] = decoded
        return decoded

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        decoded = self._decode(block)  # always: the decoder's table must follow the peer's
        ended = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers
            if stream.remote_closed:
                self.reset(stream_id, STREAM_CLOSED)
                return
            if not ended:
                raise HTTP2Error(PROTOCOL_ERROR, "a second header block that does not end the stream")
            stream.remote_closed = True
            if stream.local_closed:
                del self.streams[stream_id]
            self.handler.stream_ended(stream_id)
            return
        if not stream_id & 1:
            raise HTTP2Error(PROTOCOL_ERROR, "a client stream with an even id")
        if stream_id <= self.highest:
            return  # a stream already ended or reset here
        self.highest = stream_id
        if len(self.streams) >= self.max_streams:
            self._frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM))
            return
        stream = _Stream(self.peer_window, self.window)
        stream.remote_closed = ended
        self.streams[stream_id] = stream
        self.handler.request_received(stream_id, decoded)
        if ended:
            self.handler.stream_ended(stream_id)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise HTTP2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise HTTP2Error(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise HTTP2Error(FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
            self.handler.window_opened(0)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.highest:
                raise HTTP2Error(PROTOCOL_ERROR, "WINDOW_UPDATE on a stream never opened")
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        self.handler.window_opened(stream_id)

    def _stream_error(self, stream_id: int, code: int) -> None:
        self.reset(stream_id, code)
        self.handler.stream_reset(stream_id)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise HTTP2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise HTTP2Error(FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise HTTP2Error(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        self._settled = True
        opened = False
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise HTTP2Error(FLOW_CONTROL_ERROR, "an initial window past 2^31-1")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                opened = opened or delta > 0
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise HTTP2Error(PROTOCOL_ERROR, f"a maximum frame size of {value}")
                self.peer_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise HTTP2Error(PROTOCOL_ERROR, f"ENABLE_PUSH of {value}")
            # the header table size binds an encoder that indexes; ours does not
        self._frame(SETTINGS, ACK, 0)
        if opened:
            self.handler.window_opened(0)

    def _rst_stream(self, stream_id: int, length: int, payload: bytes) -> None:
        if not stream_id:
            raise HTTP2Error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if length != 4:
            raise HTTP2Error(FRAME_SIZE_ERROR, "RST_STREAM of other than 4 bytes")
        if stream_id > self.highest:
            raise HTTP2Error(PROTOCOL_ERROR, "RST_STREAM on a stream never opened")
        if self.streams.pop(stream_id, None) is not None:
            self.handler.stream_reset(stream_id)
