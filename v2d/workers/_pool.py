"""
The server side of worker processes.

``WorkerPool.model_factory(settings, count)`` gives an ``IModelFactory`` whose models
(``WorkerModel``) run in ``count`` child processes of their own, started with
``reactor.spawnProcess`` in the model's environment. Each child (``Worker``) talks the
wire of ``v2d.workers._wire`` over two extra pipes (child fds 3 and 4); its stdout and
stderr are re-logged line by line as structured events.

Life of a worker: spawn -> handshake (checked, see ``_handshake``) -> load -> serve.
When a serving worker dies, its requests in flight fail at once (``Unavailable``,
naming the exit), and it is started again after a back-off (doubling, capped; reset
once a worker has lived long enough), loading its model again. When its model is
unloaded the worker unloads it and exits, so everything the model took is freed.
``WorkerPool.shutting_down`` (when the server stops, before its models unload) bounds
the rest: ``term_after`` s later every child still running gets TERM, and KILL
``kill_after`` s after that; ``WorkerPool.stop`` closes every child's input and fires
once all have exited.

A model's custom handlers (``@custom_handler``) are listed by its worker after load and
called through it (``custom``); the custom metrics its runtime logs come back in
batches (``metrics``) and are recorded in the server's ``metrics``.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import sys
from typing import Any, AsyncIterator, Callable, Deque, Dict, List, Optional, Tuple

import attrs
from twisted.internet import error as twisted_error
from twisted.internet.defer import Deferred, DeferredQueue, fail, gatherResults, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d._twisted import pipe_writer, writer_idle
from v2d._version import __version__
from v2d.aio import as_future, ensure_future
from v2d.custom_metrics import DEFAULT_DESCRIPTION
from v2d.env import Environment, resolve_environment
from v2d.errors import FailedPrecondition, Unavailable
from v2d.interfaces import ICustomHandlers, IEncodedInference, IModel, IModelFactory, IWorkerPool
from v2d.settings import ModelSettings, Settings
from v2d.types import InferenceRequest, MetadataModelResponse
from v2d.workers import _bootstrap, _errors, _handshake, _wire
from v2d.workers._code import child_code_zip
from v2d.workers._wire import WIRE_VERSION

__all__ = ["WorkerModel", "WorkerModelFactory", "WorkerPool", "describe_exit"]

#: Child file descriptors of the wire: the child reads requests from 3, writes replies to 4.
CHILD_IN = 3
CHILD_OUT = 4


def describe_exit(reason: Failure) -> str:
    """How a process ended, in words: 'exited with code 3', 'was killed by signal 9 (SIGKILL)'."""
    value = reason.value
    sig = getattr(value, "signal", None)
    code = getattr(value, "exitCode", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {sig} ({name})"
    if code is None and isinstance(value, twisted_error.ProcessDone):
        code = 0
    return f"exited with code {code}"


def _child_prefix(shm: _wire.SharedMemory) -> str:
    """The shared-memory file prefix of the child (the parent's ends in -p, the child's in -c)."""
    return shm.prefix[:-2] + "-c"


def _write_to_child(transport: Any, chunks: List[Any]) -> None:
    """Send a message's chunks to the child: at once what the pipe takes, queued the rest."""
    done, part = _write_now(transport, chunks)
    for i in range(done, len(chunks)):
        chunk = chunks[i]
        if i == done and part:
            chunk = memoryview(chunk).cast("B")[part:]
        transport.writeToChild(CHILD_IN, chunk if isinstance(chunk, bytes) else bytes(chunk))


def _write_now(transport: Any, chunks: List[Any]) -> Tuple[int, int]:
    """
    Write what the child's input pipe takes right now, when nothing is queued before
    it: (whole chunks written, bytes of the next one written). What is left goes
    through the transport, which writes it when the pipe drains. Writing at once spares
    the transport's writable-then-not cycle, four ``epoll_ctl`` calls and a pass of the
    loop per request, on the server's busiest path.
    """
    writer = pipe_writer(transport, CHILD_IN)
    if writer is None or not writer_idle(writer):
        return (0, 0)
    views = [memoryview(c).cast("B") for c in chunks]
    try:
        n = os.writev(writer.fileno(), views[: _wire.IOV_MAX])
    except OSError:  # full (EAGAIN) or broken: the transport takes it from here
        return (0, 0)
    i = 0
    while i < len(views) and n >= len(views[i]):
        n -= len(views[i])
        i += 1
    return (i, n)


class _WorkerProtocol(ProcessProtocol):
    """Routes a child's pipes: the wire to its ``Worker``, stdout/stderr to the log."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker
        self.decoder = _wire.FrameDecoder(worker.received, worker.shm)
        self.partial: Dict[int, bytes] = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == CHILD_OUT:
            try:
                self.decoder.feed(data)
            except _wire.WireError as e:
                self.worker.protocol_error(str(e))
        elif childFD in self.partial:
            lines = (self.partial[childFD] + data).split(b"\n")
            self.partial[childFD] = lines.pop()
            for line in lines:
                self.worker.output(childFD, line)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self.partial.items():
            if rest:
                self.worker.output(fd, rest)
        self.worker.ended(reason)


class Worker:
    """One child process serving one model; started again when it dies while serving."""

    log = Logger()

    def __init__(self, pool: "WorkerPool", model: "WorkerModel", index: int) -> None:
        self.pool = pool
        self.model = model
        self.index = index
        self.state = "idle"  # idle, starting, ready, stopping, dead, stopped
        self.transport: Any = None
        self.pid: Optional[int] = None
        self.started_at = 0.0
        self.failures = 0
        self.restart_call: Any = None
        self.last_exit = ""
        self.peer: Dict[str, Any] = {}
        self.stderr_tail: Deque[str] = collections.deque(maxlen=20)
        self._ids = itertools.count(1)
        self._pending: Dict[int, Deferred] = {}
        self._streams: Dict[int, DeferredQueue] = {}
        self._startup: Optional[Deferred] = None
        self._exited: List[Deferred] = []
        self._settled: List[Deferred] = []
        self._term_call: Any = None
        self._kill_call: Any = None
        self.shm: Optional[_wire.SharedMemory] = None

    @property
    def label(self) -> str:
        return f"worker {self.index} of model '{self.model.name}'"

    @property
    def load(self) -> int:
        """Requests and streams in flight (for least-busy dispatch)."""
        return len(self._pending) + len(self._streams)

    # -- starting -------------------------------------------------------------

    def start(self) -> Deferred:
        """Spawn, handshake and load; fires with the child's ``loaded`` info."""
        self.state = "starting"
        self.peer = {}
        self.stderr_tail.clear()
        self._startup = Deferred()
        d = self._startup
        self.shm = self.pool.shared_memory(self)
        python = self.model.python
        args = [python, "-I", "-c", _bootstrap.COMMAND, self.pool.code_zip, str(CHILD_IN), str(CHILD_OUT)]
        env = self.pool.child_environ(self.model.environment)
        try:
            self.transport = self.pool.reactor.spawnProcess(
                _WorkerProtocol(self),
                python,
                args,
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", CHILD_IN: "w", CHILD_OUT: "r"},
            )
        except Exception as e:
            self.state = "dead"
            self._startup = None
            return fail(Unavailable(f"{self.label} could not be started with {python}: {e}"))
        self.pid = getattr(self.transport, "pid", None)
        self.started_at = self.pool.reactor.seconds()
        self.pool.register(self)
        try:
            self.transport.closeStdin()
        except Exception:
            pass
        self.log.info("{label} started (pid {pid}, {python})", label=self.label, pid=self.pid, python=python)
        return d

    def _fail_startup(self, exc: Exception) -> None:
        d, self._startup = self._startup, None
        if d is not None:
            d.errback(Failure(exc))

    def _hello(self, peer: Dict[str, Any]) -> None:
        self.peer = peer
        problem = _handshake.incompatibility(self.pool.identity, peer)
        if problem is not None:
            self._write_json({"ok": False, "reason": problem})
            self._fail_startup(FailedPrecondition(f"model '{self.model.name}': {problem}"))
            self.close_input()
            return
        answer: Dict[str, Any] = {"ok": True}
        if self.shm is not None:
            answer.update(
                shm_prefix=_child_prefix(self.shm), shm_threshold=self.shm.threshold, shm_keep=self.shm.keep
            )
        self._write_json(answer)
        self.call("load", self.model.settings).addCallbacks(self._loaded, self._load_failed)

    def _loaded(self, info: Dict[str, Any]) -> None:
        self.state = "ready"
        self.model.worker_loaded(self, info)
        wires = info.get("wires") or []
        if wires:
            self.log.info(
                "{label} loaded; it decodes and encodes small {wires} requests itself",
                label=self.label,
                wires=", ".join(wires),
            )
        else:
            self.log.info(
                "{label} loaded; the server decodes its requests (no usable protobuf in {python})",
                label=self.label,
                python=self.model.python,
            )
        d, self._startup = self._startup, None
        if d is not None:
            d.callback(info)

    def _load_failed(self, failure: Failure) -> None:
        exc = failure.value
        self._fail_startup(exc if isinstance(exc, Exception) else Unavailable(str(exc)))
        self.close_input()

    # -- the wire ----------------------------------------------------------------

    def _write_json(self, obj: Any) -> None:
        self.transport.writeToChild(CHILD_IN, _wire.encode_json(obj))

    def _send(self, op: str, rid: int, body: Any = None) -> None:
        chunks = _wire.encode_message((op, rid, body), self.shm)
        if self.shm is not None and self.shm.released:
            # the child's segments this side is done with go back first, to be reused
            chunks = _wire.encode_message(("release", 0, self.shm.take_released())) + chunks
        _write_to_child(self.transport, chunks)

    def call(self, op: str, body: Any = None) -> Deferred:
        """Send one request; a Deferred for its reply."""
        rid = next(self._ids)
        d: Deferred = Deferred()
        self._pending[rid] = d
        try:
            self._send(op, rid, body)
        except Exception:
            self._pending.pop(rid, None)
            return fail()
        return d

    def open_stream(self) -> tuple:
        rid = next(self._ids)
        queue: DeferredQueue = DeferredQueue()
        self._streams[rid] = queue
        self._send("stream_open", rid)
        return rid, queue

    def stream_send(self, rid: int, op: str, body: Any = None) -> None:
        if rid in self._streams and self.transport is not None:
            self._send(op, rid, body)

    def close_stream(self, rid: int, cancel: bool) -> None:
        if self._streams.pop(rid, None) is not None and cancel and self.state == "ready":
            self._send("stream_cancel", rid)
        self._check_settled()

    def settled(self) -> Deferred:
        """Fires once no request or stream is in flight at this worker (or it ended)."""
        if not self.load or self.transport is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._settled.append(d)
        return d

    def _check_settled(self) -> None:
        if self._settled and (not self.load or self.transport is None):
            waiting, self._settled = self._settled, []
            for d in waiting:
                d.callback(None)

    def received(self, kind: str, obj: Any) -> None:
        if kind == "json":
            if self.state == "starting" and not self.peer:
                self._hello(obj)
            return
        if kind == "error":
            self.protocol_error(f"cannot unpickle a message: {obj}")
            return
        op, rid, body = obj
        if op == "release":
            if self.shm is not None:
                self.shm.release(body)
            return
        if op == "metrics":
            self.pool.record_metrics(self.model, body)
            return
        if op in ("stream_item", "stream_end") or (op == "error" and rid in self._streams):
            queue = self._streams.get(rid)
            if queue is None:
                return
            if op == "stream_item":
                queue.put(("item", body))
            else:
                self._streams.pop(rid, None)
                queue.put(("end", None) if op == "stream_end" else ("error", _errors.rebuild(body)))
                self._check_settled()
            return
        d = self._pending.pop(rid, None)
        if d is None:
            return
        if op == "error":
            d.errback(Failure(_errors.rebuild(body)))
        else:
            d.callback(body)
        if self._settled:
            self._check_settled()

    def protocol_error(self, reason: str) -> None:
        self.log.error("{label}: broken wire ({reason}); stopping it", label=self.label, reason=reason)
        self.kill()

    def output(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if fd == 2:
            self.stderr_tail.append(text)
        self.log.emit(
            LogLevel.warn if fd == 2 else LogLevel.info,
            "[{model} worker {worker}] {line}",
            model=self.model.name,
            worker=self.index,
            pid=self.pid,
            stream="stderr" if fd == 2 else "stdout",
            line=text,
        )

    # -- ending ---------------------------------------------------------------------

    def ended(self, reason: Failure) -> None:
        how = describe_exit(reason)
        self.last_exit = how
        lived = self.pool.reactor.seconds() - self.started_at
        was = self.state
        self.transport = None
        self.pool.unregister(self)
        if self.shm is not None:
            self.shm.close()
            self.shm.sweep()
            _wire.SharedMemory(self.shm.directory, _child_prefix(self.shm), 0).sweep()
        for call in (self._term_call, self._kill_call):
            if call is not None and call.active():
                call.cancel()
        self._term_call = self._kill_call = None
        error = Unavailable(f"{self.label} (pid {self.pid}) {how}")
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(Failure(error))
        streams, self._streams = self._streams, {}
        for queue in streams.values():
            queue.put(("error", error))
        if self._startup is not None:
            detail = ""
            if self.stderr_tail:
                detail = "; its last output: " + " | ".join(list(self.stderr_tail)[-5:])
            message = f"{self.label} {how} while starting ({self.model.python}){detail}"
            self._fail_startup(Unavailable(message))
        if was == "ready" and not self.model.unloading and not self.pool.stopping:
            self.state = "dead"
            self.log.error("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)
            self._schedule_restart(lived)
        else:
            self.state = "stopped" if was in ("stopping", "ready") or self.model.unloading else "dead"
            self.log.info("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)
        waiting, self._exited = self._exited, []
        for d in waiting:
            d.callback(None)
        self._check_settled()

    def _schedule_restart(self, lived: float) -> None:
        if lived >= self.pool.stable_after:
            self.failures = 0
        delay = min(self.pool.restart_max, self.pool.restart_initial * (2 ** self.failures))
        self.failures += 1
        self.log.info("{label}: restarting in {delay}s", label=self.label, delay=delay)
        self.restart_call = self.pool.reactor.callLater(delay, self._restart)
        self.pool.restarting(self)

    def _restart(self) -> None:
        self.restart_call = None
        self.pool.restarted(self)
        if self.model.unloading or self.pool.stopping:
            return

        def failed(failure: Failure) -> None:
            self.log.error(
                "{label} failed to start again: {reason}", label=self.label, reason=str(failure.value)
            )
            if not (self.model.unloading or self.pool.stopping):
                self.state = "dead"
                self._schedule_restart(0.0)

        self.start().addCallbacks(
            lambda _: self.log.info("{label} is serving again", label=self.label), failed
        )

    def cancel_restart(self) -> None:
        if self.restart_call is not None and self.restart_call.active():
            self.restart_call.cancel()
        self.restart_call = None
        self.pool.restarted(self)

    def exited(self) -> Deferred:
        """Fires once the child has exited (at once if there is none)."""
        if self.transport is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._exited.append(d)
        return d

    def close_input(self) -> None:
        if self.transport is not None:
            try:
                self.transport.closeChildFD(CHILD_IN)
            except Exception:
                pass

    def signal(self, name: str) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except twisted_error.ProcessExitedAlready:
                pass

    def kill(self) -> None:
        self.signal("KILL")

    def stop(self) -> Deferred:
        """Close its input (it exits), TERM after a while, KILL after another; fires when exited."""
        self.cancel_restart()
        if self.transport is None:
            if self.state != "dead":
                self.state = "stopped"
            return succeed(None)
        if self.state != "stopping":
            self.state = "stopping"
            self.close_input()
            clock = self.pool.reactor
            self._term_call = clock.callLater(self.pool.term_after, self._escalate)
        return self.exited()

    def terminate(self) -> None:
        """TERM now (KILL ``kill_after`` s later), unless that is under way already."""
        if self.transport is None or self._kill_call is not None:
            return
        if self._term_call is not None and self._term_call.active():
            self._term_call.cancel()
        self._escalate()

    def _escalate(self) -> None:
        self._term_call = None
        self.log.warn("{label} (pid {pid}) did not exit; sending TERM", label=self.label, pid=self.pid)
        self.signal("TERM")
        self._kill_call = self.pool.reactor.callLater(self.pool.kill_after, self._kill)

    def _kill(self) -> None:
        self._kill_call = None
        self.log.warn("{label} (pid {pid}) did not exit; sending KILL", label=self.label, pid=self.pid)
        self.kill()


@implementer(IModel, IEncodedInference, ICustomHandlers)
class WorkerModel:
    """A model served by worker processes; to the dataplane it looks like any other."""

    log = Logger()

    def __init__(
        self, pool: "WorkerPool", settings: ModelSettings, count: int, environment: Optional[Environment]
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.environment = environment
        self.python = environment.python if environment is not None else pool.python
        self.workers = [Worker(pool, self, i) for i in range(count)]
        self.ready = False
        self.streaming = False
        #: Encodings the workers decode and encode themselves (IEncodedInference).
        self.wires: frozenset = frozenset()
        self.unloading = False
        #: The runtime's custom handlers, as its first worker listed them (ICustomHandlers).
        self.custom_handlers: List[Any] = []
        self._metadata: Optional[MetadataModelResponse] = None
        self._turn = itertools.count()

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def version(self) -> Optional[str]:
        return self.settings.version

    def worker_loaded(self, worker: Worker, info: Dict[str, Any]) -> None:
        self._metadata = info.get("metadata") or self._metadata
        self.streaming = bool(info.get("streaming"))
        self.wires = frozenset(info.get("wires") or ())
        self.custom_handlers = list(info.get("handlers") or ())

    def load(self) -> Deferred:
        def loaded(infos: List[Dict[str, Any]]) -> bool:
            self.ready = all(bool(i.get("ready", True)) for i in infos)
            return self.ready

        def failed(failure: Failure) -> Failure:
            first = getattr(failure.value, "subFailure", None)
            return first if isinstance(first, Failure) else failure

        started = gatherResults([w.start() for w in self.workers], consumeErrors=True)
        return started.addCallbacks(loaded, failed)

    def unload(self) -> Deferred:
        """
        Unload the model in every worker, then let each exit (freeing its memory). A
        worker first finishes its requests in flight (a reload's old version serves
        them to the end), for up to ``shutdown_timeout`` s.
        """
        self.ready = False
        self.unloading = True
        clock = self.pool.reactor

        def unload(_: Any, worker: Worker) -> Any:
            if worker.state != "ready":
                return None
            d = worker.call("unload")
            d.addErrback(lambda f: self.log.warn("{label}: unload failed: {reason}", label=worker.label,
                                                 reason=str(f.value)))
            return d

        def one(worker: Worker) -> Deferred:
            worker.cancel_restart()
            if worker.state != "ready":
                return worker.stop()
            settled = worker.settled()
            if not settled.called:
                timeout = self.pool.settings.shutdown_timeout
                settled.addTimeout(timeout, clock, onTimeoutCancel=lambda r, t: None)
            return settled.addCallback(unload, worker).addBoth(lambda _: worker.stop())

        return gatherResults([one(w) for w in self.workers], consumeErrors=True).addCallback(lambda _: None)

    @property
    def unavailable(self) -> Optional[str]:
        """
        Why the model cannot serve although loaded: none of its workers is ready (each
        died and waits for, or is in, its restart); None while one is. The registry's
        readiness follows it.
        """
        if any(w.state == "ready" for w in self.workers):
            return None
        reasons = "; ".join(
            f"worker {w.index} {w.last_exit}" + (", restarting" if w.restart_call is not None else "")
            for w in self.workers
            if w.last_exit
        )
        detail = f" ({reasons})" if reasons else ""
        return f"model '{self.name}' has no worker ready{detail}"

    def _pick(self) -> Worker:
        ready = [w for w in self.workers if w.state == "ready"]
        if not ready:
            raise Unavailable(self.unavailable or f"model '{self.name}' has no worker ready")
        turn = next(self._turn)
        n = len(ready)
        return min((ready[(turn + i) % n] for i in range(n)), key=lambda w: w.load)

    def predict(self, payload: InferenceRequest) -> Deferred:
        return self._call("predict", payload)

    def infer_encoded(self, wire: str, data: bytes, headers: Any) -> Deferred:
        """A request in encoding ``wire``, decoded, served and encoded by a worker."""
        return self._call("infer_encoded", (wire, data, headers))

    def call_custom(self, attribute: str, has_body: bool, body: Any, query: Dict[str, List[str]]) -> Deferred:
        """Call a custom handler of the runtime in the least busy worker."""
        return self._call("custom", (attribute, has_body, body, query))

    def _call(self, op: str, body: Any) -> Deferred:
        """Send one request to the least busy ready worker; fails if none is ready."""
        try:
            worker = self._pick()
        except Unavailable:
            return fail()
        return worker.call(op, body)

    def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[Any]:
        worker = self._pick()
        return self._stream(worker, payloads)

    async def _stream(self, worker: Worker, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[Any]:
        rid, queue = worker.open_stream()

        async def pump() -> None:
            try:
                async for payload in payloads:
                    worker.stream_send(rid, "stream_item", payload)
            except Exception as e:
                queue.put(("error", e))
            else:
                worker.stream_send(rid, "stream_close")

        pumping = ensure_future(pump())
        ended = False
        try:
            while True:
                kind, value = await as_future(queue.get())
                if kind == "item":
                    yield value
                elif kind == "end":
                    ended = True
                    return
                else:
                    ended = True
                    raise value
        finally:
            pumping.cancel()
            worker.close_stream(rid, cancel=not ended)

    def metadata(self) -> MetadataModelResponse:
        if self._metadata is not None:
            return self._metadata
        s = self.settings
        return MetadataModelResponse(name=s.name, platform=s.platform, versions=list(s.versions))


@implementer(IModelFactory)
@attrs.define(eq=False)
class WorkerModelFactory:
    """Builds models served by ``count`` worker processes of a pool."""

    pool: "WorkerPool"
    count: int

    def create(self, settings: ModelSettings) -> Deferred:
        def prepare() -> WorkerModel:
            environment = resolve_environment(settings, self.pool.settings.envs_dir)
            self.pool.ensure_code()
            return WorkerModel(self.pool, settings, self.count, environment)

        run = self.pool.run_blocking
        assert run is not None
        return run(prepare)


def _thread_runner(reactor: Any) -> Callable[[Callable[[], Any]], Deferred]:
    def run(fn: Callable[[], Any]) -> Deferred:
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(reactor, reactor.getThreadPool(), fn)

    return run


@implementer(IWorkerPool)
@attrs.define(eq=False)
class WorkerPool:
    """
    Every worker process of the server. ``run_blocking`` runs file work (unpacking
    environments) off the loop; ``python`` is the interpreter of models without an
    environment of their own.
    """

    reactor: Any
    settings: Settings
    python: str = sys.executable
    run_blocking: Optional[Callable[[Callable[[], Any]], Deferred]] = None
    code_dir: Optional[str] = None
    shm_threshold: int = 1 << 20
    shm_keep: int = _wire.DEFAULT_KEEP
    restart_initial: float = 0.5
    restart_max: float = 30.0
    stable_after: float = 30.0
    #: Seconds a stopping worker has to exit on its own (after its model's unload), before TERM.
    term_after: float = 3.0
    #: Seconds after TERM before KILL. Their sum is the ``KILL_GRACE`` of a server's shutdown.
    kill_after: float = 2.0
    environ: Optional[Dict[str, str]] = None
    #: Where the custom metrics of the children's runtimes are recorded (v2d.metrics.Metrics).
    metrics: Optional[Any] = None
    stopping: bool = False
    code_zip: str = ""
    identity: Dict[str, Any] = attrs.field(factory=lambda: _handshake.describe(WIRE_VERSION, __version__))
    _live: Dict[int, Worker] = attrs.field(factory=dict)
    _restarting: Dict[int, Worker] = attrs.field(factory=dict)
    _serial: Any = attrs.field(factory=lambda: itertools.count(1))
    _swept: bool = False
    _stop_call: Any = None
    _metric_errors: set = attrs.field(factory=set)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.run_blocking is None:
            self.run_blocking = _thread_runner(self.reactor)
        if self.code_dir is None:
            self.code_dir = os.path.join(self.settings.envs_dir, ".v2d-code")

    def ensure_code(self) -> str:
        """Build (once) the zip of v2d that children import."""
        if not self.code_zip:
            assert self.code_dir is not None
            self.code_zip = child_code_zip(self.code_dir)
        return self.code_zip

    def model_factory(self, settings: ModelSettings, count: int = 1) -> WorkerModelFactory:
        """An IModelFactory whose models run in ``count`` worker processes."""
        return WorkerModelFactory(self, max(1, count))

    def child_environ(self, environment: Optional[Environment]) -> Dict[str, str]:
        """The environment variables of a child (the server's, pointed at the model's environment)."""
        env = dict(os.environ if self.environ is None else self.environ)
        for name in [n for n in env if n.startswith("PYTHON")]:
            del env[name]
        env["PYTHONUNBUFFERED"] = "1"
        if environment is not None:
            env["VIRTUAL_ENV"] = environment.path
            paths = [os.path.join(environment.path, "bin"), env.get("PATH", "")]
            env["PATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def shared_memory(self, worker: Worker) -> Optional[_wire.SharedMemory]:
        """Where a worker's big buffers go (``None``: through the pipe)."""
        if not self._swept:
            self._swept = True
            removed = _wire.sweep_orphans()
            if removed:
                self.log.info("removed {n} shared-memory file(s) left by a server that was killed", n=removed)
        prefix = f"v2d-{os.getpid()}-{next(self._serial)}"
        return _wire.SharedMemory.default(prefix + "-p", self.shm_threshold, self.shm_keep)

    def record_metrics(self, model: "WorkerModel", batch: Any) -> None:
        """
        Record a batch of a child's custom metrics for its model: ``(definitions,
        observations)``, lists of (name, description) and (name, value).
        """
        if self.metrics is None:
            return
        definitions, observations = batch
        described = dict(definitions)
        version = model.version or ""
        for name, description in definitions:
            self._record(model, self.metrics.define_custom, name, description)
        for name, value in observations:
            description = described.get(name, DEFAULT_DESCRIPTION)
            self._record(model, self.metrics.observe_custom, name, description, model.name, version, value)

    def _record(self, model: "WorkerModel", fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # e.g. a name a server metric has: said once
            if str(e) not in self._metric_errors:
                self._metric_errors.add(str(e))
                self.log.error(
                    "model {model}: custom metric dropped: {reason}", model=model.name, reason=str(e)
                )

    def register(self, worker: Worker) -> None:
        self._live[id(worker)] = worker

    def unregister(self, worker: Worker) -> None:
        self._live.pop(id(worker), None)

    def restarting(self, worker: Worker) -> None:
        """A dead worker waits for its restart."""
        self._restarting[id(worker)] = worker

    def restarted(self, worker: Worker) -> None:
        """A worker's restart ran or was called off."""
        self._restarting.pop(id(worker), None)

    def live(self) -> List[Worker]:
        """Workers whose process runs."""
        return list(self._live.values())

    def shutting_down(self) -> None:
        """
        The server stops: no more restarts, and whichever worker still runs
        ``term_after`` s from now (its model's unload hung, a ``predict`` blocks it)
        gets TERM, then KILL ``kill_after`` s later. So the pool's end is bounded
        however the unloads go.
        """
        if self.stopping:
            return
        self.stopping = True
        for waiting in list(self._restarting.values()):
            waiting.cancel_restart()
        self._stop_call = self.reactor.callLater(self.term_after, self._terminate_all)

    def _terminate_all(self) -> None:
        self._stop_call = None
        for worker in self.live():
            worker.terminate()

    def stop(self) -> Deferred:
        """End every child (close input, TERM, KILL); fires when all have exited."""
        self.shutting_down()
        workers = self.live()
        if workers:
            self.log.info("stopping {n} worker process(es)", n=len(workers))

        def done(_: Any) -> None:
            if self._stop_call is not None and self._stop_call.active():
                self._stop_call.cancel()
            self._stop_call = None

        return gatherResults([w.stop() for w in workers], consumeErrors=True).addBoth(done)
