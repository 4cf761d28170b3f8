"""
Registers the built-in codecs.

Look-ups by payload try the latest registered codec first, so the order here puts the
most general last-resort codecs first.
"""

from __future__ import annotations

from v2d.codecs._base64 import Base64Codec
from v2d.codecs._datetime import DatetimeCodec
from v2d.codecs._numpy import NumpyCodec, NumpyRequestCodec
from v2d.codecs._pandas import PandasCodec
from v2d.codecs._registry import register_input_codec, register_request_codec
from v2d.codecs._string import StringCodec, StringRequestCodec

__all__ = ["register_builtin_codecs"]


def register_builtin_codecs() -> None:
    """Register (again) every built-in codec under its content type."""
    for input_codec in (DatetimeCodec, Base64Codec, NumpyCodec, StringCodec):
        register_input_codec(input_codec)
    for request_codec in (PandasCodec, NumpyRequestCodec, StringRequestCodec):
        register_request_codec(request_codec)


register_builtin_codecs()
