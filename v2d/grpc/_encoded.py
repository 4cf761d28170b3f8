"""
``ModelInfer`` messages decoded and encoded where the model runs.

A worker child that can import this (its interpreter has protobuf) takes small gRPC
requests as the bytes the client sent and answers with the bytes the server returns:
the server's loop then only moves bytes, and the conversions run in the child, the
same functions the server would have run. Child-safe: protobuf, numpy and v2d's
child-safe modules; never grpcio.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from google.protobuf.message import DecodeError

from v2d.grpc._convert import decode_infer_request, not_a_message, serialize_infer_response
from v2d.grpc._messages import pb
from v2d.headers import attach_headers, take_headers
from v2d.types import HeaderDict, InferenceRequest, InferenceResponse

__all__ = ["WIRE", "decode_request", "encode_response"]

#: The name of this encoding (``IEncodedInference.wires``).
WIRE = "grpc"


def decode_request(data: Any, headers: Optional[Dict[str, str]]) -> Tuple[InferenceRequest, bool]:
    """(request, raw) from a serialized ``ModelInferRequest`` and its metadata headers."""
    try:
        message = pb.ModelInferRequest.FromString(bytes(data))
    except DecodeError as e:
        raise not_a_message(pb.ModelInferRequest.DESCRIPTOR.full_name, str(e)) from None
    _, _, payload, raw = decode_infer_request(message)
    attach_headers(payload, HeaderDict(headers or {}))
    return payload, raw


def encode_response(response: InferenceResponse, raw: bool) -> Tuple[bytes, Optional[Dict[str, Any]]]:
    """(serialized ``ModelInferResponse``, headers for the response metadata or None)."""
    headers = take_headers(response)
    return serialize_infer_response(response, raw), (dict(headers) if headers else None)
