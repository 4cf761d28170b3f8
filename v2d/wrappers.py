"""
``IModel`` providers that wrap a user's runtime.

``LocalModel`` runs a runtime in this process: whatever its methods return (a plain
value, a Deferred, an asyncio awaitable), the wrapper answers with Deferreds. The
``LocalModelFactory`` imports a model folder's implementation in its own private
namespace and builds it (v2d.runtimes; a subclass of the real ``mlserver.MLModel``
is served through v2d.mlserver_adapter).
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from v2d.aio import call
from v2d.importer import ModelNamespace
from v2d.interfaces import IModel, IModelFactory
from v2d.runtimes import build_runtime, is_streaming
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, MetadataModelResponse

__all__ = ["LocalModel", "LocalModelFactory", "build_runtime"]


@implementer(IModel)
@attrs.define(eq=False)
class LocalModel:
    """A runtime served in this process."""

    runtime: Any
    namespace: Optional[ModelNamespace] = None

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

        return call(self.runtime.load).addCallback(loaded)

    def unload(self) -> Deferred:
        self.runtime.ready = False

        def forget(result: Any) -> Any:
            if self.namespace is not None:
                self.namespace.forget()
                self.namespace = None
            return result

        return call(self.runtime.unload).addBoth(forget)

    def predict(self, payload: InferenceRequest) -> Deferred:
        return call(self.runtime.predict, payload)

    def predict_stream(self, payloads: Any) -> Any:
        return self.runtime.predict_stream(payloads)

    def metadata(self) -> MetadataModelResponse:
        return self.runtime.metadata()


@implementer(IModelFactory)
@attrs.define
class LocalModelFactory:
    """Builds models that run in this process."""

    def create(self, settings: ModelSettings) -> Deferred:
        return call(lambda: LocalModel(*build_runtime(settings)))
