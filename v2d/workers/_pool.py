"""
The server side of worker processes.

``WorkerPool.model_factory(settings, count)`` gives an ``IModelFactory`` whose models
(``WorkerModel``) run in ``count`` child processes of their own, started with
``reactor.spawnProcess`` in the model's environment. Each child (``Worker``) is three
pieces: its process (``v2d.workers._process``: spawn, exit, TERM then KILL, output
re-logged), its messages (``v2d.workers._client`` over ``v2d.workers._wire``, the
vocabulary of ``v2d.workers._messages``) and its restarts (``v2d.workers._restart``);
its state is a ``WorkerState``.

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

import enum
import itertools
import os
import sys
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d._version import __version__
from v2d.aio import as_future, ensure_future
from v2d.custom_metrics import DEFAULT_DESCRIPTION
from v2d.env import Environment, resolve_environment
from v2d.errors import FailedPrecondition, Unavailable
from v2d.interfaces import ICustomHandlers, IEncodedInference, IModel, IModelFactory, IWorkerPool
from v2d.settings import ModelSettings, Settings
from v2d.types import InferenceRequest, MetadataModelResponse
from v2d.workers import _bootstrap, _handshake, _wire
from v2d.workers._client import WireClient
from v2d.workers._code import child_code_zip
from v2d.workers._messages import LoadedInfo, Op
from v2d.workers._process import CHILD_IN, CHILD_OUT, WorkerProcess, describe_exit
from v2d.workers._restart import RestartPolicy
from v2d.workers._wire import WIRE_VERSION

__all__ = [
    "CHILD_IN",
    "CHILD_OUT",
    "Worker",
    "WorkerModel",
    "WorkerModelFactory",
    "WorkerPool",
    "WorkerState",
    "describe_exit",
]

def _child_prefix(shm: _wire.SharedMemory) -> str:
    """The shared-memory file prefix of the child (the parent's ends in -p, the child's in -c)."""
    return shm.prefix[:-2] + "-c"


class WorkerState(enum.Enum):
    """Where a worker is in its life."""

    IDLE = "idle"  # never started
    STARTING = "starting"  # spawned; handshake and load under way
    READY = "ready"  # serving
    STOPPING = "stopping"  # asked to end
    DEAD = "dead"  # ended when it should not have (or never started): restarts if it was serving
    STOPPED = "stopped"  # ended as asked


class Worker:
    """
    One child process serving one model: a ``WorkerProcess`` (the process), a
    ``WireClient`` (its messages) and a ``RestartPolicy`` (started again, after a
    back-off, when it dies while serving).
    """

    log = Logger()

    def __init__(self, pool: "WorkerPool", model: "WorkerModel", index: int) -> None:
        self.pool = pool
        self.model = model
        self.index = index
        self.state = WorkerState.IDLE
        self.process: Optional[WorkerProcess] = None
        self.client: Optional[WireClient] = None
        self.started_at = 0.0
        self.restarts = RestartPolicy(pool.reactor, pool.restart_initial, pool.restart_max, pool.stable_after)
        self.last_exit = ""
        self.peer: Dict[str, Any] = {}
        self._startup: Optional[Deferred] = None
        self.shm: Optional[_wire.SharedMemory] = None

    @property
    def label(self) -> str:
        return f"worker {self.index} of model '{self.model.name}'"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        """Whether its process runs."""
        return self.process is not None and self.process.running

    @property
    def load(self) -> int:
        """Requests and streams in flight (for least-busy dispatch)."""
        return self.client.load if self.client is not None else 0

    # -- starting -------------------------------------------------------------

    def start(self) -> Deferred:
        """Spawn, handshake and load; fires with the child's ``loaded`` info."""
        self.state = WorkerState.STARTING
        self.peer = {}
        d: Deferred = Deferred()
        self._startup = d
        self.shm = self.pool.shared_memory(self)
        python = self.model.python
        args = [python, "-I", "-c", _bootstrap.COMMAND, self.pool.code_zip, str(CHILD_IN), str(CHILD_OUT)]
        process = WorkerProcess(self.pool.reactor, self.model.name, self.index, self._data, self.ended)
        client = WireClient(process.write, self.shm, self._hello, self._metrics, self.protocol_error)
        self.process, self.client = process, client
        try:
            process.spawn(self.pool.reactor, python, args, self.pool.child_environ(self.model.environment))
        except Exception as e:
            self.state = WorkerState.DEAD
            self._startup = self.process = self.client = None
            return fail(Unavailable(f"{self.label} could not be started with {python}: {e}"))
        self.started_at = self.pool.reactor.seconds()
        self.pool.register(self)
        self.log.info("{label} started (pid {pid}, {python})", label=self.label, pid=self.pid, python=python)
        return d

    def _data(self, data: bytes) -> None:
        if self.client is not None:
            self.client.feed(data)

    def _metrics(self, batch: Any) -> None:
        self.pool.record_metrics(self.model, batch)

    def _fail_startup(self, exc: Exception) -> None:
        d, self._startup = self._startup, None
        if d is not None:
            d.errback(Failure(exc))

    def _hello(self, peer: Dict[str, Any]) -> None:
        if self.state is not WorkerState.STARTING or self.peer or self.client is None:
            return
        self.peer = peer
        problem = _handshake.incompatibility(self.pool.identity, peer)
        if problem is not None:
            self.client.send_json({"ok": False, "reason": problem})
            self._fail_startup(FailedPrecondition(f"model '{self.model.name}': {problem}"))
            self.close_input()
            return
        answer: Dict[str, Any] = {"ok": True}
        if self.shm is not None:
            answer.update(
                shm_prefix=_child_prefix(self.shm), shm_threshold=self.shm.threshold, shm_keep=self.shm.keep
            )
        self.client.send_json(answer)
        self.call(Op.LOAD, self.model.settings).addCallbacks(self._loaded, self._load_failed)

    def _loaded(self, info: LoadedInfo) -> None:
        self.state = WorkerState.READY
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

    # -- requests -------------------------------------------------------------------

    def call(self, op: Op, body: Any = None) -> Deferred:
        """Send one request; a Deferred of its reply (cancelling it cancels the request)."""
        if self.client is None:
            return fail(Unavailable(f"{self.label} is not running"))
        return self.client.call(op, body)

    def settled(self) -> Deferred:
        """Fires once no request or stream is in flight at this worker (or it ended)."""
        return self.client.settled() if self.client is not None and self.running else succeed(None)

    def protocol_error(self, reason: str) -> None:
        self.log.error("{label}: broken wire ({reason}); stopping it", label=self.label, reason=reason)
        self.kill()

    # -- ending ---------------------------------------------------------------------

    def ended(self, reason: Failure) -> None:
        """Its process exited (``WorkerProcess`` calls this)."""
        how = describe_exit(reason)
        self.last_exit = how
        lived = self.pool.reactor.seconds() - self.started_at
        was = self.state
        self.pool.unregister(self)
        if self.shm is not None:
            self.shm.close()
            self.shm.sweep()
            _wire.SharedMemory(self.shm.directory, _child_prefix(self.shm), 0).sweep()
        if self.client is not None:
            self.client.fail_all(Unavailable(f"{self.label} (pid {self.pid}) {how}"))
        if self._startup is not None:
            tail = self.process.stderr_tail if self.process is not None else ()
            detail = "; its last output: " + " | ".join(list(tail)[-5:]) if tail else ""
            message = f"{self.label} {how} while starting ({self.model.python}){detail}"
            self._fail_startup(Unavailable(message))
        if was is WorkerState.READY and not self.model.unloading and not self.pool.stopping:
            self.state = WorkerState.DEAD
            self.log.error("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)
            self._schedule_restart(lived)
        else:
            stopped = was in (WorkerState.STOPPING, WorkerState.READY) or self.model.unloading
            self.state = WorkerState.STOPPED if stopped else WorkerState.DEAD
            self.log.info("{label} (pid {pid}) {how}", label=self.label, pid=self.pid, how=how)

    def _schedule_restart(self, lived: float) -> None:
        delay = self.restarts.schedule(lived, self._restart)
        self.log.info("{label}: restarting in {delay}s", label=self.label, delay=delay)
        self.pool.restarting(self)

    def _restart(self) -> None:
        self.pool.restarted(self)
        if self.model.unloading or self.pool.stopping:
            return

        def failed(failure: Failure) -> None:
            self.log.error(
                "{label} failed to start again: {reason}", label=self.label, reason=str(failure.value)
            )
            if not (self.model.unloading or self.pool.stopping):
                self.state = WorkerState.DEAD
                self._schedule_restart(0.0)

        self.start().addCallbacks(
            lambda _: self.log.info("{label} is serving again", label=self.label), failed
        )

    def cancel_restart(self) -> None:
        self.restarts.cancel()
        self.pool.restarted(self)

    def exited(self) -> Deferred:
        """Fires once the child has exited (at once if there is none)."""
        return self.process.exited() if self.process is not None else succeed(None)

    def close_input(self) -> None:
        if self.process is not None:
            self.process.close_input()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def stop(self) -> Deferred:
        """Close its input (it exits), TERM after a while, KILL after another; fires when exited."""
        self.cancel_restart()
        if not self.running:
            if self.state is not WorkerState.DEAD:
                self.state = WorkerState.STOPPED
            return succeed(None)
        assert self.process is not None
        self.state = WorkerState.STOPPING
        return self.process.stop(self.pool.term_after, self.pool.kill_after)

    def terminate(self) -> None:
        """TERM now (KILL ``kill_after`` s later), unless that is under way already."""
        if self.process is not None:
            self.process.terminate(self.pool.kill_after)


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

    def worker_loaded(self, worker: Worker, info: LoadedInfo) -> None:
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
            if worker.state is not WorkerState.READY:
                return None
            d = worker.call(Op.UNLOAD)
            d.addErrback(lambda f: self.log.warn("{label}: unload failed: {reason}", label=worker.label,
                                                 reason=str(f.value)))
            return d

        def one(worker: Worker) -> Deferred:
            worker.cancel_restart()
            if worker.state is not WorkerState.READY:
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
        if any(w.state is WorkerState.READY for w in self.workers):
            return None
        reasons = "; ".join(
            f"worker {w.index} {w.last_exit}" + (", restarting" if w.restarts.pending else "")
            for w in self.workers
            if w.last_exit
        )
        detail = f" ({reasons})" if reasons else ""
        return f"model '{self.name}' has no worker ready{detail}"

    def _pick(self) -> Worker:
        ready = [w for w in self.workers if w.state is WorkerState.READY]
        if not ready:
            raise Unavailable(self.unavailable or f"model '{self.name}' has no worker ready")
        turn = next(self._turn)
        n = len(ready)
        return min((ready[(turn + i) % n] for i in range(n)), key=lambda w: w.load)

    def predict(self, payload: InferenceRequest) -> Deferred:
        return self._call(Op.PREDICT, payload)

    def infer_encoded(self, wire: str, data: bytes, headers: Any) -> Deferred:
        """A request in encoding ``wire``, decoded, served and encoded by a worker."""
        return self._call(Op.INFER_ENCODED, (wire, data, headers))

    def call_custom(self, attribute: str, has_body: bool, body: Any, query: Dict[str, List[str]]) -> Deferred:
        """Call a custom handler of the runtime in the least busy worker."""
        return self._call(Op.CUSTOM, (attribute, has_body, body, query))

    def _call(self, op: Op, body: Any) -> Deferred:
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
        client = worker.client
        if client is None:
            raise Unavailable(f"{worker.label} is not running")
        rid, queue = client.open_stream()

        async def pump() -> None:
            try:
                async for payload in payloads:
                    client.stream_send(rid, Op.STREAM_ITEM, payload)
            except Exception as e:
                queue.put(("error", e))
            else:
                client.stream_send(rid, Op.STREAM_CLOSE)

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
            client.close_stream(rid, cancel=not ended and worker.state is WorkerState.READY)

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
