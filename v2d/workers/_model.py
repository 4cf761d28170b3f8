"""
``WorkerModel``: the ``IModel`` provider of a model served by worker processes, and
``WorkerModelFactory``, which makes them; requests go to the least busy ready
``Worker``, and cancelling one's Deferred cancels it in the child.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d.aio import as_future, ensure_future
from v2d.env import Environment, resolve_environment
from v2d.errors import Unavailable
from v2d.interfaces import ICustomHandlers, IEncodedInference, IModel, IModelFactory
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, MetadataModelResponse
from v2d.workers._messages import LoadedInfo, Op
from v2d.workers._worker import Worker, WorkerState

if TYPE_CHECKING:
    from v2d.workers._pool import WorkerPool

__all__ = ["WorkerModel", "WorkerModelFactory"]


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
            d.addErrback(
                lambda f: self.log.warn(
                    "{label}: unload failed: {reason}", label=worker.label, reason=str(f.value)
                )
            )
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
