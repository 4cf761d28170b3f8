"""``Base64Codec`` ("base64"): a BYTES tensor of base64 text as a list of ``bytes``."""

from __future__ import annotations

import base64
import binascii
from typing import Any, List

from v2d.codecs._base import InputCodec, bytes_items, content_type_parameters, is_list_of
from v2d.codecs._errors import CodecError
from v2d.errors import InferenceError
from v2d.types import RequestInput, ResponseOutput

__all__ = ["Base64Codec"]


def _encode_items(name: str, payload: Any, use_bytes: bool) -> List[Any]:
    if not isinstance(payload, (list, tuple)):
        raise CodecError(
            f"output '{name}': the 'base64' codec encodes a list of bytes, got {type(payload).__name__}"
        )
    out: List[Any] = []
    for item in payload:
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise CodecError(
                f"output '{name}': the 'base64' codec encodes a list of bytes, "
                f"got a {type(item).__name__} item"
            )
        encoded = base64.b64encode(item)
        out.append(encoded if use_bytes else encoded.decode("ascii"))
    return out


def _decode_item(item: Any, name: str) -> bytes:
    if isinstance(item, str):
        try:
            item = item.encode("ascii")
        except UnicodeEncodeError:
            raise InferenceError(f"input '{name}': item is not base64 text") from None
    elif not isinstance(item, (bytes, bytearray, memoryview)):
        raise InferenceError(f"input '{name}': expected base64 text, got {type(item).__name__}")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InferenceError(f"input '{name}': item is not valid base64") from None


def _decode_items(tensor: Any) -> List[bytes]:
    if tensor.datatype != "BYTES":
        raise InferenceError(
            f"input '{tensor.name}': the 'base64' content type needs a BYTES tensor, got {tensor.datatype}"
        )
    return [_decode_item(item, tensor.name) for item in bytes_items(tensor)]


class Base64Codec(InputCodec):
    """A BYTES tensor whose items are base64 text, as a list of the decoded ``bytes``."""

    ContentType = "base64"
    TypeHint = List[bytes]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether ``payload`` is a list of ``bytes``."""
        return is_list_of(payload, bytes)

    @classmethod
    def encode_output(
        cls, name: str, payload: List[bytes], use_bytes: bool = True, **kwargs: Any
    ) -> ResponseOutput:
        """A BYTES output of shape ``[N, 1]`` holding each item base64-encoded."""
        data = _encode_items(name, payload, use_bytes)
        return ResponseOutput(
            name=name,
            shape=[len(data), 1],
            datatype="BYTES",
            data=data,
            parameters=content_type_parameters(cls.ContentType),
        )

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> List[bytes]:
        """The output's items, base64-decoded."""
        return _decode_items(response_output)

    @classmethod
    def encode_input(
        cls, name: str, payload: List[bytes], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        """A BYTES input of shape ``[N, 1]`` holding each item base64-encoded."""
        data = _encode_items(name, payload, use_bytes)
        return RequestInput(
            name=name,
            shape=[len(data), 1],
            datatype="BYTES",
            data=data,
            parameters=content_type_parameters(cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[bytes]:
        """The input's items, base64-decoded (invalid base64 is an ``InferenceError``)."""
        return _decode_items(request_input)
