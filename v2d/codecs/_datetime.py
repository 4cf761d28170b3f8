"""``DatetimeCodec`` ("datetime"): a BYTES tensor of ISO 8601 text as a list of ``datetime``."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, List

from v2d.codecs._base import InputCodec, bytes_items, content_type_parameters, is_list_of
from v2d.codecs._errors import CodecError
from v2d.errors import InferenceError
from v2d.types import RequestInput, ResponseOutput

__all__ = ["DatetimeCodec", "parse_datetime"]


def _encode_items(name: str, payload: Any, use_bytes: bool) -> List[Any]:
    if not isinstance(payload, (list, tuple)):
        raise CodecError(
            f"output '{name}': the 'datetime' codec encodes a list of datetime, got {type(payload).__name__}"
        )
    out: List[Any] = []
    for item in payload:
        if isinstance(item, datetime):
            text = item.isoformat()
        elif isinstance(item, str):  # already ISO text, as MLServer allows
            text = item
        else:
            raise CodecError(
                f"output '{name}': the 'datetime' codec encodes a list of datetime, "
                f"got a {type(item).__name__} item"
            )
        out.append(text.encode("utf-8") if use_bytes else text)
    return out


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


def _decode_items(tensor: Any) -> List[datetime]:
    if tensor.datatype != "BYTES":
        raise InferenceError(
            f"input '{tensor.name}': the 'datetime' content type needs a BYTES tensor, got {tensor.datatype}"
        )
    return [_decode_item(item, tensor.name) for item in bytes_items(tensor)]


class DatetimeCodec(InputCodec):
    """A BYTES tensor of ISO 8601 date-times as a list of ``datetime`` (time zones kept)."""

    ContentType = "datetime"
    TypeHint = List[datetime]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether ``payload`` is a list of ``datetime``."""
        return is_list_of(payload, datetime)

    @classmethod
    def encode_output(
        cls, name: str, payload: List[datetime], use_bytes: bool = True, **kwargs: Any
    ) -> ResponseOutput:
        """A BYTES output of shape ``[N, 1]`` holding each item's ``isoformat()``."""
        data = _encode_items(name, payload, use_bytes)
        return ResponseOutput(
            name=name,
            shape=[len(data), 1],
            datatype="BYTES",
            data=data,
            parameters=content_type_parameters(cls.ContentType),
        )

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> List[datetime]:
        """The output's items as ``datetime``."""
        return _decode_items(response_output)

    @classmethod
    def encode_input(
        cls, name: str, payload: List[datetime], use_bytes: bool = True, **kwargs: Any
    ) -> RequestInput:
        """A BYTES input of shape ``[N, 1]`` holding each item's ``isoformat()``."""
        data = _encode_items(name, payload, use_bytes)
        return RequestInput(
            name=name,
            shape=[len(data), 1],
            datatype="BYTES",
            data=data,
            parameters=content_type_parameters(cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> List[datetime]:
        """The input's items parsed as ISO 8601 date-times."""
        return _decode_items(request_input)
