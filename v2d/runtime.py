"""
``MLModel``: the base class users subclass to write a custom runtime.

Names follow MLServer's, so a runtime written for MLServer ports by changing its
imports. ``load``, ``unload`` and ``predict`` may be ``async def`` (asyncio semantics),
return a Deferred, or return a plain value.

Imported by worker children (Python 3.9 and up): standard library, numpy and v2d's
child-safe modules only. zope.interface is used when present (it always is in the
server) so that ``IModel.providedBy(model)`` holds; a child's environment need not
carry it.
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Optional

from v2d.codecs import _model as _codecs
from v2d.settings import ModelSettings
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

__all__ = ["MLModel"]


async def _settled(result: Any) -> Any:
    """The value of what a runtime method returned: a plain value, an awaitable or a Deferred."""
    if hasattr(result, "addCallbacks"):  # a Deferred (this module does not import Twisted)
        import asyncio

        future = asyncio.get_running_loop().create_future()

        def succeed(value: Any) -> None:
            if not future.done():
                future.set_result(value)

        def fail(failure: Any) -> None:
            if not future.done():
                future.set_exception(failure.value)

        result.addCallbacks(succeed, fail)
        return await future
    if inspect.isawaitable(result):
        return await result
    return result


class MLModel:
    """
    A custom inference runtime.

    Subclass it and override ``load`` (optional), ``predict`` and, for streaming,
    ``predict_stream``.
    """

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        self.ready = False

    @property
    def settings(self) -> ModelSettings:
        """The model's settings (model-settings.json)."""
        return self._settings

    @property
    def name(self) -> str:
        """The model's name."""
        return self._settings.name

    @property
    def version(self) -> Optional[str]:
        """The model's version, or None."""
        return self._settings.version

    @property
    def inputs(self):
        """The inputs declared in model-settings.json."""
        return self._settings.inputs

    @property
    def outputs(self):
        """The outputs declared in model-settings.json."""
        return self._settings.outputs

    def load(self) -> Any:
        """Load the model; return True (or nothing) when ready."""
        return True

    def unload(self) -> Any:
        """Free what ``load`` took."""
        return True

    def predict(self, payload: InferenceRequest) -> Any:
        """Serve one request; return an ``InferenceResponse``."""
        raise NotImplementedError(f"model '{self.name}' does not implement predict()")

    async def predict_stream(
        self, payloads: AsyncIterator[InferenceRequest]
    ) -> AsyncIterator[InferenceResponse]:
        """
        Serve a stream of requests with a stream of responses. Unless overridden, each
        request is answered by ``predict`` (as MLServer does).
        """
        async for payload in payloads:
            yield await _settled(self.predict(payload))

    def metadata(self) -> MetadataModelResponse:
        """The model's metadata, from its settings."""
        s = self._settings
        versions = list(s.versions)
        if s.version and s.version not in versions:
            versions.append(s.version)
        return MetadataModelResponse(
            name=s.name,
            platform=s.platform,
            versions=versions,
            inputs=list(s.inputs),
            outputs=list(s.outputs),
            parameters=Parameters(content_type=s.parameters.content_type)
            if s.parameters.content_type
            else None,
        )

    # Codec helpers (as MLServer's): content types come from the payload's
    # parameters, else the model's metadata, else ``default_codec``.

    def decode(self, request_input: RequestInput, default_codec: Any = None) -> Any:
        """Decode one input with its content type's codec."""
        return _codecs.decode_input(self._settings, request_input, default_codec)

    def decode_request(self, request: InferenceRequest, default_codec: Any = None) -> Any:
        """Decode a whole request with its request codec (e.g. to a DataFrame)."""
        return _codecs.decode_request(self._settings, request, default_codec)

    def encode(
        self, payload: Any, request_output: RequestOutput, default_codec: Any = None
    ) -> ResponseOutput:
        """Encode one output named by ``request_output``."""
        return _codecs.encode_output(self._settings, payload, request_output, default_codec)

    def encode_response(self, payload: Any, default_codec: Any = None) -> InferenceResponse:
        """Encode a whole response with a request codec."""
        return _codecs.encode_response(self._settings, payload, default_codec)


try:  # the server always has zope.interface; a worker's environment may not
    from zope.interface import classImplements

    from v2d.interfaces import IModel
except ImportError:  # pragma: no cover - exercised in worker environments
    pass
else:
    classImplements(MLModel, IModel)
