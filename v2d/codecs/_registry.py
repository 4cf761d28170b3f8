"""
The codec registries: content type -> codec, for input codecs and request codecs.

``register_input_codec`` / ``register_request_codec`` work as class decorators.
Look-ups by payload or type hint try the most recently registered codec first, so a
codec a user registers takes precedence over a built-in one for the same Python type.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type, TypeVar, Union

from v2d.codecs._base import InputCodec, RequestCodec

__all__ = [
    "CodecRegistries",
    "CodecRegistry",
    "InputCodecLike",
    "RequestCodecLike",
    "find_input_codec",
    "find_input_codec_by_payload",
    "find_input_codec_by_type_hint",
    "find_request_codec",
    "find_request_codec_by_payload",
    "find_request_codec_by_type_hint",
    "input_codecs",
    "register_input_codec",
    "register_request_codec",
    "request_codecs",
]

InputCodecLike = Union[Type[InputCodec], InputCodec]
RequestCodecLike = Union[Type[RequestCodec], RequestCodec]
_C = TypeVar("_C")


class CodecRegistry:
    """Codecs by content type, in registration order."""

    def __init__(self) -> None:
        self._codecs: Dict[str, Any] = {}

    def register(self, codec: Any, content_type: Optional[str] = None) -> None:
        """Add ``codec`` under ``content_type`` or its ``ContentType`` (replacing any codec of that name)."""
        content_type = content_type or getattr(codec, "ContentType", None)
        if not content_type or not isinstance(content_type, str):
            raise ValueError(f"codec {codec!r} has no ContentType")
        self._codecs.pop(content_type, None)  # re-registering moves it to the end
        self._codecs[content_type] = codec

    def unregister(self, content_type: str) -> None:
        """Remove the codec of ``content_type`` (if any)."""
        self._codecs.pop(content_type, None)

    def by_content_type(self, content_type: str) -> Any:
        """The codec of ``content_type``, or ``None``."""
        return self._codecs.get(content_type)

    def by_payload(self, payload: Any) -> Any:
        """The most recently registered codec that can encode ``payload``, or ``None``."""
        for codec in reversed(list(self._codecs.values())):
            if codec.can_encode(payload):
                return codec
        return None

    def by_type_hint(self, type_hint: Any) -> Any:
        """The most recently registered codec for ``type_hint``, or ``None``."""
        for codec in reversed(list(self._codecs.values())):
            if _matches_type_hint(codec, type_hint):
                return codec
        return None

    def content_types(self) -> Dict[str, Any]:
        """A copy of the content type -> codec mapping."""
        return dict(self._codecs)


def _matches_type_hint(codec: Any, type_hint: Any) -> bool:
    matches = getattr(codec, "matches_type_hint", None)
    if matches is not None:
        return bool(matches(type_hint))
    return getattr(codec, "TypeHint", None) == type_hint  # a duck-typed codec


class CodecRegistries:
    """
    A pair of registries, input codecs and request codecs, with MLServer's registry
    methods (``register_input_codec(content_type, codec)``, ``find_input_codec(...)``...).
    The module-level functions use the process-wide pair.
    """

    def __init__(
        self, input_codecs: Optional[CodecRegistry] = None, request_codecs: Optional[CodecRegistry] = None
    ) -> None:
        self.inputs = input_codecs if input_codecs is not None else CodecRegistry()
        self.requests = request_codecs if request_codecs is not None else CodecRegistry()

    def register_input_codec(self, content_type: str, codec: InputCodecLike) -> None:
        """Add an input codec under ``content_type``."""
        self.inputs.register(codec, content_type)

    def register_request_codec(self, content_type: str, codec: RequestCodecLike) -> None:
        """Add a request codec under ``content_type``."""
        self.requests.register(codec, content_type)

    def find_input_codec(
        self, content_type: Optional[str] = None, payload: Any = None, type_hint: Any = None
    ) -> Optional[InputCodecLike]:
        """The input codec for a content type, else a payload, else a type hint; or ``None``."""
        return _find(self.inputs, content_type, payload, type_hint)

    def find_input_codec_by_payload(self, payload: Any) -> Optional[InputCodecLike]:
        """The input codec that can encode ``payload``, or ``None``."""
        return self.inputs.by_payload(payload)

    def find_input_codec_by_type_hint(self, type_hint: Any) -> Optional[InputCodecLike]:
        """The input codec for ``type_hint``, or ``None``."""
        return self.inputs.by_type_hint(type_hint)

    def find_request_codec(
        self, content_type: Optional[str] = None, payload: Any = None, type_hint: Any = None
    ) -> Optional[RequestCodecLike]:
        """The request codec for a content type, else a payload, else a type hint; or ``None``."""
        return _find(self.requests, content_type, payload, type_hint)

    def find_request_codec_by_payload(self, payload: Any) -> Optional[RequestCodecLike]:
        """The request codec that can encode ``payload``, or ``None``."""
        return self.requests.by_payload(payload)

    def find_request_codec_by_type_hint(self, type_hint: Any) -> Optional[RequestCodecLike]:
        """The request codec for ``type_hint``, or ``None``."""
        return self.requests.by_type_hint(type_hint)


_registries = CodecRegistries()
input_codecs = _registries.inputs
request_codecs = _registries.requests


def register_input_codec(codec: _C) -> _C:
    """Register an input codec under its ``ContentType``; returns it (a decorator)."""
    input_codecs.register(codec)
    return codec


def register_request_codec(codec: _C) -> _C:
    """Register a request codec under its ``ContentType``; returns it (a decorator)."""
    request_codecs.register(codec)
    return codec


def _find(registry: CodecRegistry, content_type: Optional[str], payload: Any, type_hint: Any) -> Any:
    if content_type:
        return registry.by_content_type(content_type)
    if payload is not None:
        return registry.by_payload(payload)
    if type_hint is not None:
        return registry.by_type_hint(type_hint)
    return None


#: The process-wide look-ups (bound methods of the process-wide registries).
find_input_codec = _registries.find_input_codec
find_input_codec_by_payload = _registries.find_input_codec_by_payload
find_input_codec_by_type_hint = _registries.find_input_codec_by_type_hint
find_request_codec = _registries.find_request_codec
find_request_codec_by_payload = _registries.find_request_codec_by_payload
find_request_codec_by_type_hint = _registries.find_request_codec_by_type_hint
