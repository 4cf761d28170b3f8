"""
The codec interfaces: ``InputCodec`` (one tensor) and ``RequestCodec`` (a whole
request or response), plus the helpers the built-in codecs share.

Codecs are classes used through their classmethods (as in MLServer); an instance works
as well, since every method is a classmethod.
"""

from __future__ import annotations

import logging
import types
import typing
from typing import Any, ClassVar, List, Optional, Type

from v2d.codecs._errors import CodecError, CodecInputError
from v2d.errors import InferenceError
from v2d.types import (
    DECODED_PARAMETER,
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
    "encoded_tensor",
    "get_decoded",
    "has_decoded",
    "hint_key",
    "is_list_of",
    "save_decoded",
]

_log = logging.getLogger("v2d.codecs")

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


def has_decoded(obj: Any) -> bool:
    """Whether ``obj`` (a tensor, request or response) holds a decoded payload."""
    params = getattr(obj, "parameters", None)
    return params is not None and DECODED_PARAMETER in vars(params)


def get_decoded(obj: Any) -> Any:
    """The decoded payload ``obj`` holds (None if it holds none)."""
    if has_decoded(obj):
        return vars(obj.parameters)[DECODED_PARAMETER]
    return None


def save_decoded(obj: Any, payload: Any) -> None:
    """Keep ``payload`` as ``obj``'s decoded payload (in its parameters, never sent)."""
    if obj.parameters is None:
        obj.parameters = Parameters()
    setattr(obj.parameters, DECODED_PARAMETER, payload)


def _deprecated(old: str, new: str) -> None:
    _log.warning("DEPRECATED: %s() is deprecated, use %s()", old, new)


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


def encoded_tensor(kind: Any, name: str, encoded: Any, content_type: Optional[str]) -> Any:
    """A ``kind`` (``RequestInput`` or ``ResponseOutput``) from ``(datatype, shape, data)``."""
    datatype, shape, data = encoded
    return kind(
        name=name,
        shape=shape,
        datatype=datatype,
        data=data,
        parameters=content_type_parameters(content_type),
    )


class _Codec:
    """What every codec has: a content type, a type hint, and how it is looked up by them."""

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


class InputCodec(_Codec):
    """
    Converts one tensor (a ``RequestInput`` or ``ResponseOutput``) to and from a Python
    type. ``ContentType`` names it in ``parameters.content_type``; ``TypeHint`` is the
    Python type ``decode_args`` maps to it.
    """

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
        _deprecated(f"{cls.__name__}.encode", "encode_output")
        return cls.encode_output(name, payload)

    @classmethod
    def decode(cls, request_input: RequestInput) -> Any:
        """Deprecated name of ``decode_input``."""
        _deprecated(f"{cls.__name__}.decode", "decode_input")
        return cls.decode_input(request_input)


class BytesItemCodec(InputCodec):
    """
    A codec of BYTES tensors whose items each carry one value (text, base64, ISO
    date-times). Subclasses say how one item is encoded (``encode_item``, returning its
    text or None when it cannot) and decoded (``decode_item``); tensors are ``[N, 1]``.
    """

    ItemType: ClassVar[Any] = object
    ItemName: ClassVar[str] = "value"

    @classmethod
    def encode_item(cls, item: Any) -> Optional[str]:
        """One value as text, or None if this codec cannot encode it."""
        raise NotImplementedError

    @classmethod
    def decode_item(cls, item: Any, name: str) -> Any:
        """One BYTES item (``bytes`` or ``str``) as the value; InferenceError if it is not one."""
        raise NotImplementedError

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether ``payload`` is a list of the codec's values."""
        return is_list_of(payload, cls.ItemType)

    @classmethod
    def _encode_items(cls, name: str, payload: Any, use_bytes: bool) -> List[Any]:
        what = f"output '{name}': the '{cls.ContentType}' codec encodes a list of {cls.ItemName}"
        if not isinstance(payload, (list, tuple)):
            raise CodecError(f"{what}, got {type(payload).__name__}")
        out: List[Any] = []
        for item in payload:
            text = cls.encode_item(item)
            if text is None:
                raise CodecError(f"{what}, got a {type(item).__name__} item")
            out.append(text.encode("utf-8") if use_bytes else text)
        return out

    @classmethod
    def _decode_items(cls, tensor: Any) -> List[Any]:
        if tensor.datatype != "BYTES":
            raise InferenceError(
                f"input '{tensor.name}': the '{cls.ContentType}' content type needs a BYTES tensor, "
                f"got {tensor.datatype}"
            )
        return [cls.decode_item(item, tensor.name) for item in bytes_items(tensor)]

    @classmethod
    def encode_output(cls, name: str, payload: Any, use_bytes: bool = True, **kwargs: Any) -> ResponseOutput:
        """A BYTES output of shape ``[N, 1]`` (items as ``str`` if ``use_bytes`` is false)."""
        data = cls._encode_items(name, payload, use_bytes)
        return encoded_tensor(ResponseOutput, name, ("BYTES", [len(data), 1], data), cls.ContentType)

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> List[Any]:
        """The output's items, decoded."""
        return cls._decode_items(response_output)

    @classmethod
    def encode_input(cls, name: str, payload: Any, use_bytes: bool = True, **kwargs: Any) -> RequestInput:
        """A BYTES input of shape ``[N, 1]`` (items as ``str`` if ``use_bytes`` is false)."""
        data = cls._encode_items(name, payload, use_bytes)
        return encoded_tensor(RequestInput, name, ("BYTES", [len(data), 1], data), cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[Any]:
        """The input's items, decoded (a malformed item is an ``InferenceError`` naming the input)."""
        return cls._decode_items(request_input)


class RequestCodec(_Codec):
    """
    Converts a whole request (response) to and from a Python type spanning several
    tensors, such as a DataFrame with one input per column.
    """

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
        _deprecated(f"{cls.__name__}.encode", "encode_response")
        return cls.encode_response(model_name, payload, model_version)

    @classmethod
    def decode(cls, request: InferenceRequest) -> Any:
        """Deprecated name of ``decode_request``."""
        _deprecated(f"{cls.__name__}.decode", "decode_request")
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
    def matches_type_hint(cls, type_hint: Any) -> bool:
        """The input codec's type hint (``List[str]`` for the ``str`` request codec)."""
        return cls.InputCodec is not None and cls.InputCodec.matches_type_hint(type_hint)

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        """A response with the one output ``output-1`` (its content type in its parameters)."""
        output = cls._input_codec().encode_output(f"{DEFAULT_OUTPUT_PREFIX}1", payload, **kwargs)
        return InferenceResponse(
            model_name=model_name,
            model_version=model_version,
            parameters=content_type_parameters(cls.ContentType),
            outputs=[output],
        )

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        """The one output of ``response``, decoded (its decoded payload if it holds one)."""
        return cls._decode_one(response.outputs, "output")

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        """A request with the one input ``input-1`` (its content type in its parameters)."""
        request_input = cls._input_codec().encode_input(f"{DEFAULT_INPUT_PREFIX}1", payload, **kwargs)
        return InferenceRequest(parameters=content_type_parameters(cls.ContentType), inputs=[request_input])

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        """The one input of ``request``, decoded (its decoded payload if it holds one)."""
        return cls._decode_one(request.inputs, "input")

    @classmethod
    def _decode_one(cls, tensors: List[Any], kind: str) -> Any:
        """The one ``kind`` tensor of ``tensors``, decoded once (the payload is kept on it)."""
        if len(tensors) != 1:
            raise CodecInputError(
                f"the '{cls.ContentType}' request codec takes exactly one {kind} tensor, got {len(tensors)}"
            )
        tensor = tensors[0]
        if not has_decoded(tensor):
            codec = cls._input_codec()
            decode = codec.decode_input if kind == "input" else codec.decode_output
            save_decoded(tensor, decode(tensor))
        return get_decoded(tensor)
