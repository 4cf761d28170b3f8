"""
``IModel`` providers that wrap a user's runtime.

``LocalModel`` runs a runtime in this process: whatever its methods return (a plain
value, a Deferred, an asyncio awaitable), the wrapper answers with Deferreds. The
``LocalModelFactory`` imports a model folder's implementation in its own private
namespace and builds it (v2d.runtimes; a subclass of the real ``mlserver.MLModel``
is served through v2d.mlserver_adapter).
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from v2d.aio import call
from v2d.custom_metrics import ModelContext, model_context
from v2d.handlers._arguments import call_handler
from v2d.handlers.custom import HandlerRoute, handler_routes
from v2d.importer import ModelNamespace
from v2d.interfaces import ICustomHandlers, IModel, IModelFactory
from v2d.runtimes import build_runtime, is_streaming
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, MetadataModelResponse

__all__ = ["LocalModel", "LocalModelFactory", "build_runtime"]


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
    _context: Optional[ModelContext] = None

    @property
    def context(self) -> ModelContext:
        """This model as v2d.custom_metrics' current model."""
        if self._context is None:
            self._context = ModelContext(self.runtime.name, self.runtime.version or "", self.metrics)
        return self._context

    def _call(self, fn: Any, *args: Any) -> Deferred:
        """Call a runtime method as the current model (tasks it starts keep that)."""
        with model_context(self.context):
            return call(fn, *args)

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
        def loaded(result: Any) -> bool:
            ready = result if isinstance(result, bool) else True
            self.runtime.ready = ready
            return ready

        return self._call(self.runtime.load).addCallback(loaded)

    def unload(self) -> Deferred:
        self.runtime.ready = False

        def forget(result: Any) -> Any:
            if self.namespace is not None:
                self.namespace.forget()
                self.namespace = None
            return result

        return self._call(self.runtime.unload).addBoth(forget)

    def predict(self, payload: InferenceRequest) -> Deferred:
        return self._call(self.runtime.predict, payload)

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
        return self._call(call_handler, self.runtime, attribute, has_body, body, query)

    def metadata(self) -> MetadataModelResponse:
        return self.runtime.metadata()


@implementer(IModelFactory)
@attrs.define
class LocalModelFactory:
    """Builds models that run in this process; ``metrics`` records their custom metrics."""

    metrics: Any = None

    def create(self, settings: ModelSettings) -> Deferred:
        def build() -> LocalModel:
            runtime, namespace = build_runtime(settings)
            return LocalModel(runtime, namespace, metrics=self.metrics)

        return call(build)
