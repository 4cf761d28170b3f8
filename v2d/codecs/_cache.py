"""
Codec look-ups over whole requests and responses, and the decoded-payload cache.

A decoded tensor (or request) is kept in its ``parameters`` under
``DecodedParameterName`` (``_decoded_payload``, MLServer's name), so that decoding it
again (``MLModel.decode`` twice, a request codec after the input codecs) costs nothing.
The cache never reaches the wire: ``Parameters.to_dict`` leaves it out.

Content types come from the tensor's (request's) ``parameters.content_type``, else
from the model's metadata for it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from v2d.codecs._base import content_type_of, get_decoded, has_decoded, save_decoded
from v2d.codecs._registry import (
    InputCodecLike,
    RequestCodecLike,
    find_input_codec,
    find_input_codec_by_payload,
    find_request_codec,
    find_request_codec_by_payload,
)
from v2d.types import (
    DECODED_PARAMETER,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

__all__ = [
    "Codec",
    "DecodedParameterName",
    "InputOrOutput",
    "decode_inference_request",
    "decode_request_input",
    "encode_inference_response",
    "encode_response_output",
    "get_decoded",
    "get_decoded_or_raw",
    "has_decoded",
    "inject_batch_dimension",
    "save_decoded",
]

DecodedParameterName = DECODED_PARAMETER
InputOrOutput = Union[RequestInput, ResponseOutput]
Codec = Union[InputCodecLike, RequestCodecLike]
_NO_METADATA: Mapping[str, MetadataTensor] = {}


def inject_batch_dimension(shape: list) -> list:
    """MLServer's convention: a 1-D shape ``[N]`` becomes ``[N, 1]``."""
    return shape if len(shape) > 1 else shape + [1]


def get_decoded_or_raw(obj: Any) -> Any:
    """The decoded payload, else a tensor's ``data``, else ``obj`` itself."""
    if has_decoded(obj):
        return get_decoded(obj)
    if isinstance(obj, (RequestInput, ResponseOutput)):
        return obj.data
    return obj


def _content_type(obj: Any, metadata: Any) -> Optional[str]:
    found = content_type_of(getattr(obj, "parameters", None))
    if found is None and metadata is not None:
        found = content_type_of(getattr(metadata, "parameters", None))
    return found


def decode_request_input(
    request_input: RequestInput, metadata_inputs: Mapping[str, MetadataTensor] = _NO_METADATA
) -> Optional[Any]:
    """
    ``request_input`` decoded by its content type (its own, else its metadata's) and
    kept in its parameters; None when it has no content type with a registered codec.
    """
    content_type = _content_type(request_input, metadata_inputs.get(request_input.name))
    if content_type is None:
        return None
    codec = find_input_codec(content_type=content_type)
    if codec is None:
        return None
    decoded = codec.decode_input(request_input)
    save_decoded(request_input, decoded)
    return decoded


def decode_inference_request(
    inference_request: InferenceRequest,
    model_settings: Any = None,
    metadata_inputs: Mapping[str, MetadataTensor] = _NO_METADATA,
) -> Optional[Any]:
    """
    Decode each input that has a content type, then the whole request by its content
    type (its own, else the model's ``parameters.content_type``): the decoded request,
    or the request itself when it has none.
    """
    for request_input in inference_request.inputs:
        decode_request_input(request_input, metadata_inputs)
    content_type = content_type_of(inference_request.parameters)
    if content_type is None and model_settings is not None:
        content_type = content_type_of(getattr(model_settings, "parameters", None))
    if content_type is not None:
        codec = find_request_codec(content_type=content_type)
        if codec is not None:
            decoded = codec.decode_request(inference_request)
            save_decoded(inference_request, decoded)
            return decoded
    return inference_request


def encode_response_output(
    payload: Any,
    request_output: RequestOutput,
    metadata_outputs: Mapping[str, MetadataTensor] = _NO_METADATA,
) -> Optional[ResponseOutput]:
    """``payload`` as the output ``request_output`` names, by its content type or its Python type."""
    content_type = _content_type(request_output, metadata_outputs.get(request_output.name))
    if content_type:
        codec = find_input_codec(content_type=content_type)
    else:
        codec = find_input_codec_by_payload(payload)
    if codec is None:
        return None
    return codec.encode_output(name=request_output.name, payload=payload)


def encode_inference_response(payload: Any, model_settings: Any) -> Optional[InferenceResponse]:
    """``payload`` as a whole response of the model, by the request codec that can encode it."""
    codec = find_request_codec_by_payload(payload)
    if codec is None:
        return None
    params = getattr(model_settings, "parameters", None)
    version = getattr(params, "version", None) if params is not None else None
    return codec.encode_response(model_settings.name, payload, version)


def metadata_index(tensors: Any) -> Dict[str, MetadataTensor]:
    """Declared tensors by name."""
    return {t.name: t for t in tensors or ()}
