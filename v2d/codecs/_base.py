"""
The codec interfaces: ``InputCodec`` (one tensor) and ``RequestCodec`` (a whole
request or response), plus the helpers the built-in codecs share.

Codecs are classes used through their classmethods (as in MLServer); an instance works
as well, since every method is a classmethod.
"""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar, List, Optional, Type

from v2d.errors import InferenceError
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
)

__all__ = [
    "DEFAULT_INPUT_PREFIX",
    "DEFAULT_OUTPUT_PREFIX",
    "InputCodec",
    "RequestCodec",
    "SingleInputRequestCodec",
    "bytes_items",
    "content_type_of",
    "content_type_parameters",
    "hint_key",
    "is_list_of",
]

#: Names given to tensors when nothing else names them (MLServer's).
DEFAULT_INPUT_PREFIX = "input-"
DEFAULT_OUTPUT_PREFIX = "output-"

_UnionType = getattr(types, "UnionType", None)  # X | Y on Python 3.10+


def is_list_of(payload: Any, kind: Any) -> bool:
    """Whether ``payload`` is a list whose every item is a ``kind``."""
    if not isinstance(payload, list):
        return False
    return all(isinstance(item, kind) for item in payload)


def hint_key(hint: Any) -> Any:
    """
    A comparable form of a type hint, so that ``list[str]`` and ``List[str]`` (and
    ``tuple[int]`` / ``Tuple[int]``) compare equal.
    """
    origin = typing.get_origin(hint)
    if origin is None:
        return hint
    if origin is typing.Union or (_UnionType is not None and origin is _UnionType):
        return (typing.Union, frozenset(hint_key(a) for a in typing.get_args(hint)))
    return (origin, tuple(hint_key(a) for a in typing.get_args(hint)))


def bytes_items(request_input: Any) -> List[Any]:
    """
    The items of a BYTES tensor as a flat list (each ``bytes`` or ``str``).

    Accepts the transports' flat lists, hand-built nested lists and numpy arrays.
    """
    data = request_input.data
    if data is None:
        return []
    if isinstance(data, (bytes, bytearray, str)):
        return [data]
    if hasattr(data, "tolist") and hasattr(data, "ravel"):
        return list(data.ravel().tolist())
    if isinstance(data, list) and not any(isinstance(item, (list, tuple)) for item in data):
        return data
    out: List[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, (list, tuple)):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def content_type_of(parameters: Any) -> Optional[str]:
    """The content type of a parameters object (or of a plain dict, in hand-built requests)."""
    if parameters is None:
        return None
    if isinstance(parameters, dict):
        return parameters.get("content_type") or None
    return getattr(parameters, "content_type", None) or None


def content_type_parameters(content_type: Optional[str]) -> Optional[Parameters]:
    """``Parameters(content_type=...)`` or ``None`` when there is no content type."""
    return Parameters(content_type=content_type) if content_type else None


class InputCodec:
    """
    Converts one tensor (a ``RequestInput`` or ``ResponseOutput``) to and from a Python
    type. ``ContentType`` names it in ``parameters.content_type``; ``TypeHint`` is the
    Python type ``decode_args`` maps to it.
    """

    ContentType: ClassVar[str] = ""
    TypeHint: ClassVar[Any] = type(None)

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether this codec can encode ``payload``."""
        return False

    @classmethod
    def matches_type_hint(cls, type_hint: Any) -> bool:
        """Whether a parameter or return annotated ``type_hint`` uses this codec."""
        if cls.TypeHint is type(None):
            return False
        return hint_key(cls.TypeHint) == hint_key(type_hint)

    @classmethod
    def encode_output(cls, name: str, payload: Any, **kwargs: Any) -> ResponseOutput:
        """Encode ``payload`` as a response output called ``name``."""
        raise NotImplementedError(f"{cls.__name__} does not encode outputs")

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> Any:
        """Decode a response output to the Python type."""
        raise NotImplementedError(f"{cls.__name__} does not decode outputs")

    @classmethod
    def encode_input(cls, name: str, payload: Any, **kwargs: Any) -> RequestInput:
        """Encode ``payload`` as a request input called ``name``."""
        raise NotImplementedError(f"{cls.__name__} does not encode inputs")

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> Any:
        """Decode a request input to the Python type."""
        raise NotImplementedError(f"{cls.__name__} does not decode inputs")

    # MLServer's older names.
    @classmethod
    def encode(cls, name: str, payload: Any) -> ResponseOutput:
        """Deprecated name of ``encode_output``."""
        return cls.encode_output(name, payload)

    @classmethod
    def decode(cls, request_input: RequestInput) -> Any:
        """Deprecated name of ``decode_input``."""
        return cls.decode_input(request_input)


class RequestCodec:
    """
    Converts a whole request (response) to and from a Python type spanning several
    tensors, such as a DataFrame with one input per column.
    """

    ContentType: ClassVar[str] = ""
    TypeHint: ClassVar[Any] = type(None)

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether this codec can encode ``payload``."""
        return False

    @classmethod
    def matches_type_hint(cls, type_hint: Any) -> bool:
        """Whether a parameter or return annotated ``type_hint`` uses this codec."""
        if cls.TypeHint is type(None):
            return False
        return hint_key(cls.TypeHint) == hint_key(type_hint)

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        """Encode ``payload`` as a whole response."""
        raise NotImplementedError(f"{cls.__name__} does not encode responses")

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        """Decode a whole response to the Python type."""
        raise NotImplementedError(f"{cls.__name__} does not decode responses")

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        """Encode ``payload`` as a whole request."""
        raise NotImplementedError(f"{cls.__name__} does not encode requests")

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        """Decode a whole request to the Python type."""
        raise NotImplementedError(f"{cls.__name__} does not decode requests")

    # MLServer's older names.
    @classmethod
    def encode(cls, model_name: str, payload: Any, model_version: Optional[str] = None) -> InferenceResponse:
        """Deprecated name of ``encode_response``."""
        return cls.encode_response(model_name, payload, model_version)

    @classmethod
    def decode(cls, request: InferenceRequest) -> Any:
        """Deprecated name of ``decode_request``."""
        return cls.decode_request(request)


_InputCodecClass = InputCodec  # the class, as the attribute below shadows its name


class SingleInputRequestCodec(RequestCodec):
    """
    A request codec for requests (responses) made of a single tensor, decoded with
    ``InputCodec``. Its one output is called ``output-1`` and its one input
    ``input-1``, as in MLServer.
    """

    InputCodec: ClassVar[Optional[Type[_InputCodecClass]]] = None

    @classmethod
    def _input_codec(cls) -> Type[_InputCodecClass]:
        if cls.InputCodec is None:
            raise NotImplementedError(f"{cls.__name__} has no InputCodec")
        return cls.InputCodec

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether the input codec can encode ``payload``."""
        return cls.InputCodec is not None and cls.InputCodec.can_encode(payload)

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        """A response with the one output ``output-1``."""
        output = cls._input_codec().encode_output(f"{DEFAULT_OUTPUT_PREFIX}1", payload, **kwargs)
        return InferenceResponse(model_name=model_name, model_version=model_version, outputs=[output])

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        """The one output of ``response``, decoded."""
        if len(response.outputs) != 1:
            raise InferenceError(
                f"the '{cls.ContentType}' request codec takes exactly one output tensor, "
                f"got {len(response.outputs)}"
            )
        return cls._input_codec().decode_output(response.outputs[0])

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        """A request with the one input ``input-1``."""
        request_input = cls._input_codec().encode_input(f"{DEFAULT_INPUT_PREFIX}1", payload, **kwargs)
        return InferenceRequest(inputs=[request_input])

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        """The one input of ``request``, decoded."""
        if len(request.inputs) != 1:
            raise InferenceError(
                f"the '{cls.ContentType}' request codec takes exactly one input tensor, "
                f"got {len(request.inputs)}"
            )
        return cls._input_codec().decode_input(request.inputs[0])
