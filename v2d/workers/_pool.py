"""
The server side of worker processes.

``WorkerPool.model_factory(settings, count)`` gives an ``IModelFactory`` whose models
(``WorkerModel``, in ``v2d.workers._model``) run in ``count`` child processes of their
own, started with ``reactor.spawnProcess`` in the model's environment. Each child
(``Worker``, in ``v2d.workers._worker``) is three pieces: its process
(``v2d.workers._process``: spawn, exit, TERM then KILL, output re-logged), its messages
(``v2d.workers._client`` over ``v2d.workers._wire``, the vocabulary of
``v2d.workers._messages``) and its restarts (``v2d.workers._restart``); its state is a
``WorkerState``.

Life of a worker: spawn -> handshake (checked, see ``_handshake``) -> load -> serve.
When a serving worker dies, its requests in flight fail at once (``Unavailable``, naming
the exit), and it is started again after a back-off (doubling, capped; reset once a
worker has lived long enough), loading its model again. When its model is unloaded the
worker unloads it and exits, so everything the model took is freed.
``WorkerPool.shutting_down`` (when the server stops, before its models unload) bounds
the rest: ``term_after`` s later every child still running gets TERM, and KILL
``kill_after`` s after that; ``WorkerPool.stop`` closes every child's input and fires
once all have exited.

A model's custom handlers (``@custom_handler``) are listed by its worker after load and
called through it (``custom``); the custom metrics its runtime logs come back in batches
(``metrics``) and are recorded in the server's ``metrics``.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any, Callable, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from v2d._version import __version__
from v2d.custom_metrics import DEFAULT_DESCRIPTION
from v2d.env import Environment
from v2d.interfaces import IWorkerPool
from v2d.settings import ModelSettings, Settings
from v2d.workers import _handshake, _wire
from v2d.workers._code import child_code_zip
from v2d.workers._model import WorkerModel, WorkerModelFactory
from v2d.workers._process import CHILD_IN, CHILD_OUT, describe_exit
from v2d.workers._wire import WIRE_VERSION
from v2d.workers._worker import Worker, WorkerState

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
