"""``Base64Codec`` ("base64"): a BYTES tensor of base64 text as a list of ``bytes``."""

from __future__ import annotations

import base64
import binascii
from typing import Any, List, Optional

from v2d.codecs._base import BytesItemCodec
from v2d.errors import InferenceError

__all__ = ["Base64Codec"]


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


class Base64Codec(BytesItemCodec):
    """A BYTES tensor whose items are base64 text, as a list of the decoded ``bytes``."""

    ContentType = "base64"
    TypeHint = List[bytes]
    ItemType = bytes
    ItemName = "bytes"

    @classmethod
    def encode_item(cls, item: Any) -> Optional[str]:
        if isinstance(item, str):
            item = item.encode("utf-8")  # text is encoded as its UTF-8 bytes, as MLServer does
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            return None
        return base64.b64encode(item).decode("ascii")

    @classmethod
    def decode_item(cls, item: Any, name: str) -> bytes:
        return _decode_item(item, name)
