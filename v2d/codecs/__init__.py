"""
Codecs: content types that turn V2 tensors into Python values and back, and
``@decode_args`` for a ``predict`` with typed arguments.

Names follow MLServer's ``mlserver.codecs``. Built-in content types: ``np``
(``NumpyCodec``), ``str`` (``StringCodec``), ``base64`` (``Base64Codec``), ``datetime``
(``DatetimeCodec``) and, for whole requests, ``pd`` (``PandasCodec``, needs pandas),
``np`` (``NumpyRequestCodec``) and ``str`` (``StringRequestCodec``).

MLServer's module paths exist too (``v2d.codecs.numpy``, ``.string``, ``.base64``,
``.datetime``, ``.pandas``, ``.base``, ``.utils``, ``.errors``, ``.decorator``,
``.lists``), each naming the same objects as this package.

Worker children import this package: it needs only the standard library and numpy
(pandas is imported when a DataFrame is decoded).
"""

from v2d.codecs._base import InputCodec, RequestCodec, SingleInputRequestCodec
from v2d.codecs._base64 import Base64Codec
from v2d.codecs._builtins import register_builtin_codecs
from v2d.codecs._cache import (
    DecodedParameterName,
    decode_inference_request,
    decode_request_input,
    encode_inference_response,
    encode_response_output,
    get_decoded,
    get_decoded_or_raw,
    has_decoded,
)
from v2d.codecs._datetime import DatetimeCodec
from v2d.codecs._decorator import SignatureCodec, decode_args
from v2d.codecs._errors import CodecError, CodecNotFound, InputsNotFound, OutputNotFound
from v2d.codecs._numpy import NumpyCodec, NumpyRequestCodec, to_datatype, to_dtype
from v2d.codecs._pandas import PandasCodec
from v2d.codecs._registry import (
    InputCodecLike,
    RequestCodecLike,
    find_input_codec,
    find_input_codec_by_payload,
    find_input_codec_by_type_hint,
    find_request_codec,
    find_request_codec_by_payload,
    find_request_codec_by_type_hint,
    register_input_codec,
    register_request_codec,
)
from v2d.codecs._string import StringCodec, StringRequestCodec, decode_str, encode_str

__all__ = [
    "Base64Codec",
    "CodecError",
    "CodecNotFound",
    "DatetimeCodec",
    "DecodedParameterName",
    "InputCodec",
    "InputCodecLike",
    "InputsNotFound",
    "NumpyCodec",
    "NumpyRequestCodec",
    "OutputNotFound",
    "PandasCodec",
    "RequestCodec",
    "RequestCodecLike",
    "SignatureCodec",
    "SingleInputRequestCodec",
    "StringCodec",
    "StringRequestCodec",
    "decode_args",
    "decode_inference_request",
    "decode_request_input",
    "decode_str",
    "encode_inference_response",
    "encode_response_output",
    "encode_str",
    "find_input_codec",
    "find_input_codec_by_payload",
    "find_input_codec_by_type_hint",
    "find_request_codec",
    "find_request_codec_by_payload",
    "find_request_codec_by_type_hint",
    "get_decoded",
    "get_decoded_or_raw",
    "has_decoded",
    "register_builtin_codecs",
    "register_input_codec",
    "register_request_codec",
    "to_datatype",
    "to_dtype",
]
