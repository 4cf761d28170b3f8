"""
The wire between the server and its worker children: length-prefixed frames.

Every frame is a 9-byte header (kind: 1 byte, length: 8 bytes, big-endian) and a
payload. A message is one head frame and the buffer frames it announces:

- ``J``: a JSON object (the handshake; readable whatever either side's pickle is);
- ``P``: a pickle (protocol 5); its payload starts with a 4-byte count of the buffer
  frames that follow, which carry the pickle's out-of-band buffers in order;
- ``B``: one buffer, inline;
- ``S``: one buffer in shared memory: the payload is the buffer's size (8 bytes) and
  the path of a file under ``/dev/shm`` that the receiver maps and unlinks.

numpy arrays are pickled by value (raw buffer, dtype string, shape) rather than by
numpy's own reducers, so the two sides need not share numpy's internal module paths
(numpy 1.x and 2.x talk fine); their data travels out-of-band, never copied into the
pickle stream.

Pickle is only ever read from a peer this process spawned or was spawned by; nothing
from the network is unpickled.

Imported by worker children (Python 3.9 and up): standard library only (numpy is
used when the pickled objects hold arrays).
"""

from __future__ import annotations

import io
import itertools
import json
import mmap
import os
import pickle
import struct
import sys
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "WIRE_VERSION",
    "FrameDecoder",
    "SharedMemory",
    "WireError",
    "dumps",
    "encode_json",
    "encode_message",
    "loads",
    "read_message",
    "sweep_orphans",
    "write_all",
]

#: Bumped whenever the framing or the message vocabulary changes incompatibly.
WIRE_VERSION = 3
PICKLE_PROTOCOL = 5

HEADER = struct.Struct("!cQ")
COUNT = struct.Struct("!I")
SIZE = struct.Struct("!Q")

KIND_JSON = b"J"
KIND_PICKLE = b"P"
KIND_BUFFER = b"B"
KIND_SHM = b"S"

#: Where shared-memory frames may point.
SHM_DIRECTORIES = {"/dev/shm"}

#: Buffers handed to one ``writev`` call at most (POSIX guarantees 16; Linux takes 1024).
IOV_MAX = max(16, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 16

#: Free shared-memory bytes a side keeps for reuse (per worker and direction).
DEFAULT_KEEP = 128 << 20
#: Shared-memory segments are sized in multiples of this, so that they fit again.
SEGMENT_UNIT = 1 << 20
PAGE = mmap.PAGESIZE
#: Pre-faults a mapping in one call (Linux); 0 where there is no such flag.
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

#: Frames this large are refused (a corrupt stream, not a real message).
MAX_FRAME = 1 << 40


class WireError(Exception):
    """The byte stream is not a valid sequence of frames."""


# -- numpy by value ---------------------------------------------------------------


def _dtype_spec(dtype: Any) -> Any:
    return dtype.descr if dtype.fields is not None else dtype.str


def _make_dtype(spec: Any) -> Any:
    import numpy

    return numpy.dtype(spec if isinstance(spec, str) else [tuple(f) for f in spec])


def _array(buffer: Any, spec: Any, shape: Tuple[int, ...]) -> Any:
    """Rebuild an array from its raw buffer (used by the unpickler)."""
    import numpy

    dtype = _make_dtype(spec)
    if dtype.itemsize == 0 or 0 in shape:
        return numpy.empty(shape, dtype=dtype)
    return numpy.frombuffer(buffer, dtype=dtype).reshape(shape)


def _object_array(items: List[Any], shape: Tuple[int, ...]) -> Any:
    """Rebuild an object array (BYTES tensors) from its items."""
    import numpy

    out = numpy.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def _scalar(spec: Any, raw: bytes) -> Any:
    import numpy

    return numpy.frombuffer(raw, dtype=_make_dtype(spec))[0]


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:  # noqa: D102 - pickle hook
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return NotImplemented
        if isinstance(obj, numpy.ndarray) and type(obj) is numpy.ndarray:
            if obj.dtype.hasobject:
                return _object_array, (obj.ravel().tolist(), obj.shape)
            raw = numpy.ascontiguousarray(obj).reshape(-1).view(numpy.uint8)
            return _array, (pickle.PickleBuffer(raw), _dtype_spec(obj.dtype), obj.shape)
        if isinstance(obj, numpy.dtype):
            return _make_dtype, (_dtype_spec(obj),)
        if isinstance(obj, numpy.generic) and not obj.dtype.hasobject:
            return _scalar, (_dtype_spec(obj.dtype), obj.tobytes())
        return NotImplemented


def dumps(obj: Any) -> Tuple[bytes, List[memoryview]]:
    """Pickle ``obj``: (the pickle, its out-of-band buffers as flat byte views)."""
    buffers: List[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _Pickler(out, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append).dump(obj)
    return out.getvalue(), [b.raw() for b in buffers]


def loads(data: Any, buffers: List[Any]) -> Any:
    """Unpickle what ``dumps`` made, given the buffers in order."""
    return pickle.loads(data, buffers=buffers)


# -- shared memory for big buffers -----------------------------------------------


class _Segment:
    """A file of the sender's under the shared-memory folder, mapped for writing."""

    __slots__ = ("path", "capacity", "mapping")

    def __init__(self, path: str, capacity: int, mapping: Any) -> None:
        self.path = path
        self.capacity = capacity
        self.mapping = mapping


class SharedMemory:
    """
    Moves buffers of ``threshold`` bytes and more through files under ``directory``
    (a tmpfs) instead of the pipe, and reuses those files.

    Each side sends through segments of its own, named ``prefix-N``: ``put`` copies a
    buffer into a free segment (already mapped and faulted in after its first use, so
    the copy is a plain memcpy) and lends it to the peer. The peer's ``take`` maps it
    shared and populated, and when the last object using that mapping is gone, the
    segment's path is queued in ``released``; the peer sends those back (a
    ``release`` message) and ``release`` here makes them free again. At most
    ``keep`` bytes of free segments are kept; the rest are unmapped and unlinked.
    Files stay in ``directory`` while they live, named by the prefix, so a parent can
    sweep what a dead child left (and a server, what a dead server left).
    """

    _counter = itertools.count(1)

    def __init__(self, directory: str, prefix: str, threshold: int, keep: int = DEFAULT_KEEP) -> None:
        self.directory = directory
        self.prefix = prefix
        self.threshold = threshold
        self.keep = keep
        self.released: List[str] = []
        self._free: List[_Segment] = []
        self._lent: Dict[str, _Segment] = {}

    @classmethod
    def default(
        cls, prefix: str, threshold: int = 1 << 20, keep: int = DEFAULT_KEEP
    ) -> Optional["SharedMemory"]:
        """One under ``/dev/shm`` when that is a writable directory, else ``None``."""
        directory = "/dev/shm"
        if threshold <= 0 or not (os.path.isdir(directory) and os.access(directory, os.W_OK)):
            return None
        return cls(directory, prefix, threshold, keep)

    # -- sending ----------------------------------------------------------------

    def put(self, view: memoryview) -> bytes:
        """Copy a buffer into a segment lent to the peer; the ``S`` frame payload naming it."""
        size = len(view)
        segment = self._take_free(size) or self._create(size)
        if size:
            segment.mapping[:size] = view
        self._lent[segment.path] = segment
        return SIZE.pack(size) + os.fsencode(segment.path)

    def release(self, paths: List[str]) -> None:
        """The peer is done with these segments: free them (within ``keep``)."""
        for path in paths:
            segment = self._lent.pop(path, None)
            if segment is not None:
                self._free.append(segment)
        kept = 0
        for segment in sorted(self._free, key=lambda s: s.capacity):
            if kept + segment.capacity > self.keep:
                self._drop(segment)
            else:
                kept += segment.capacity
        self._free = [s for s in self._free if s.mapping is not None]

    def _take_free(self, size: int) -> Optional[_Segment]:
        fitting = [s for s in self._free if s.capacity >= size]
        if not fitting:
            return None
        best = min(fitting, key=lambda s: s.capacity)
        self._free.remove(best)
        return best

    def _create(self, size: int) -> _Segment:
        capacity = max(PAGE, -(-size // SEGMENT_UNIT) * SEGMENT_UNIT)
        path = os.path.join(self.directory, f"{self.prefix}-{next(self._counter)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, capacity)
            mapping = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return _Segment(path, capacity, mapping)

    def _drop(self, segment: _Segment) -> None:
        try:
            os.unlink(segment.path)
        except OSError:
            pass
        try:
            segment.mapping.close()
        except BufferError:  # still exported somewhere: unmapped when that goes
            pass
        segment.mapping = None

    def close(self) -> None:
        """Unlink and unmap every segment of this side (the peer is gone)."""
        for segment in [*self._free, *self._lent.values()]:
            self._drop(segment)
        self._free, self._lent = [], {}

    # -- receiving ----------------------------------------------------------------

    def take(self, payload: bytes) -> Any:
        """
        Map the segment an ``S`` frame names (shared, writable, populated); its path
        is queued in ``released`` once the mapping is no longer used.
        """
        size, path = _shm_frame(payload)
        if size == 0:
            self.released.append(path)
            return bytearray()
        fd = os.open(path, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | MAP_POPULATE)
        finally:
            os.close(fd)
        done = weakref.finalize(mapping, self.released.append, path)
        done.atexit = False
        return mapping

    def take_released(self) -> List[str]:
        """The segments to hand back to the peer now (and forget them here)."""
        # emptied in place: the finalizers of mappings still in use append to this list
        released = self.released[:]
        del self.released[:]
        return released

    def sweep(self) -> int:
        """Remove files this prefix left (a peer died before taking them); how many."""
        removed = 0
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        for name in names:
            if name.startswith(self.prefix + "-"):
                try:
                    os.unlink(os.path.join(self.directory, name))
                    removed += 1
                except OSError:
                    pass
        return removed


def sweep_orphans(directory: str = "/dev/shm", prefix: str = "v2d-") -> int:
    """
    Remove ``prefix<pid>-...`` files whose server process no longer runs (it was killed
    before it could clean up); how many.
    """
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        pid = name[len(prefix) :].partition("-")[0]
        if not name.startswith(prefix) or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's: alive
        return True
    return True


def _shm_frame(payload: bytes) -> Tuple[int, str]:
    (size,) = SIZE.unpack_from(payload)
    path = os.fsdecode(bytes(payload[SIZE.size :]))
    if os.path.dirname(path) not in SHM_DIRECTORIES or os.path.basename(path).startswith("."):
        raise WireError(f"shared-memory frame names an unexpected path {path!r}")
    return size, path


# -- encoding -------------------------------------------------------------------


def encode_json(obj: Any) -> bytes:
    """A ``J`` frame."""
    payload = json.dumps(obj, sort_keys=True).encode()
    return HEADER.pack(KIND_JSON, len(payload)) + payload


def encode_message(obj: Any, shm: Optional[SharedMemory] = None) -> List[Any]:
    """
    The frames of one pickled message, as a list of byte chunks to write in order
    (big buffers stay views of the original memory: no copy here).
    """
    data, buffers = dumps(obj)
    chunks: List[Any] = [HEADER.pack(KIND_PICKLE, COUNT.size + len(data)), COUNT.pack(len(buffers)), data]
    for view in buffers:
        if shm is not None and len(view) >= shm.threshold:
            payload = shm.put(view)
            chunks.append(HEADER.pack(KIND_SHM, len(payload)))
            chunks.append(payload)
        else:
            chunks.append(HEADER.pack(KIND_BUFFER, len(view)))
            chunks.append(view)
    return chunks


def write_all(fd: int, chunks: List[Any]) -> None:
    """Write byte chunks to a blocking file descriptor, in order, with as few calls as can be."""
    views = [memoryview(c).cast("B") for c in chunks if len(c)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + IOV_MAX])
        while n and i < len(views):
            size = len(views[i])
            if n >= size:
                n -= size
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


# -- decoding, push style (the parent, fed by the reactor) ---------------------------


class FrameDecoder:
    """
    Turns a byte stream into messages: ``deliver(kind, obj)`` is called with
    ``("json", dict)`` or ``("pickle", object)`` for each complete message. Unpickling
    errors are reported as ``("error", exception)``.
    """

    def __init__(self, deliver: Callable[[str, Any], None], shm: Optional[SharedMemory] = None) -> None:
        self.deliver = deliver
        self.shm = shm
        self._pending = bytearray()
        self._target: Optional[bytearray] = None
        self._filled = 0
        self._kind = b""
        self._head: Optional[bytes] = None
        self._expected = 0
        self._buffers: List[Any] = []

    def feed(self, data: bytes) -> None:
        """Consume bytes as they arrive."""
        view = memoryview(data)
        while view:
            if self._target is not None:
                n = min(len(view), len(self._target) - self._filled)
                self._target[self._filled : self._filled + n] = view[:n]
                self._filled += n
                view = view[n:]
                if self._filled == len(self._target):
                    target, self._target = self._target, None
                    self._frame(self._kind, target)
                continue
            self._pending += view
            view = memoryview(b"")
            while self._target is None and len(self._pending) >= HEADER.size:
                kind, length = HEADER.unpack_from(self._pending)
                if kind not in (KIND_JSON, KIND_PICKLE, KIND_BUFFER, KIND_SHM) or length > MAX_FRAME:
                    raise WireError(f"bad frame header {bytes(self._pending[: HEADER.size])!r}")
                available = len(self._pending) - HEADER.size
                if available >= length:
                    payload = bytes(self._pending[HEADER.size : HEADER.size + length])
                    del self._pending[: HEADER.size + length]
                    self._frame(kind, payload if kind != KIND_BUFFER else bytearray(payload))
                else:
                    # a big frame: fill a buffer of its size directly from now on
                    self._kind = kind
                    self._target = bytearray(length)
                    self._target[:available] = self._pending[HEADER.size :]
                    self._filled = available
                    self._pending = bytearray()

    def _frame(self, kind: bytes, payload: Any) -> None:
        if self._head is None:
            if kind == KIND_JSON:
                self.deliver("json", json.loads(bytes(payload)))
                return
            if kind != KIND_PICKLE:
                raise WireError(f"expected a message head, got a {kind!r} frame")
            (self._expected,) = COUNT.unpack_from(payload)
            self._head = bytes(payload[COUNT.size :])
            self._buffers = []
        elif kind == KIND_BUFFER:
            self._buffers.append(payload)
        elif kind == KIND_SHM:
            self._buffers.append(_take(self.shm, bytes(payload)))
        else:
            raise WireError(f"expected a buffer frame, got a {kind!r} frame")
        if len(self._buffers) == self._expected:
            head, buffers = self._head, self._buffers
            self._head, self._buffers = None, []
            try:
                obj = loads(head, buffers)
            except Exception as e:
                self.deliver("error", e)
                return
            self.deliver("pickle", obj)


# -- decoding, pull style (the child, blocking reads) ------------------------------


def _read_exact(stream: Any, n: int) -> Optional[bytearray]:
    out = bytearray(n)
    view = memoryview(out)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return out


def _take(shm: Optional[SharedMemory], payload: bytes) -> Any:
    if shm is None:
        raise WireError("a shared-memory frame, but no shared memory was agreed")
    return shm.take(payload)


def read_message(stream: Any, shm: Optional[SharedMemory] = None) -> Optional[Tuple[str, Any]]:
    """
    Read one message from a binary stream (blocking): ``("json", dict)`` or
    ``("pickle", object)``; ``None`` at end of stream.
    """
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    kind, length = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise WireError("frame too large")
    payload = _read_exact(stream, length)
    if payload is None:
        return None
    if kind == KIND_JSON:
        return "json", json.loads(bytes(payload))
    if kind != KIND_PICKLE:
        raise WireError(f"expected a message head, got a {kind!r} frame")
    (count,) = COUNT.unpack_from(payload)
    buffers: List[Any] = []
    for _ in range(count):
        header = _read_exact(stream, HEADER.size)
        if header is None:
            return None
        kind, length = HEADER.unpack(header)
        body = _read_exact(stream, length)
        if body is None:
            return None
        if kind == KIND_BUFFER:
            buffers.append(body)
        elif kind == KIND_SHM:
            buffers.append(_take(shm, bytes(body)))
        else:
            raise WireError(f"expected a buffer frame, got a {kind!r} frame")
    return "pickle", loads(memoryview(payload)[COUNT.size :], buffers)
