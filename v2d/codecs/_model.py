"""
The codec look-ups behind ``MLModel.decode``, ``decode_request``, ``encode`` and
``encode_response``.

A content type comes from the payload's ``parameters.content_type``, else from the
model's metadata (model-settings.json: the input or output of that name, or the
model's ``parameters.content_type`` for whole requests), else from ``default_codec``.
A content type no codec is registered for is passed over, as in MLServer. Decoded
payloads are kept in the tensor's (request's) parameters (``v2d.codecs.utils``), so a
second decode of the same input costs nothing.
"""

from __future__ import annotations

from typing import Any

from v2d.codecs._cache import (
    decode_inference_request,
    decode_request_input,
    encode_response_output,
    get_decoded,
    has_decoded,
    metadata_index,
)
from v2d.codecs._errors import CodecNotFound
from v2d.codecs._registry import (
    find_input_codec,
    find_request_codec,
    find_request_codec_by_payload,
)
from v2d.settings import ModelSettings
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

__all__ = ["decode_input", "decode_request", "encode_output", "encode_response"]


def _codec(codec: Any, find: Any, kind: str) -> Any:
    """A codec given as a class, an instance or a content type (looked up with ``find``)."""
    if isinstance(codec, str):
        found = find(content_type=codec)
        if found is None:
            raise CodecNotFound(f"no {kind} codec for content type '{codec}'")
        return found
    return codec


def _input_codec(codec: Any) -> Any:
    return _codec(codec, find_input_codec, "input")


def _request_codec(codec: Any) -> Any:
    return _codec(codec, find_request_codec, "request")


def decode_input(settings: ModelSettings, request_input: RequestInput, default_codec: Any = None) -> Any:
    """
    ``request_input`` decoded by its content type (and kept in its parameters); else
    the decoded payload it holds; else by ``default_codec``; else its raw ``data``.
    """
    decode_request_input(request_input, metadata_index(settings.inputs))
    if has_decoded(request_input):
        return get_decoded(request_input)
    if default_codec is not None:
        return _input_codec(default_codec).decode_input(request_input)
    return request_input.data


def decode_request(settings: ModelSettings, request: InferenceRequest, default_codec: Any = None) -> Any:
    """
    ``request`` decoded by its request content type (its inputs by theirs first); else
    the decoded payload it holds; else by ``default_codec``; else the request itself.
    """
    decode_inference_request(request, settings, metadata_index(settings.inputs))
    if has_decoded(request):
        return get_decoded(request)
    if default_codec is not None:
        return _request_codec(default_codec).decode_request(request)
    return request


def encode_output(
    settings: ModelSettings, payload: Any, request_output: RequestOutput, default_codec: Any = None
) -> ResponseOutput:
    """
    ``payload`` as the output named by ``request_output``: by the requested or declared
    content type, else by the payload's Python type, else with ``default_codec``.
    """
    output = encode_response_output(payload, request_output, metadata_index(settings.outputs))
    if output is not None:
        return output
    if default_codec is not None:
        return _input_codec(default_codec).encode_output(name=request_output.name, payload=payload)
    raise CodecNotFound(f"output '{request_output.name}': no codec can encode a {type(payload).__name__}")


def encode_response(settings: ModelSettings, payload: Any, default_codec: Any = None) -> InferenceResponse:
    """
    ``payload`` as a whole response: by the model's request content type when its codec
    can encode it, else by the payload's Python type, else with ``default_codec``.
    """
    codec = None
    content_type = settings.parameters.content_type
    if content_type:
        declared = find_request_codec(content_type=content_type)
        if declared is not None and declared.can_encode(payload):
            codec = declared
    if codec is None:
        codec = find_request_codec_by_payload(payload)
    if codec is None and default_codec is not None:
        codec = _request_codec(default_codec)
    if codec is None:
        raise CodecNotFound(f"no request codec can encode a {type(payload).__name__}")
    return codec.encode_response(settings.name, payload, settings.version)
