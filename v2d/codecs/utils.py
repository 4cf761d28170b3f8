"""
``mlserver.codecs.utils``'s names: codec look-ups over whole requests and responses,
and the decoded-payload cache (``DecodedParameterName`` in a tensor's parameters).
"""

from v2d.codecs._base import DEFAULT_INPUT_PREFIX, DEFAULT_OUTPUT_PREFIX, SingleInputRequestCodec
from v2d.codecs._cache import (
    Codec,
    DecodedParameterName,
    InputOrOutput,
    decode_inference_request,
    decode_request_input,
    encode_inference_response,
    encode_response_output,
    get_decoded,
    get_decoded_or_raw,
    has_decoded,
    inject_batch_dimension,
)

DefaultInputPrefix = DEFAULT_INPUT_PREFIX
DefaultOutputPrefix = DEFAULT_OUTPUT_PREFIX

__all__ = [
    "Codec",
    "DecodedParameterName",
    "DefaultInputPrefix",
    "DefaultOutputPrefix",
    "InputOrOutput",
    "SingleInputRequestCodec",
    "decode_inference_request",
    "decode_request_input",
    "encode_inference_response",
    "encode_response_output",
    "get_decoded",
    "get_decoded_or_raw",
    "has_decoded",
    "inject_batch_dimension",
]
