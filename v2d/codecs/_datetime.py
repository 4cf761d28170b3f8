"""``DatetimeCodec`` ("datetime"): a BYTES tensor of ISO 8601 text as a list of ``datetime``."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, List, Optional

from v2d.codecs._base import BytesItemCodec
from v2d.errors import InferenceError

__all__ = ["DatetimeCodec", "parse_datetime"]


_FRACTION = re.compile(r"([T ]\d\d:\d\d:\d\d)[.,](\d+)")


def parse_datetime(text: str) -> datetime:
    """
    An ISO 8601 date-time. A trailing ``Z`` means UTC and fractions of a second may
    have any number of digits, also on Python < 3.11 (whose ``fromisoformat`` takes
    neither).
    """
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        fixed = _FRACTION.sub(lambda m: f"{m.group(1)}.{m.group(2)[:6].ljust(6, '0')}", text, count=1)
        if fixed == text:
            raise
        return datetime.fromisoformat(fixed)


def _decode_item(item: Any, name: str) -> datetime:
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            item = bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            raise InferenceError(f"input '{name}': item is not ISO 8601 text") from None
    if not isinstance(item, str):
        raise InferenceError(f"input '{name}': expected ISO 8601 text, got {type(item).__name__}")
    try:
        return parse_datetime(item)
    except ValueError:
        raise InferenceError(f"input '{name}': {item!r} is not an ISO 8601 date-time") from None


class DatetimeCodec(BytesItemCodec):
    """A BYTES tensor of ISO 8601 date-times as a list of ``datetime`` (time zones kept)."""

    ContentType = "datetime"
    TypeHint = List[datetime]
    ItemType = datetime
    ItemName = "datetime"

    @classmethod
    def encode_item(cls, item: Any) -> Optional[str]:
        if isinstance(item, datetime):
            return item.isoformat()
        if isinstance(item, str):  # already ISO text, as MLServer allows
            return item
        return None

    @classmethod
    def decode_item(cls, item: Any, name: str) -> datetime:
        return _decode_item(item, name)
