"""Unit tests of the worker wire: frames, pickle 5 with out-of-band buffers, shared memory."""

from __future__ import annotations

import gc
import io
import os
import pickle

import numpy as np
import pytest

from v2d.errors import InferenceError
from v2d.types import HeaderDict, InferenceRequest, Parameters, RequestInput
from v2d.workers import _wire
from v2d.workers._wire import FrameDecoder, SharedMemory, WireError, encode_json, encode_message, read_message


def _bytes(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def _decode_all(data: bytes, step: int = 0):
    got = []
    decoder = FrameDecoder(lambda kind, obj: got.append((kind, obj)))
    if step:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
    else:
        decoder.feed(data)
    return got


def test_arrays_travel_out_of_band():
    big = np.arange(100_000, dtype="<f4")
    data, buffers = _wire.dumps({"x": big})
    assert len(data) < 1000, "the array's data is not in the pickle stream"
    assert [len(b) for b in buffers] == [big.nbytes]
    back = _wire.loads(data, [bytearray(b) for b in buffers])["x"]
    np.testing.assert_array_equal(back, big)
    assert back.flags.writeable


def test_arrays_are_pickled_without_numpy_module_paths():
    data, _ = _wire.dumps(np.zeros((2, 3), dtype="<i8"))
    assert b"numpy._core" not in data and b"numpy.core" not in data


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype="<i8").reshape(3, 4),
        np.arange(12, dtype=">f8").reshape(3, 4).T,  # big-endian, not contiguous
        np.zeros((0, 5), dtype="f4"),
        np.array([b"ab", b"c"], dtype=object),
        np.array(["x", "yz"]),
        np.array([True, False]),
        np.float32(1.5),
        np.dtype("<u2"),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
    ],
)
def test_numpy_values_round_trip(value):
    data, buffers = _wire.dumps(value)
    back = _wire.loads(data, [bytearray(b) for b in buffers])
    if isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.shape == value.shape
        assert back.tolist() == value.tolist()
    else:
        assert back == value and type(back) is type(value)


def test_messages_round_trip_through_the_push_decoder_in_any_chunking():
    request = InferenceRequest(
        id="r1",
        parameters=Parameters(headers=HeaderDict({"X-Tenant": "acme"})),
        inputs=[RequestInput(name="x", shape=[2, 3], datatype="FP32", data=np.ones((2, 3), "f4"))],
    )
    stream = (
        encode_json({"hello": 1})
        + _bytes(encode_message(("predict", 7, request)))
        + _bytes(encode_message(("error", 8, InferenceError("nope"))))
    )
    for step in (0, 1, 5, 4096):
        got = _decode_all(stream, step)
        assert [k for k, _ in got] == ["json", "pickle", "pickle"]
        assert got[0][1] == {"hello": 1}
        op, rid, back = got[1][1]
        assert (op, rid, back.id) == ("predict", 7, "r1")
        assert back.parameters.headers["x-tenant"] == "acme"
        np.testing.assert_array_equal(back.inputs[0].data, np.ones((2, 3), "f4"))
        assert str(got[2][1][2]) == "nope"


def test_big_frames_are_filled_in_place():
    value = np.random.default_rng(1).random(300_000)
    stream = _bytes(encode_message(value))
    got = _decode_all(stream, 65536)
    np.testing.assert_array_equal(got[0][1], value)


def test_pull_reader_reads_what_the_encoder_wrote():
    stream = io.BytesIO(encode_json({"ok": True}) + _bytes(encode_message(("x", 1, np.arange(5)))))
    assert read_message(stream) == ("json", {"ok": True})
    kind, (op, rid, arr) = read_message(stream)
    assert (kind, op, rid, arr.tolist()) == ("pickle", "x", 1, [0, 1, 2, 3, 4])
    assert read_message(stream) is None


def test_truncated_stream_reads_as_end():
    data = _bytes(encode_message(np.arange(1000)))
    assert read_message(io.BytesIO(data[:-10])) is None


def test_garbage_is_a_wire_error():
    decoder = FrameDecoder(lambda kind, obj: None)
    with pytest.raises(WireError):
        decoder.feed(b"Z" + b"\0" * 8)


def test_unpicklable_payload_is_reported_not_raised():
    got = []
    decoder = FrameDecoder(lambda kind, obj: got.append((kind, obj)))
    bad = b"not a pickle"
    payload = _wire.COUNT.pack(0) + bad
    decoder.feed(_wire.HEADER.pack(_wire.KIND_PICKLE, len(payload)) + payload)
    assert got[0][0] == "error"
    assert isinstance(got[0][1], pickle.UnpicklingError)


needs_shm = pytest.mark.skipif(
    SharedMemory.default("v2d-test") is None, reason="no writable /dev/shm on this machine"
)


def _files(prefix: str):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix + "-"))


@needs_shm
def test_shared_memory_lends_segments_and_reuses_them_once_released():
    sender = SharedMemory.default(f"v2d-test-{os.getpid()}-s", threshold=1024)
    receiver = SharedMemory.default(f"v2d-test-{os.getpid()}-r", threshold=1024)
    try:
        value = np.arange(10_000, dtype="<i8")
        stream = _bytes(encode_message(("result", 1, value), sender))
        assert len(stream) < value.nbytes, "the data went through shared memory"
        (segment,) = _files(sender.prefix)

        got = []
        decoder = FrameDecoder(lambda kind, obj: got.append(obj), receiver)
        decoder.feed(stream)
        (_, _, back) = got.pop()
        np.testing.assert_array_equal(back, value)
        back[0] = 42  # writable
        view = back[10:20]
        del back
        gc.collect()
        assert receiver.released == [], "still in use through a view"
        del view
        gc.collect()
        assert receiver.take_released() == [f"/dev/shm/{segment}"]

        # the sender gets it back and the next buffer goes into the same file
        sender.release([f"/dev/shm/{segment}"])
        decoder.feed(_bytes(encode_message(("result", 2, value + 1), sender)))
        assert _files(sender.prefix) == [segment]
        np.testing.assert_array_equal(got.pop()[2], value + 1)
    finally:
        sender.close()
    assert _files(sender.prefix) == [], "close() unlinks the side's segments"


@needs_shm
def test_a_mapping_freed_after_a_hand_back_is_handed_back_the_next_time():
    # the hand-back of one mapping must not lose a mapping still in use then
    sender = SharedMemory.default(f"v2d-late-{os.getpid()}-s", threshold=1024)
    receiver = SharedMemory.default(f"v2d-late-{os.getpid()}-r", threshold=1024)
    try:
        got = []
        decoder = FrameDecoder(lambda kind, obj: got.append(obj), receiver)
        for rid in (1, 2):
            decoder.feed(_bytes(encode_message(("result", rid, np.arange(1000, dtype="<i8")), sender)))
        first, second = got[0][2], got[1][2]
        del got[:], first
        gc.collect()
        assert len(receiver.take_released()) == 1, "the first, freed"
        del second
        gc.collect()
        assert len(receiver.take_released()) == 1, "the second, freed after the first went back"
    finally:
        sender.close()


@needs_shm
def test_shared_memory_keeps_at_most_keep_bytes_of_free_segments():
    sender = SharedMemory.default(f"v2d-keep-{os.getpid()}", threshold=1, keep=1 << 20)
    try:
        paths = [_wire._shm_frame(sender.put(memoryview(bytes(1000))))[1] for _ in range(3)]
        assert len(_files(sender.prefix)) == 3
        sender.release(paths)
        assert len(_files(sender.prefix)) == 1, "one 1 MiB segment kept, the others unlinked"
    finally:
        sender.close()


@needs_shm
def test_sweep_removes_what_a_dead_peer_left():
    shm = SharedMemory.default(f"v2d-sweep-{os.getpid()}", threshold=1)
    assert shm is not None
    shm.put(memoryview(b"abc"))
    shm.put(memoryview(b"def"))
    assert shm.sweep() == 2
    assert shm.sweep() == 0
    shm.close()


@needs_shm
def test_sweep_orphans_removes_the_files_of_servers_that_no_longer_run():
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f"/dev/shm/v2d-{dead.pid}-1-p-1"
    mine = f"/dev/shm/v2d-{os.getpid()}-1-p-1"
    for path in (orphan, mine):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        assert _wire.sweep_orphans() >= 1
        assert not os.path.exists(orphan)
        assert os.path.exists(mine), "a running server's files stay"
    finally:
        for path in (orphan, mine):
            if os.path.exists(path):
                os.unlink(path)


def test_shared_memory_frames_may_only_name_the_shm_folder(tmp_path):
    path = tmp_path / "elsewhere"
    path.write_bytes(b"x")
    with pytest.raises(WireError):
        SharedMemory(str(tmp_path), "v2d-x", 1).take(_wire.SIZE.pack(1) + os.fsencode(str(path)))
    assert path.exists()


def test_a_shared_memory_frame_without_shared_memory_is_a_wire_error():
    payload = _wire.SIZE.pack(1) + b"/dev/shm/v2d-1-1-p-1"
    frames = encode_message(("result", 1, None))
    head = _bytes(frames)
    # a head announcing one buffer, then an S frame
    body = head[_wire.HEADER.size + _wire.COUNT.size :]
    announce = _wire.HEADER.pack(_wire.KIND_PICKLE, _wire.COUNT.size + len(body)) + _wire.COUNT.pack(1) + body
    with pytest.raises(WireError):
        FrameDecoder(lambda kind, obj: None).feed(
            announce + _wire.HEADER.pack(_wire.KIND_SHM, len(payload)) + payload
        )


def test_write_all_writes_every_chunk_in_order_through_a_pipe():
    r, w = os.pipe()
    try:
        chunks = [b"head", memoryview(np.arange(4, dtype=np.float32)).cast("B"), b"", bytearray(b"tail")]
        _wire.write_all(w, chunks * 3)
        os.close(w)
        w = -1
        got = b""
        while True:
            data = os.read(r, 1 << 16)
            if not data:
                break
            got += data
        assert got == b"".join(bytes(c) for c in chunks) * 3
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def test_write_all_goes_on_after_short_writes(monkeypatch):
    written = []

    def short_writev(fd, views):  # the kernel may take less than offered
        first = bytes(views[0][:3]) if len(views[0]) > 3 else bytes(views[0])
        written.append(first)
        return len(first)

    monkeypatch.setattr(_wire.os, "writev", short_writev)
    _wire.write_all(99, [b"abcdefg", b"hi", b"jklmnop"])
    assert b"".join(written) == b"abcdefghijklmnop"
