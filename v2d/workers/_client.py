"""
The server's end of one child's wire: typed messages in and out, requests multiplexed.

``WireClient`` (as ``LocalWorkerAMP`` is in Twisted's ``trial/_dist``) knows the
messages of v2d.workers._messages and nothing of processes: it is given a ``write``
for the byte chunks it sends and is fed the bytes that arrive. ``call`` sends one
request and gives a Deferred of its reply; cancelling that Deferred sends ``cancel``
(the child cancels the request's task) and nothing more is answered for it. Streams
get a queue of ``("item" | "end" | "error", value)``. Errors arrive as themselves
(v2d.workers._errors). The JSON handshake, metric batches and a broken stream go to
the callables given.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from twisted.python.failure import Failure

from v2d.workers import _errors, _wire
from v2d.workers._messages import Handler, Op, dispatch, message, table

__all__ = ["WireClient"]


class WireClient:
    """
    Moves messages to and from one child. ``hello(dict)`` gets the child's handshake,
    ``metrics(batch)`` its custom metrics, ``broken(reason)`` a stream that makes no sense.
    """

    def __init__(
        self,
        write: Callable[[List[Any]], None],
        shm: Optional[_wire.SharedMemory],
        hello: Callable[[Dict[str, Any]], None],
        metrics: Callable[[Any], None],
        broken: Callable[[str], None],
    ) -> None:
        self.write = write
        self.shm = shm
        self.hello = hello
        self.metrics = metrics
        self.broken = broken
        self.open = True
        self.decoder = _wire.FrameDecoder(self.received, shm)
        self._ids = itertools.count(1)
        self._pending: Dict[int, Deferred] = {}
        self._streams: Dict[int, DeferredQueue] = {}
        self._settled: List[Deferred] = []
        self._table: Dict[str, Handler] = table(
            {
                Op.RESULT: self._reply,
                Op.LOADED: self._reply,
                Op.UNLOADED: self._reply,
                Op.ERROR: self._error,
                Op.STREAM_ITEM: self._stream_item,
                Op.STREAM_END: self._stream_end,
                Op.RELEASE: self._release,
                Op.METRICS: lambda rid, batch: self.metrics(batch),
            }
        )

    @property
    def load(self) -> int:
        """Requests and streams in flight (for least-busy dispatch)."""
        return len(self._pending) + len(self._streams)

    # -- sending ----------------------------------------------------------------

    def send_json(self, obj: Any) -> None:
        """A JSON frame (the handshake's answer)."""
        self.write([_wire.encode_json(obj)])

    def send(self, op: Op, rid: int = 0, body: Any = None) -> None:
        chunks = _wire.encode_message(message(op, rid, body), self.shm)
        if self.shm is not None and self.shm.released:
            # the child's segments this side is done with go back first, to be reused
            chunks = _wire.encode_message(message(Op.RELEASE, 0, self.shm.take_released())) + chunks
        self.write(chunks)

    def call(self, op: Op, body: Any = None) -> Deferred:
        """Send one request; a Deferred of its reply (cancelling it cancels the request)."""
        rid = next(self._ids)
        d: Deferred = Deferred(lambda _: self._cancel(rid))
        self._pending[rid] = d
        try:
            self.send(op, rid, body)
        except Exception:
            self._pending.pop(rid, None)
            return fail()
        return d

    def _cancel(self, rid: int) -> None:
        """The caller gave up on ``rid``: the child cancels it; its answer, if any, is dropped."""
        if self._pending.pop(rid, None) is not None and self.open:
            try:
                self.send(Op.CANCEL, rid)
            except Exception:  # the child is going away: nothing to cancel
                pass
        self._check_settled()

    def open_stream(self) -> Tuple[int, DeferredQueue]:
        rid = next(self._ids)
        queue: DeferredQueue = DeferredQueue()
        self._streams[rid] = queue
        self.send(Op.STREAM_OPEN, rid)
        return rid, queue

    def stream_send(self, rid: int, op: Op, body: Any = None) -> None:
        if rid in self._streams and self.open:
            self.send(op, rid, body)

    def close_stream(self, rid: int, cancel: bool) -> None:
        if self._streams.pop(rid, None) is not None and cancel and self.open:
            self.send(Op.STREAM_CANCEL, rid)
        self._check_settled()

    # -- receiving ----------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the child."""
        try:
            self.decoder.feed(data)
        except _wire.WireError as e:
            self.broken(str(e))

    def received(self, kind: str, obj: Any) -> None:
        if kind == "pickle":
            dispatch(self._table, obj, self._unknown)
        elif kind == "json":
            self.hello(obj)
        else:
            self.broken(f"cannot unpickle a message: {obj}")

    def _unknown(self, op: str, rid: int) -> None:
        self.broken(f"unknown operation {op!r}")

    def _reply(self, rid: int, body: Any) -> None:
        d = self._pending.pop(rid, None)
        if d is not None:
            d.callback(body)
            if self._settled:
                self._check_settled()

    def _error(self, rid: int, body: Any) -> None:
        error = _errors.rebuild(body)
        queue = self._streams.pop(rid, None)
        if queue is not None:
            queue.put(("error", error))
            self._check_settled()
            return
        d = self._pending.pop(rid, None)
        if d is not None:
            d.errback(Failure(error))
            self._check_settled()

    def _stream_item(self, rid: int, body: Any) -> None:
        queue = self._streams.get(rid)
        if queue is not None:
            queue.put(("item", body))

    def _stream_end(self, rid: int, body: Any) -> None:
        queue = self._streams.pop(rid, None)
        if queue is not None:
            queue.put(("end", None))
            self._check_settled()

    def _release(self, rid: int, paths: Any) -> None:
        if self.shm is not None:
            self.shm.release(paths)

    # -- the end ----------------------------------------------------------------------

    def fail_all(self, error: Exception) -> None:
        """The child is gone: every request and stream in flight fails with ``error``."""
        self.open = False
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(error))
        streams, self._streams = self._streams, {}
        for queue in streams.values():
            queue.put(("error", error))
        self._check_settled()

    def settled(self) -> Deferred:
        """Fires once no request or stream is in flight (or the child is gone)."""
        if not self.load or not self.open:
            return succeed(None)
        d: Deferred = Deferred()
        self._settled.append(d)
        return d

    def _check_settled(self) -> None:
        if self._settled and (not self.load or not self.open):
            waiting, self._settled = self._settled, []
            for d in waiting:
                d.callback(None)
