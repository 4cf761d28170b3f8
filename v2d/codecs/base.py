"""``mlserver.codecs.base``'s names: the codec base classes and the codec registries."""

from v2d.codecs._base import InputCodec, RequestCodec
from v2d.codecs._registry import (
    CodecRegistries,
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

_CodecRegistry = CodecRegistries  # MLServer's private spelling, used by code written against it

__all__ = [
    "CodecRegistries",
    "InputCodec",
    "InputCodecLike",
    "RequestCodec",
    "RequestCodecLike",
    "find_input_codec",
    "find_input_codec_by_payload",
    "find_input_codec_by_type_hint",
    "find_request_codec",
    "find_request_codec_by_payload",
    "find_request_codec_by_type_hint",
    "register_input_codec",
    "register_request_codec",
]
