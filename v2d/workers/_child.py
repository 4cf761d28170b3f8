"""
The worker child: serves one model's runtime over the wire, on an asyncio loop.

Started by ``v2d.workers._bootstrap`` in the environment's interpreter (isolated
mode). One asyncio loop does everything: it reads ``in_fd`` when readable (as much as
is there, decoding every complete message), calls a plain ``predict`` at once and runs
an ``async def`` one as a task (so those serve requests concurrently), and writes the
replies to ``out_fd`` together, once per pass of the loop: under load a whole batch of
requests costs the server one write and one wake-up, not one per request. Anything
the runtime prints goes to the child's stdout/stderr, which the server re-logs; the
wire has fds of its own.

The messages are those of v2d.workers._messages, dispatched by table; ``cancel``
cancels the task of a request the server gave up on. The runtime is built, loaded
and judged ready by v2d.runtimes, as in the server. Custom metrics go to the server
ahead of the replies they came with. Errors go back as themselves (v2d.workers._errors).

Where Twisted is importable, its asyncio reactor runs on the child's loop from the
moment anything imports ``twisted.internet.reactor`` (so a child whose runtime never
does pays nothing for it), and a runtime whose methods return Deferreds or use
``reactor.callLater`` works as it does in the server; where it is not, a runtime that
imports it fails its load saying so.

The runtime's code runs as v2d.custom_metrics' current model, so ``log`` works in it
as in the server.

The child ends when its input closes (the server stopped it, or died): it does not
outlive the server. As a runtime's blocking ``predict`` keeps it from noticing that,
the child also asks Linux to KILL it when the server dies (``PR_SET_PDEATHSIG``), and
a watchdog thread ends it once its parent is no longer the server (other systems).

Imported only in worker children (Python 3.9 and up): standard library, numpy and
v2d's child-safe modules.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import inspect
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

from v2d._responses import complete_response
from v2d._version import __version__
from v2d.custom_metrics import ModelContext, model_context
from v2d.errors import FailedPrecondition, Unavailable, V2DError
from v2d.handlers._arguments import call_handler
from v2d.handlers.custom import handler_routes
from v2d.runtimes import build_runtime, is_streaming, mark_loaded, needs_twisted
from v2d.shm import output_writer
from v2d.workers import _errors, _handshake, _wire
from v2d.workers._messages import Handler, LoadedInfo, Op, dispatch, message, table

__all__ = ["main"]

#: Seconds a child waits for its loop to finish once its input closed, before it exits anyway.
EXIT_GRACE = 5.0
#: Bytes read from the server at a time.
READ_SIZE = 1 << 20
#: Seconds between the watchdog's looks at the parent process.
PARENT_POLL = 0.5
#: A plain predict slower than this (seconds) gets the replies queued before it sent first.
SLOW_PREDICT = 0.0005
_END = object()


def _awaitable(value: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """
    Something to await for ``value``: a Deferred as a Future on ``loop`` (awaiting a
    Deferred in a task fails), another awaitable as it is, a plain value done at once.
    """
    as_future = getattr(value, "asFuture", None)
    if as_future is not None and hasattr(value, "addCallbacks"):
        return as_future(loop)
    if inspect.isawaitable(value):
        return value
    done = loop.create_future()
    done.set_result(value)
    return done


class _ReactorOnLoop:
    """
    A meta-path finder that, the first time anything imports ``twisted.internet.reactor``,
    installs Twisted's asyncio reactor on the child's loop instead of the default one
    (marked running, as the loop runs), and hands that reactor to the import.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != _REACTOR:
            return None
        sys.meta_path.remove(self)
        from twisted.internet import asyncioreactor

        asyncioreactor.install(self.loop)
        reactor = sys.modules[_REACTOR]
        reactor.startRunning(installSignalHandlers=False)  # type: ignore[attr-defined]
        return importlib.util.spec_from_loader(name, self)  # type: ignore[arg-type]

    def create_module(self, spec: Any) -> Any:
        return sys.modules[_REACTOR]

    def exec_module(self, module: Any) -> None:
        pass


_REACTOR = "twisted.internet.reactor"


def run_twisted(loop: asyncio.AbstractEventLoop) -> bool:
    """
    Where Twisted is importable, arrange that its reactor, once anything imports it, is
    Twisted's asyncio reactor running on ``loop``, so a runtime's Deferreds,
    ``reactor.callLater`` and ``deferLater`` work here as in the server; whether it did.
    Twisted costs a child nothing (about 30 MiB) until a runtime imports its reactor.
    """
    if _REACTOR in sys.modules or importlib.util.find_spec("twisted") is None:
        return False
    sys.meta_path.insert(0, _ReactorOnLoop(loop))
    return True


class ChildMetrics:
    """
    The sink of the custom metrics logged in this child: kept until the next flush,
    which sends them to the server in one ``metrics`` message.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.defined: set = set()
        self.definitions: List[tuple] = []
        self.observations: List[tuple] = []

    def define_custom(self, name: str, description: str) -> None:
        if name not in self.defined:
            self.defined.add(name)
            self.definitions.append((name, description))
            self.wake()

    def observe_custom(self, name: str, description: str, model: str, version: str, value: float) -> None:
        self.define_custom(name, description)
        self.observations.append((name, value))
        self.wake()

    def take(self) -> Optional[tuple]:
        """(definitions, observations) not sent yet, or None."""
        if not (self.definitions or self.observations):
            return None
        batch = (self.definitions, self.observations)
        self.definitions, self.observations = [], []
        return batch


class ChildServer:
    """Serves the messages of one server connection."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, out_fd: int, shm: Optional[_wire.SharedMemory]
    ) -> None:
        self.loop = loop
        self.out_fd = out_fd
        self.shm = shm
        self._out: List[Any] = []
        self._flush_scheduled = False
        #: Seconds the last plain predict took: replies wait for no slow predict.
        self._last_cost = 0.0
        self.runtime: Any = None
        self.settings: Any = None
        self.namespace: Any = None
        self.tasks: Dict[int, asyncio.Task] = {}
        self.queues: Dict[int, asyncio.Queue] = {}
        self.metrics = ChildMetrics(self._wake)
        #: The model as v2d.custom_metrics' current model (set by ``load``).
        self.context: Optional[ModelContext] = None
        self._thread = threading.get_ident()
        self._handlers: Optional[Dict[str, Handler]] = None

    # -- output ---------------------------------------------------------------

    def send(self, op: str, rid: int, body: Any = None) -> None:
        """Queue a reply; queued replies go out together (``flush``)."""
        try:
            chunks = _wire.encode_message((op, rid, body), self.shm)
        except Exception as exc:  # an unpicklable result: report it instead
            if op == Op.ERROR.value:
                raise
            reason = f"cannot send the {op} of request {rid} to the server: {type(exc).__name__}: {exc}"
            error = message(Op.ERROR, rid, _errors.describe(TypeError(reason)))
            chunks = _wire.encode_message(error, self.shm)
        self._out.extend(chunks)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def _wake(self) -> None:
        """Custom metrics are waiting: flush soon (from any thread)."""
        if threading.get_ident() == self._thread:
            self._schedule_flush()
        else:
            self.loop.call_soon_threadsafe(self._schedule_flush)

    def flush(self) -> None:
        """Write every queued reply (blocking: the server always reads)."""
        self._flush_scheduled = False
        chunks, self._out = self._out, []
        metrics = self.metrics.take()
        if metrics is not None:  # ahead of the replies, so a caller sees them counted
            chunks = _wire.encode_message(message(Op.METRICS, 0, metrics)) + chunks
        if self.shm is not None and self.shm.released:
            # the server's segments this side is done with go back, to be reused
            chunks += _wire.encode_message(message(Op.RELEASE, 0, self.shm.take_released()))
        if chunks:
            _wire.write_all(self.out_fd, chunks)

    def fail(self, rid: int, exc: BaseException) -> None:
        """Answer request ``rid`` with ``exc`` (a missing Twisted said in one line)."""
        line = needs_twisted(self.settings.name if self.settings is not None else "?", exc)
        if line is not None:
            exc = FailedPrecondition(line)
        elif not isinstance(exc, (V2DError, NotImplementedError)):
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        self.send(Op.ERROR.value, rid, _errors.describe(exc))

    # -- dispatch -------------------------------------------------------------

    def received(self, kind: str, message: Any) -> None:
        """A message from the server (``FrameDecoder``'s callback)."""
        if kind == "pickle":
            self.handle(message)
        else:  # a message that cannot be unpickled, or JSON after the handshake
            raise _wire.WireError(f"unexpected {kind} message from the server: {message!r}")

    def handle(self, message: Any) -> None:
        op, rid, body = message
        if op == Op.LOAD.value:
            self.context = ModelContext(body.name, body.version or "", self.metrics)
        with model_context(self.context):  # tasks started here keep it
            dispatch(self._table, message, self._unknown)

    @property
    def _table(self) -> Dict[str, Handler]:
        if self._handlers is None:
            self._handlers = table(
                {
                    Op.PREDICT: lambda rid, body: self._predict_now(rid, body, output_writer(body)),
                    Op.INFER_ENCODED: lambda rid, body: self._infer_encoded(rid, *body),
                    Op.CUSTOM: lambda rid, body: self._custom(rid, *body),
                    Op.CANCEL: self._cancel,
                    Op.STREAM_OPEN: self._stream_open,
                    Op.STREAM_ITEM: self._stream_put,
                    Op.STREAM_CLOSE: lambda rid, _: self._stream_put(rid, _END),
                    Op.STREAM_CANCEL: self._cancel,
                    Op.RELEASE: self._release,
                    Op.LOAD: lambda rid, settings: self._spawn(rid, self._load(rid, settings)),
                    Op.UNLOAD: lambda rid, _: self._spawn(rid, self._unload(rid)),
                }
            )
        return self._handlers

    def _unknown(self, op: str, rid: int) -> None:
        self.fail(rid, ValueError(f"unknown operation {op!r}"))

    def _release(self, rid: int, paths: Any) -> None:
        if self.shm is not None:
            self.shm.release(paths)

    def _cancel(self, rid: int, body: Any = None) -> None:
        """The server gave up on request ``rid``: cancel its task; nothing is answered."""
        task = self.tasks.get(rid)
        if task is not None:
            task.cancel()

    def _stream_open(self, rid: int, body: Any = None) -> None:
        self.queues[rid] = asyncio.Queue()
        self._spawn(rid, self._stream(rid))

    def _stream_put(self, rid: int, item: Any) -> None:
        queue = self.queues.get(rid)
        if queue is not None:
            queue.put_nowait(item)

    def _spawn(self, rid: int, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self.tasks[rid] = task
        task.add_done_callback(lambda _: self.tasks.pop(rid, None))

    def _resolve(self, value: Any) -> Any:
        """An awaitable of ``value``: itself, a Deferred as a Future on this loop, or done."""
        return _awaitable(value, self.loop)

    async def _load(self, rid: int, settings: Any) -> None:
        self.settings = settings
        try:
            runtime, namespace = build_runtime(settings)
            try:
                result = await self._resolve(runtime.load())
            except BaseException:
                if namespace is not None:
                    namespace.forget()
                raise
            self.runtime, self.namespace = runtime, namespace
            info: LoadedInfo = {
                "ready": mark_loaded(runtime, result),
                "metadata": runtime.metadata(),
                "streaming": is_streaming(runtime),
                "wires": sorted(_encodings()),
                "handlers": handler_routes(runtime),
            }
            self.send(Op.LOADED.value, rid, info)
        except Exception as exc:
            self.fail(rid, exc)

    async def _unload(self, rid: int) -> None:
        try:
            if self.runtime is not None:
                self.runtime.ready = False
                await self._resolve(self.runtime.unload())
        except Exception as exc:
            self.fail(rid, exc)
        else:
            self.send(Op.UNLOADED.value, rid)
        finally:
            if self.namespace is not None:
                self.namespace.forget()
            self.runtime = self.namespace = None
            gc.collect()

    def _custom(self, rid: int, attribute: str, has_body: bool, body: Any, query: Dict[str, Any]) -> None:
        """Call a custom handler of the runtime; a plain result is answered at once."""
        try:
            if self.runtime is None:
                raise Unavailable("the worker has no model loaded")
            result = call_handler(self.runtime, attribute, has_body, body, query)
        except Exception as exc:
            self.fail(rid, exc)
            return
        if inspect.isawaitable(result):
            self._spawn(rid, self._predict(rid, self._resolve(result)))
        else:
            self._answer(rid, result, None)

    def _infer_encoded(self, rid: int, wire: str, data: Any, headers: Any) -> None:
        """A request still in its wire encoding: decoded, served, completed and encoded here."""
        try:
            codec = _encodings()[wire]
            payload, raw = codec.decode_request(data, headers)
        except Exception as exc:
            self.fail(rid, exc)
            return
        settings = self.settings

        def finish(result: Any) -> Any:
            response = complete_response(result, settings.name, settings.version, payload.id)
            body, extra = codec.encode_response(response, raw)
            if self.shm is not None and len(body) >= self.shm.threshold:
                body = pickle.PickleBuffer(body)  # out of band, through shared memory
            return body, extra

        self._predict_now(rid, payload, finish)

    def _predict_now(self, rid: int, payload: Any, finish: Optional[Callable[[Any], Any]] = None) -> None:
        """
        Call ``predict``; a plain result is answered at once, an awaitable becomes a
        task. ``finish`` turns the result into the reply (by default, the result).
        """
        if self._last_cost > SLOW_PREDICT and self._out:
            self.flush()  # the replies already made need not wait for this one
        started = time.perf_counter()
        try:
            if self.runtime is None:
                raise Unavailable("the worker has no model loaded")
            result = self.runtime.predict(payload)
        except Exception as exc:
            self.fail(rid, exc)
            return
        finally:
            self._last_cost = time.perf_counter() - started
        if inspect.isawaitable(result):
            self._spawn(rid, self._predict(rid, self._resolve(result), finish))
        else:
            self._answer(rid, result, finish)

    async def _predict(self, rid: int, pending: Any, finish: Optional[Callable[[Any], Any]] = None) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(rid, exc)
        else:
            self._answer(rid, response, finish)

    def _answer(self, rid: int, result: Any, finish: Optional[Callable[[Any], Any]]) -> None:
        if finish is not None:
            try:
                result = finish(result)
            except Exception as exc:
                self.fail(rid, exc)
                return
        self.send(Op.RESULT.value, rid, result)

    async def _requests(self, queue: asyncio.Queue) -> AsyncIterator[Any]:
        while True:
            item = await queue.get()
            if item is _END:
                return
            yield item

    async def _stream(self, rid: int) -> None:
        queue = self.queues[rid]
        try:
            if self.runtime is None:
                raise Unavailable("the worker has no model loaded")
            async for response in self.runtime.predict_stream(self._requests(queue)):
                self.send(Op.STREAM_ITEM.value, rid, response)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.fail(rid, exc)
        else:
            self.send(Op.STREAM_END.value, rid)
        finally:
            self.queues.pop(rid, None)


_ENCODINGS: Optional[Dict[str, Any]] = None


def _encodings() -> Dict[str, Any]:
    """
    The wire encodings this child can decode and encode itself, by name: ``grpc``
    when its interpreter has a protobuf that reads v2d's descriptors.
    """
    global _ENCODINGS
    if _ENCODINGS is None:
        _ENCODINGS = {}
        try:
            from v2d.grpc import _encoded
        except Exception:  # no protobuf here, or one too old: the server decodes
            pass
        else:
            _ENCODINGS[_encoded.WIRE] = _encoded
    return _ENCODINGS


def _finish(done: asyncio.Future) -> None:
    if not done.done():
        done.set_result(None)


def _serve_input(
    in_fd: int, loop: asyncio.AbstractEventLoop, server: ChildServer, done: asyncio.Future
) -> None:
    """Read and dispatch messages whenever ``in_fd`` is readable, until it closes."""
    decoder = _wire.FrameDecoder(server.received, server.shm)

    def ended() -> None:
        loop.remove_reader(in_fd)
        _finish(done)
        timer = threading.Timer(EXIT_GRACE, os._exit, (0,))
        timer.daemon = True
        timer.start()

    def readable() -> None:
        try:
            data = os.read(in_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            ended()
            return
        try:
            decoder.feed(data)
        except BaseException:
            traceback.print_exc()
            ended()
            return
        server.flush()

    loop.add_reader(in_fd, readable)


def _die_with_parent() -> bool:
    """Ask Linux to KILL this process when its parent dies; whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except Exception:  # no ctypes in this build, no prctl in this libc
        return False


def follow_parent(poll: float = PARENT_POLL) -> None:
    """
    End this child when the server dies, even while a runtime's code blocks: by the
    kernel (Linux) and by a watchdog thread that sees the parent change.
    """
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the server died before the request took
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="v2d-parent-watchdog", daemon=True).start()


def main(in_fd: int, out_fd: int) -> None:
    """The child's whole life: handshake, then serve until the input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # so is a hangup (the server reloads)
    follow_parent()
    stream = os.fdopen(in_fd, "rb", buffering=0, closefd=False)
    hello = _handshake.describe(_wire.WIRE_VERSION, __version__)
    _wire.write_all(out_fd, [_wire.encode_json(hello)])
    answer = _wire.read_message(stream)
    if answer is None or answer[0] != "json" or not answer[1].get("ok"):
        sys.exit(2)
    prefix = answer[1].get("shm_prefix")
    threshold = int(answer[1].get("shm_threshold") or 0)
    keep = int(answer[1].get("shm_keep") or _wire.DEFAULT_KEEP)
    shm = _wire.SharedMemory.default(prefix, threshold, keep) if prefix and threshold else None

    import v2d.runtime  # noqa: F401 - the runtime's base class and codecs, before any model

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_twisted(loop)
    server = ChildServer(loop, out_fd, shm)
    done = loop.create_future()
    _serve_input(in_fd, loop, server, done)
    try:
        loop.run_until_complete(done)
        pending = [t for t in server.tasks.values() if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        if server.runtime is not None:
            try:
                with model_context(server.context):
                    loop.run_until_complete(_awaitable(server.runtime.unload(), loop))
            except Exception:
                traceback.print_exc()
    finally:
        try:
            server.flush()
        except OSError:  # the server is gone
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
