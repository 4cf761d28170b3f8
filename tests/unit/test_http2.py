"""
The h2 engine's HTTP/2 connection (``v2d/grpc/_http2.py``), bytes in and bytes out with
no socket and no reactor. Client header blocks are made by the hpack library's encoder
and answers read back with its decoder, so both sides of HPACK are the library's.
"""

from __future__ import annotations

import struct

import hpack
import pytest

from v2d.grpc import _http2
from v2d.grpc._http2 import Connection, HTTP2Error, StreamGone, changes_table, encode_headers

HEAD = struct.Struct(">IBI")
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"127.0.0.1"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(len(payload) << 8 | kind, flags, stream_id) + payload


def frames(data: bytes) -> list:
    out, pos = [], 0
    while pos < len(data):
        head, flags, stream_id = HEAD.unpack_from(data, pos)
        length = head >> 8
        out.append((head & 0xFF, flags, stream_id, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def settings(**values: int) -> bytes:
    ids = {"window": _http2.INITIAL_WINDOW_SIZE, "frame": _http2.MAX_FRAME_SIZE, "push": _http2.ENABLE_PUSH}
    return b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items())


class Recorder:
    """The handler: what the connection told, in order."""

    def __init__(self) -> None:
        self.events: list = []
        self.blocks: list = []

    def request_received(self, stream_id, block):
        self.blocks.append(block)
        self.events.append(("request", stream_id, list(block.headers)))

    def data_received(self, stream_id, data):
        self.events.append(("data", stream_id, bytes(data)))

    def stream_ended(self, stream_id):
        self.events.append(("ended", stream_id))

    def stream_reset(self, stream_id):
        self.events.append(("reset", stream_id))

    def window_opened(self, stream_id):
        self.events.append(("window", stream_id))

    def peer_going_away(self):
        self.events.append(("goaway",))


def opened(client_settings: bytes = b"", **options):
    """A connection past the preface and both SETTINGS; its handler; the client encoder."""
    handler = Recorder()
    conn = Connection(handler, **options)
    conn.receive(_http2.PREFACE + frame(_http2.SETTINGS, 0, 0, client_settings))
    conn.data_to_send()
    return conn, handler, hpack.Encoder()


def request(encoder, stream_id: int, body: bytes = b"", headers=REQUEST) -> bytes:
    block = encoder.encode(headers)
    out = frame(_http2.HEADERS, _http2.END_HEADERS, stream_id, block)
    return out + frame(_http2.DATA, _http2.END_STREAM, stream_id, body)


def test_announces_its_settings_and_acknowledges_the_peers():
    conn = Connection(Recorder(), window=1 << 20, connection_window=1 << 22, max_streams=7)
    first = frames(conn.data_to_send())
    assert first[0][0] == _http2.SETTINGS and first[0][1] == 0
    announced = dict(struct.unpack(">HI", first[0][3][i : i + 6]) for i in range(0, len(first[0][3]), 6))
    assert announced[_http2.MAX_CONCURRENT_STREAMS] == 7
    assert announced[_http2.INITIAL_WINDOW_SIZE] == 1 << 20
    assert first[1][:3] == (_http2.WINDOW_UPDATE, 0, 0)
    assert struct.unpack(">I", first[1][3])[0] == (1 << 22) - 65535
    conn.receive(_http2.PREFACE + frame(_http2.SETTINGS, 0, 0))
    assert frames(conn.data_to_send()) == [(_http2.SETTINGS, _http2.ACK, 0, b"")]


def test_a_unary_call_in_and_its_answer_out():
    conn, handler, encoder = opened()
    conn.receive(request(encoder, 1, b"\x00\x00\x00\x00\x02hi"))
    assert handler.events == [
        ("request", 1, REQUEST),
        ("data", 1, b"\x00\x00\x00\x00\x02hi"),
        ("ended", 1),
    ]
    conn.send_headers(1, encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc")]))
    assert conn.send_data(1, b"\x00\x00\x00\x00\x02ok") == 7
    conn.send_headers(1, encode_headers([(b"grpc-status", b"0")]), end_stream=True)
    out = frames(conn.data_to_send())
    assert [(k, f, s) for k, f, s, _ in out] == [
        (_http2.HEADERS, _http2.END_HEADERS, 1),
        (_http2.DATA, 0, 1),
        (_http2.HEADERS, _http2.END_HEADERS | _http2.END_STREAM, 1),
    ]
    decoder = hpack.Decoder()
    assert decoder.decode(out[0][3], raw=True) == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
    ]
    assert decoder.decode(out[2][3], raw=True) == [(b"grpc-status", b"0")]
    assert not conn.streams  # both sides ended: forgotten


def test_bytes_a_few_at_a_time_mean_the_same():
    conn = Connection(Recorder())
    encoder = hpack.Encoder()
    data = _http2.PREFACE + frame(_http2.SETTINGS, 0, 0) + request(encoder, 1, b"x" * 40)
    for i in range(len(data)):
        conn.receive(data[i : i + 1])
    assert conn.handler.events == [("request", 1, REQUEST), ("data", 1, b"x" * 40), ("ended", 1)]


def test_not_http2_is_a_connection_error_with_goaway():
    conn = Connection(Recorder())
    conn.data_to_send()
    with pytest.raises(HTTP2Error, match="preface") as e:
        conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert e.value.code == _http2.PROTOCOL_ERROR
    assert frames(conn.data_to_send())[0][0] == _http2.GOAWAY


def test_the_first_frame_must_be_settings():
    conn = Connection(Recorder())
    with pytest.raises(HTTP2Error, match="first frame"):
        conn.receive(_http2.PREFACE + frame(_http2.PING, 0, 0, b"12345678"))


def test_header_block_in_continuations_padding_and_priority():
    conn, handler, encoder = opened()
    block = encoder.encode(REQUEST)
    padded = bytes([3]) + b"\x00\x00\x00\x01\x10" + block[:10] + b"pad"
    conn.receive(
        frame(_http2.HEADERS, _http2.PADDED | _http2.PRIORITY_FLAG, 1, padded)
        + frame(_http2.CONTINUATION, 0, 1, block[10:20])
        + frame(_http2.CONTINUATION, _http2.END_HEADERS, 1, block[20:])
        + frame(_http2.DATA, _http2.PADDED | _http2.END_STREAM, 1, bytes([2]) + b"body" + b"\x00\x00")
    )
    assert handler.events == [("request", 1, REQUEST), ("data", 1, b"body"), ("ended", 1)]


def test_an_unfinished_header_block_cannot_be_interrupted():
    conn, _, encoder = opened()
    block = encoder.encode(REQUEST)
    with pytest.raises(HTTP2Error, match="unfinished"):
        conn.receive(frame(_http2.HEADERS, 0, 1, block[:5]) + frame(_http2.PING, 0, 0, b"12345678"))


def test_pings_are_answered_and_acks_are_not():
    conn, _, _ = opened()
    conn.receive(frame(_http2.PING, 0, 0, b"abcdefgh") + frame(_http2.PING, _http2.ACK, 0, b"zzzzzzzz"))
    assert frames(conn.data_to_send()) == [(_http2.PING, _http2.ACK, 0, b"abcdefgh")]
    with pytest.raises(HTTP2Error) as e:
        conn.receive(frame(_http2.PING, 0, 0, b"short"))
    assert e.value.code == _http2.FRAME_SIZE_ERROR


def test_sending_waits_for_the_peers_windows():
    conn, handler, encoder = opened(settings(window=10))
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    assert conn.send_data(1, b"0123456789abcdef") == 10
    assert conn.send_data(1, b"abcdef") == 0
    conn.receive(frame(_http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 4)))
    assert handler.events[-1] == ("window", 1)
    assert conn.can_send(1) == 4
    # a new initial window moves every open stream's window by the difference
    conn.receive(frame(_http2.SETTINGS, 0, 0, settings(window=20)))
    assert conn.can_send(1) == 14
    assert handler.events[-1] == ("window", 0)
    sent = [f for f in frames(conn.data_to_send()) if f[0] == _http2.DATA]
    assert [p for _, _, _, p in sent] == [b"0123456789"]


def test_the_connection_window_binds_every_stream():
    conn, _, encoder = opened(settings(window=1 << 20))
    for stream_id in (1, 3):
        conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, stream_id, encoder.encode(REQUEST)))
    assert conn.send_data(1, b"x" * 60000) == 60000
    assert conn.send_data(3, b"y" * 60000) == 5535  # 65,535 for the connection, not per stream
    conn.receive(frame(_http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 100)))
    assert conn.can_send(3) == 100


def test_large_data_goes_in_frames_of_the_peers_size():
    conn, _, encoder = opened(settings(window=1 << 20))
    conn.receive(frame(_http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20)))
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.data_to_send()
    data = bytes(range(256)) * 200  # 51,200 bytes
    assert conn.send_data(1, data) == len(data)
    out = frames(conn.data_to_send())
    assert [len(p) for *_, p in out] == [16384, 16384, 16384, 2048]
    assert b"".join(p for *_, p in out) == data


def test_a_long_header_block_goes_in_continuations():
    conn, _, encoder = opened()
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.data_to_send()
    headers = [(b"grpc-status", b"13"), (b"grpc-message", b"m" * 40000)]
    conn.send_headers(1, encode_headers(headers), end_stream=True)
    out = frames(conn.data_to_send())
    assert [(k, f) for k, f, _, _ in out] == [
        (_http2.HEADERS, _http2.END_STREAM),
        (_http2.CONTINUATION, 0),
        (_http2.CONTINUATION, _http2.END_HEADERS),
    ]
    assert (
        hpack.Decoder(max_header_list_size=1 << 20).decode(b"".join(p for *_, p in out), raw=True) == headers
    )


def test_received_data_is_given_back_once_consumed():
    conn, handler, encoder = opened(window=1000, connection_window=100000)
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.receive(frame(_http2.DATA, 0, 1, b"a" * 600))
    assert conn.data_to_send() == b"", "not consumed yet: the client's window stays spent"
    conn.consumed(1, 499)
    assert conn.data_to_send() == b""
    conn.consumed(1, 1)  # half the stream's window: given back
    assert frames(conn.data_to_send()) == [(_http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 500))]
    conn.receive(frame(_http2.DATA, 0, 1, b"a" * 900))  # 400 left and 500 given back: all of it
    with pytest.raises(HTTP2Error) as e:
        conn.receive(frame(_http2.DATA, 0, 1, b"a" * 1))
    assert e.value.code == _http2.FLOW_CONTROL_ERROR


def test_padding_is_given_back_at_once():
    conn, _, encoder = opened(window=100, connection_window=100000)
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.receive(frame(_http2.DATA, _http2.PADDED, 1, bytes([60]) + b"d" + b"\x00" * 60))
    assert frames(conn.data_to_send()) == [(_http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 61))]


def test_data_on_a_reset_stream_is_dropped_but_given_back():
    conn, handler, encoder = opened(connection_window=65535)
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.reset(1, _http2.CANCEL)
    assert frames(conn.data_to_send()) == [(_http2.RST_STREAM, 0, 1, struct.pack(">I", _http2.CANCEL))]
    for _ in range(3):
        conn.receive(frame(_http2.DATA, 0, 1, b"z" * 16000))
    assert ("data", 1, b"z" * 16000) not in handler.events
    updates = [f for f in frames(conn.data_to_send()) if f[0] == _http2.WINDOW_UPDATE]
    # half the connection's window (32,767) is passed at the third frame
    assert updates == [(_http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 48000))]
    with pytest.raises(StreamGone):
        conn.send_data(1, b"late")


def test_data_on_a_stream_never_opened_is_an_error():
    conn, _, _ = opened()
    with pytest.raises(HTTP2Error, match="never opened"):
        conn.receive(frame(_http2.DATA, 0, 5, b"x"))


def test_streams_past_the_limit_are_refused_and_hpack_still_follows():
    conn, handler, encoder = opened(max_streams=1)
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    extra = REQUEST + [(b"x-trace", b"first")]
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 3, encoder.encode(extra)))
    assert frames(conn.data_to_send()) == [
        (_http2.RST_STREAM, 0, 3, struct.pack(">I", _http2.REFUSED_STREAM))
    ]
    conn.reset(1, _http2.NO_ERROR)
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 5, encoder.encode(extra)))  # x-trace by index now
    assert handler.events[-1] == ("request", 5, extra)


def test_the_peer_resetting_or_going_away_is_told():
    conn, handler, encoder = opened()
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.receive(frame(_http2.RST_STREAM, 0, 1, struct.pack(">I", _http2.CANCEL)))
    assert handler.events[-1] == ("reset", 1)
    with pytest.raises(StreamGone):
        conn.send_headers(1, b"\x88")
    conn.receive(frame(_http2.GOAWAY, 0, 0, struct.pack(">II", 1, 0)))
    assert handler.events[-1] == ("goaway",)


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(_http2.HEADERS, _http2.END_HEADERS, 2, b"\x83"), _http2.PROTOCOL_ERROR),  # even id
        (frame(_http2.DATA, 0, 0, b"x"), _http2.PROTOCOL_ERROR),
        (frame(_http2.SETTINGS, 0, 0, b"12345"), _http2.FRAME_SIZE_ERROR),
        (frame(_http2.SETTINGS, 0, 0, settings(frame=100)), _http2.PROTOCOL_ERROR),
        (frame(_http2.SETTINGS, 0, 0, settings(window=2**31)), _http2.FLOW_CONTROL_ERROR),
        (frame(_http2.SETTINGS, 0, 0, settings(push=2)), _http2.PROTOCOL_ERROR),
        (frame(_http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), _http2.PROTOCOL_ERROR),
        (frame(_http2.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), _http2.FLOW_CONTROL_ERROR),
        (frame(_http2.PUSH_PROMISE, _http2.END_HEADERS, 1, b"\x00\x00\x00\x02"), _http2.PROTOCOL_ERROR),
        (frame(_http2.RST_STREAM, 0, 9, struct.pack(">I", 0)), _http2.PROTOCOL_ERROR),
        (frame(_http2.DATA, 0, 1, b"x" * 16385), _http2.FRAME_SIZE_ERROR),
        (frame(_http2.HEADERS, _http2.END_HEADERS, 1, b"\xff\xff\xff\x0f"), _http2.COMPRESSION_ERROR),
    ],
)
def test_broken_frames_end_the_connection_with_their_code(data, code):
    conn, _, _ = opened()
    with pytest.raises(HTTP2Error) as e:
        conn.receive(data)
    assert e.value.code == code
    goaway = frames(conn.data_to_send())[-1]
    assert goaway[0] == _http2.GOAWAY and struct.unpack(">II", goaway[3])[1] == code


def test_a_header_list_past_the_limit_is_the_handlers_to_refuse():
    conn, handler, encoder = opened(max_header_list=1024)
    big = REQUEST + [(b"big", b"b" * 2000)]
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(big)))
    assert handler.blocks[0].size == sum(len(n) + len(v) + 32 for n, v in big)


def test_a_header_list_far_past_the_limit_ends_the_connection():
    conn, _, encoder = opened(max_header_list=1024)
    big = REQUEST + [(b"big", b"b" * (_http2.HARD_LIMIT * 1024))]
    with pytest.raises(HTTP2Error) as e:
        conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(big)))
    assert e.value.code == _http2.ENHANCE_YOUR_CALM


def test_unknown_frames_and_priorities_are_read_past():
    conn, handler, encoder = opened()
    conn.receive(frame(0xFA, 0, 0, b"whatever") + frame(_http2.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"))
    conn.receive(request(encoder, 1, b"ok"))
    assert handler.events[0][0] == "request"


def test_trailers_from_the_client_end_its_side():
    conn, handler, encoder = opened()
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.receive(frame(_http2.DATA, 0, 1, b"m"))
    conn.receive(
        frame(_http2.HEADERS, _http2.END_HEADERS | _http2.END_STREAM, 1, encoder.encode([(b"x", b"y")]))
    )
    assert handler.events[-1] == ("ended", 1)
    with pytest.raises(HTTP2Error, match="second header block"):
        conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 3, encoder.encode(REQUEST)))
        conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 3, encoder.encode([(b"x", b"y")])))


def test_a_block_that_leaves_the_table_alone_is_decoded_once():
    conn, handler, encoder = opened()
    conn.receive(request(encoder, 1))  # indexes the headers: decoded, not remembered
    conn.receive(request(encoder, 3))  # the same headers by index: remembered
    conn.receive(request(encoder, 5))
    first, second, third = handler.blocks
    assert first is not second and second is third
    # a new header shifts every index: what was remembered is forgotten
    shifted = REQUEST + [(b"x-trace", b"t")]
    conn.receive(request(encoder, 7, headers=shifted))
    conn.receive(request(encoder, 9))
    assert handler.events[-2] == ("request", 9, REQUEST)
    assert handler.blocks[-1] is not third


def test_a_remembered_block_is_not_used_once_the_table_moves():
    # the same bytes mean other headers after the table changes: decoded afresh
    conn, handler, _ = opened()
    add = hpack.Encoder()
    block_a = add.encode([(b"x-a", b"1")])  # index 62 is x-a: 1
    conn.receive(request(add, 1, headers=REQUEST))
    assert (b"x-a", b"1") not in handler.events[0][2]
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS | _http2.END_STREAM, 3, block_a))
    indexed = bytes([0x80 | 62])
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS | _http2.END_STREAM, 5, indexed))
    here = handler.events[-2][2]
    conn.receive(
        frame(_http2.HEADERS, _http2.END_HEADERS | _http2.END_STREAM, 7, add.encode([(b"x-b", b"2")]))
    )
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS | _http2.END_STREAM, 9, indexed))
    assert handler.events[-2][2] != here and handler.events[-2][2] == [(b"x-b", b"2")]


@pytest.mark.parametrize(
    "headers, changes",
    [
        ([(b":method", b"POST")], False),  # static: indexed
        ([(b"x-long", b"v" * 300)], False),  # literal never indexed below
    ],
)
def test_what_changes_the_table(headers, changes):
    assert changes_table(encode_headers(headers)) is changes


def test_changes_table_reads_every_representation():
    encoder = hpack.Encoder()
    first = encoder.encode([(b"x-key", b"value")])
    assert changes_table(first)  # literal with incremental indexing
    assert not changes_table(encoder.encode([(b"x-key", b"value")]))  # now indexed
    assert not changes_table(b"\x10\x01a\x01b")  # never indexed, new name "a": "b"
    assert not changes_table(b"\x04\x02/x")  # without indexing, :path (static 4): "/x"
    encoder.header_table_size = 100
    assert changes_table(encoder.encode([(b":method", b"POST")]))  # a size update leads the block


def test_encoded_headers_decode_with_hpack():
    headers = [
        (b":status", b"200"),
        (b":status", b"415"),
        (b"content-type", b"application/grpc"),
        (b"grpc-message", b"x" * 200),
        (b"n" * 130, b"long name"),
    ]
    block = encode_headers(headers)
    assert block[0] == 0x88  # :status 200 is a static entry: one byte
    assert hpack.Decoder().decode(block, raw=True) == headers
    assert not changes_table(block)


def test_a_prefix_opens_the_data_in_any_window():
    conn, _, encoder = opened(settings(window=3))
    conn.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder.encode(REQUEST)))
    conn.data_to_send()
    data = b"0123456789" * 4000  # 40,000 bytes
    assert conn.send_data(1, data, b"\x00abcd") == 3  # less than the prefix
    conn.receive(frame(_http2.WINDOW_UPDATE, 0, 1, struct.pack(">I", 65535)))
    conn.receive(frame(_http2.SETTINGS, 0, 0, settings(frame=16384)))
    sent = b"".join(p for k, _, _, p in frames(conn.data_to_send()) if k == _http2.DATA)
    assert sent == b"\x00ab"
    conn2, _, encoder2 = opened(settings(window=1 << 20))
    conn2.receive(frame(_http2.HEADERS, _http2.END_HEADERS, 1, encoder2.encode(REQUEST)))
    conn2.data_to_send()
    assert conn2.send_data(1, data, b"\x00abcd") == 40005
    pieces = conn2.take_output()
    assert any(isinstance(p, memoryview) for p in pieces), "the data is queued as views, not copied"
    out = frames(b"".join(pieces))
    assert [len(p) for *_, p in out] == [16384, 16384, 7237]
    assert b"".join(p for *_, p in out) == b"\x00abcd" + data
