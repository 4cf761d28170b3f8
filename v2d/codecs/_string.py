"""
``StringCodec`` ("str"): a BYTES tensor as a list of ``str`` (UTF-8), and its
single-input request codec ``StringRequestCodec``.
"""

from __future__ import annotations

from typing import Any, List, Union

from v2d.codecs._base import (
    InputCodec,
    SingleInputRequestCodec,
    bytes_items,
    content_type_parameters,
    is_list_of,
)
from v2d.codecs._errors import CodecError
from v2d.errors import InferenceError
from v2d.types import RequestInput, ResponseOutput

__all__ = ["StringCodec", "StringRequestCodec", "decode_str", "encode_str"]


def encode_str(item: str) -> bytes:
    """``item`` as UTF-8."""
    return item.encode("utf-8")


def decode_str(item: Union[bytes, str], name: str = "") -> str:
    """A BYTES item as ``str``: ``bytes`` are UTF-8 decoded, ``str`` kept."""
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InferenceError(f"input '{name}': item is not valid UTF-8 ({e.reason})") from None
    raise InferenceError(f"input '{name}': expected text, got {type(item).__name__}")


def _encode_items(name: str, payload: Any, use_bytes: bool) -> List[Any]:
    if not isinstance(payload, (list, tuple)):
        raise CodecError(
            f"output '{name}': the 'str' codec encodes a list of str, got {type(payload).__name__}"
        )
    out: List[Any] = []
    for item in payload:
        if not isinstance(item, str):
            raise CodecError(
                f"output '{name}': the 'str' codec encodes a list of str, got a {type(item).__name__} item"
            )
        out.append(item.encode("utf-8") if use_bytes else item)
    return out


def _decode_items(tensor: Any) -> List[str]:
    if tensor.datatype != "BYTES":
        raise InferenceError(
            f"input '{tensor.name}': the 'str' content type needs a BYTES tensor, got {tensor.datatype}"
        )
    return [decode_str(item, tensor.name) for item in bytes_items(tensor)]


class StringCodec(InputCodec):
    """A BYTES tensor as a list of ``str``; items are UTF-8 encoded on the way out."""

    ContentType = "str"
    TypeHint = List[str]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether ``payload`` is a list of ``str``."""
        return is_list_of(payload, str)

    @classmethod
    def encode_output(
        cls, name: str, payload: List[str], use_bytes: bool = True, **kwargs: Any
    ) -> ResponseOutput:
        """A BYTES output of shape ``[N, 1]`` (items as ``str`` if ``use_bytes`` is false)."""
        data = _encode_items(name, payload, use_bytes)
        return ResponseOutput(
            name=name,
            shape=[len(data), 1],
            datatype="BYTES",
            data=data,
            parameters=content_type_parameters(cls.ContentType),
        )

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> List[str]:
        """The output's items as ``str``."""
        return _decode_items(response_output)

    @classmethod
    def encode_input(
        cls, name: str, payload: List[str], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        """A BYTES input of shape ``[N, 1]`` (items as ``str`` if ``use_bytes`` is false)."""
        data = _encode_items(name, payload, use_bytes)
        return RequestInput(
            name=name,
            shape=[len(data), 1],
            datatype="BYTES",
            data=data,
            parameters=content_type_parameters(cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[str]:
        """The input's items as ``str`` (``bytes`` items are UTF-8 decoded)."""
        return _decode_items(request_input)


class StringRequestCodec(SingleInputRequestCodec):
    """A request (response) of a single BYTES tensor, as a list of ``str``."""

    InputCodec = StringCodec
    ContentType = StringCodec.ContentType
