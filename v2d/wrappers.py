"""
``IModel`` providers that wrap a user's runtime.

``LocalModel`` runs a runtime in this process: whatever its methods return (a plain
value, a Deferred, an asyncio awaitable), the wrapper answers with Deferreds. The
``LocalModelFactory`` imports a model folder's implementation in its own private
namespace and builds it (v2d.runtimes; a subclass of the real ``mlserver.MLModel``
is served through v2d.mlserver_adapter).

A runtime's code runs on the event loop that serves every request: a synchronous
``predict`` that takes two seconds stalls health checks for two seconds. A model
whose settings say ``"run_in_thread": true`` has its synchronous ``load``,
``predict`` and ``unload`` (and custom handlers) run in ``ModelThreads``, the
service's thread pool (``async def`` methods stay on the loop). Whatever blocks the
loop longer than ``blocked_loop_warning`` seconds (a synchronous call, or one step of
an ``async def`` method) is reported in the log, naming the model and the method.
"""

from __future__ import annotations

import inspect
import threading
import time
from functools import partial
from typing import Any, Callable, Dict, Generator, List, Optional

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from v2d.aio import as_deferred, call
from v2d.custom_metrics import ModelContext, model_context
from v2d.handlers._arguments import call_handler
from v2d.handlers.custom import HandlerRoute, handler_routes
from v2d.importer import ModelNamespace
from v2d.interfaces import ICustomHandlers, IModel, IModelFactory
from v2d.runtimes import build_runtime, is_streaming, mark_loaded
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, InferenceResponse, MetadataModelResponse

__all__ = ["LocalModel", "LocalModelFactory", "LoopWatch", "ModelThreads", "build_runtime"]


def _daemon_thread(**kwargs: Any) -> threading.Thread:
    return threading.Thread(daemon=True, **kwargs)


@attrs.define(eq=False)
class ModelThreads:
    """
    The thread pool for models with ``run_in_thread``: started on first use, stopped
    by the service. Its threads are daemon threads, so a ``predict`` that never
    returns cannot keep the process alive after shutdown.
    """

    reactor: Any
    size: int = 10
    _pool: Optional[ThreadPool] = None
    log = Logger()

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Call ``fn(*args)`` in a thread of the pool; a Deferred of its result."""
        if self._pool is None:
            self._pool = ThreadPool(0, self.size, name="v2d-models")
            self._pool.threadFactory = _daemon_thread  # type: ignore[assignment]
            self._pool.start()
        return deferToThreadPool(self.reactor, self._pool, fn, *args)

    def stop(self) -> None:
        """Stop the pool; threads still inside a model's call are left to end with the process."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        busy = len(pool.working)
        if busy:
            self.log.warn("{busy} model call(s) still running in threads at shutdown; not waiting", busy=busy)
            return
        pool.stop()


@attrs.define(eq=False)
class LoopWatch:
    """Reports (once per call) a model's call that held the event loop longer than ``threshold`` s."""

    threshold: float = 1.0
    clock: Callable[[], float] = time.monotonic
    log = Logger()

    def check(self, model: str, method: str, started: float) -> None:
        held = self.clock() - started
        if self.threshold > 0 and held > self.threshold:
            self.log.warn(
                "model {model}: {method} blocked the event loop for {seconds:.2f} s (no request, health "
                'check or other model was served meanwhile); make it async, or set "run_in_thread": '
                "true in its model-settings.json",
                model=model,
                method=method,
                seconds=held,
            )

    def call(self, model: str, method: str, fn: Callable[..., Any], *args: Any) -> Deferred:
        """``call(fn, *args)``, each stretch of its work on the loop timed."""
        started = self.clock()
        try:
            result = fn(*args)
        except BaseException:
            self.check(model, method, started)
            return fail()
        self.check(model, method, started)
        if type(result) is InferenceResponse:  # the usual answer: asked first (Deferred is an ABC)
            return succeed(result)
        if isinstance(result, Deferred):
            return result
        if inspect.isawaitable(result):
            return as_deferred(_Timed(result, lambda began: self.check(model, method, began), self.clock))
        return succeed(result)


class _Timed:
    """An awaitable whose every step (from one suspension to the next) is timed."""

    def __init__(self, awaitable: Any, report: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.awaitable = awaitable
        self.report = report
        self.clock = clock

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self.awaitable.__await__()
        send: Any = None
        error: Optional[BaseException] = None
        while True:
            began = self.clock()
            try:
                yielded = steps.throw(error) if error is not None else steps.send(send)
            except StopIteration as stop:
                self.report(began)
                return stop.value
            except BaseException:
                self.report(began)
                raise
            self.report(began)
            try:
                send, error = (yield yielded), None
            except BaseException as e:  # thrown in by the loop (cancellation)
                send, error = None, e


@implementer(IModel, ICustomHandlers)
@attrs.define(eq=False)
class LocalModel:
    """
    A runtime served in this process. Its code runs as the current model of
    v2d.custom_metrics, whose ``log`` records into ``metrics`` (a sink).
    """

    runtime: Any
    namespace: Optional[ModelNamespace] = None
    metrics: Any = None
    threads: Optional[ModelThreads] = None
    watch: Optional[LoopWatch] = None
    _context: Optional[ModelContext] = None

    @property
    def context(self) -> ModelContext:
        """This model as v2d.custom_metrics' current model."""
        if self._context is None:
            self._context = ModelContext(self.runtime.name, self.runtime.version or "", self.metrics)
        return self._context

    @property
    def in_thread(self) -> bool:
        """Whether synchronous methods run in the service's threads (``run_in_thread``)."""
        return self.threads is not None and bool(getattr(self.runtime.settings, "run_in_thread", False))

    def _call(self, method: str, fn: Any, *args: Any) -> Deferred:
        """Call a runtime method as the current model (tasks it starts keep that)."""
        context = self.context
        if self.in_thread and not inspect.iscoroutinefunction(fn):
            assert self.threads is not None

            def in_thread() -> Any:
                with model_context(context):
                    return fn(*args)

            return self.threads.run(in_thread).addCallback(as_deferred)
        with model_context(context):
            if self.watch is None:
                return call(fn, *args)
            return self.watch.call(self.runtime.name, method, fn, *args)

    @property
    def name(self) -> str:
        return self.runtime.name

    @property
    def version(self) -> Optional[str]:
        return self.runtime.version

    @property
    def settings(self) -> ModelSettings:
        return self.runtime.settings

    @property
    def ready(self) -> bool:
        return bool(getattr(self.runtime, "ready", False))

    @property
    def streaming(self) -> bool:
        """Whether the runtime overrides ``predict_stream``."""
        return is_streaming(self.runtime)

    def load(self) -> Deferred:
        return self._call("load", self.runtime.load).addCallback(partial(mark_loaded, self.runtime))

    def unload(self) -> Deferred:
        self.runtime.ready = False

        def forget(result: Any) -> Any:
            if self.namespace is not None:
                self.namespace.forget()
                self.namespace = None
            return result

        return self._call("unload", self.runtime.unload).addBoth(forget)

    def predict(self, payload: InferenceRequest) -> Deferred:
        return self._call("predict", self.runtime.predict, payload)

    def predict_stream(self, payloads: Any) -> Any:
        return self._stream(payloads)

    async def _stream(self, payloads: Any) -> Any:
        """The runtime's stream, each step run as the current model."""
        context = self.context
        with model_context(context):
            responses = self.runtime.predict_stream(payloads)
            if inspect.isawaitable(responses):
                responses = await responses
        try:
            while True:
                with model_context(context):
                    try:
                        response = await responses.__anext__()
                    except StopAsyncIteration:
                        return
                yield response
        finally:
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    @property
    def custom_handlers(self) -> List[HandlerRoute]:
        return handler_routes(self.runtime)

    def call_custom(self, attribute: str, has_body: bool, body: Any, query: Dict[str, List[str]]) -> Deferred:
        return self._call(attribute, call_handler, self.runtime, attribute, has_body, body, query)

    def metadata(self) -> MetadataModelResponse:
        return self.runtime.metadata()


@implementer(IModelFactory)
@attrs.define
class LocalModelFactory:
    """
    Builds models that run in this process; ``metrics`` records their custom metrics,
    ``threads`` runs the methods of models with ``run_in_thread``, ``watch`` reports
    calls that block the loop.
    """

    metrics: Any = None
    threads: Optional[ModelThreads] = None
    watch: Optional[LoopWatch] = None

    def create(self, settings: ModelSettings) -> Deferred:
        def build() -> LocalModel:
            runtime, namespace = build_runtime(settings)
            return LocalModel(
                runtime, namespace, metrics=self.metrics, threads=self.threads, watch=self.watch
            )

        return call(build)
