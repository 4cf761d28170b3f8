"""
``StringCodec`` ("str"): a BYTES tensor as a list of ``str`` (UTF-8), and its
single-input request codec ``StringRequestCodec``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Union

from v2d.codecs._base import BytesItemCodec, SingleInputRequestCodec
from v2d.errors import InferenceError

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


class StringCodec(BytesItemCodec):
    """A BYTES tensor as a list of ``str``; items are UTF-8 encoded on the way out."""

    ContentType = "str"
    TypeHint = List[str]
    ItemType = str
    ItemName = "str"

    @classmethod
    def encode_item(cls, item: Any) -> Optional[str]:
        return item if isinstance(item, str) else None

    @classmethod
    def decode_item(cls, item: Any, name: str) -> str:
        return decode_str(item, name)


class StringRequestCodec(SingleInputRequestCodec):
    """A request (response) of a single BYTES tensor, as a list of ``str``."""

    InputCodec = StringCodec
    ContentType = StringCodec.ContentType
