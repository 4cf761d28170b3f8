"""
The binary tensor data extension of the REST protocol (Triton's ``binary_tensor_data``).

A request body may be a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw data of the inputs whose parameters carry ``binary_data_size``, in
the order of ``inputs``. Raw data is little-endian and row-major; BYTES elements are
each preceded by a 4-byte little-endian length. Inputs are decoded zero-copy: numpy
arrays over slices of the body.

A response uses the same framing for the outputs asked for in binary: every output when
the request's ``parameters.binary_data_output`` is true, and any output whose requested
``parameters.binary_data`` is true (false overrides ``binary_data_output``). Binary
outputs carry ``binary_data_size`` and no ``data``. In a request that used the extension
in any way, outputs sent as JSON get no ``parameters`` object, because Triton's C++
client (perf_analyzer) expects ``binary_data_size`` in any output parameters it sees.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from v2d.errors import InvalidArgument
from v2d.rest._json import decode_request, dumps, parse_json_object, response_dict
from v2d.tensors import decode_raw_tensor, pack_bytes
from v2d.types import InferenceRequest, InferenceResponse

__all__ = ["HEADER_LENGTH", "decode_infer_body", "encode_infer_body", "parse_header_length", "wants_binary"]

#: The header that gives the length of the JSON part of a body.
HEADER_LENGTH = b"inference-header-content-length"


def parse_header_length(value: Optional[bytes], body_length: int) -> Optional[int]:
    """The JSON header's length from ``Inference-Header-Content-Length`` (None if absent)."""
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidArgument(
            f"Inference-Header-Content-Length must be an integer, got {value.decode('latin-1')!r}"
        ) from None
    if length < 0 or length > body_length:
        raise InvalidArgument(
            f"Inference-Header-Content-Length is {length} but the body has {body_length} bytes"
        )
    return length


def _no_binary(field: str, params: Any, shape: Any, datatype: str) -> Any:
    raise InvalidArgument(
        f"{field}: parameters.binary_data_size is set but the request has no "
        "Inference-Header-Content-Length header"
    )


def decode_infer_body(body: bytes, header_length: Optional[bytes]) -> InferenceRequest:
    """An InferenceRequest from a JSON body, or a JSON header followed by binary input data."""
    length = parse_header_length(header_length, len(body))
    if length is None:
        return decode_request(parse_json_object(body), binary=_no_binary)
    view = memoryview(body)
    doc = parse_json_object(view[:length].tobytes(), "JSON header of the request body")
    data = view[length:]
    offset = 0

    def take(field: str, params: Any, shape: List[int], datatype: str) -> Any:
        nonlocal offset
        size = params.get("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{field}: parameters.binary_data_size must be a non-negative integer")
        if offset + size > len(data):
            raise InvalidArgument(
                f"{field}: binary_data_size {size} runs past the end of the body "
                f"({len(data) - offset} bytes of binary data left)"
            )
        chunk = data[offset : offset + size]
        offset += size
        params.binary_data_size = None
        return decode_raw_tensor(datatype, shape, chunk, field)

    request = decode_request(doc, binary=take)
    if offset != len(data):
        raise InvalidArgument(
            f"the body has {len(data)} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    return request


def wants_binary(payload: InferenceRequest) -> Tuple[bool, Dict[str, bool]]:
    """(binary_data_output, {output name: binary_data}) asked for by a request."""
    default = bool(payload.parameters.get("binary_data_output", False)) if payload.parameters else False
    per_output: Dict[str, bool] = {}
    for requested in payload.outputs or ():
        if requested.parameters is not None and "binary_data" in requested.parameters:
            per_output[requested.name] = bool(requested.parameters.get("binary_data"))
    return default, per_output


def encode_infer_body(
    response: InferenceResponse, payload: InferenceRequest, binary_request: bool = False
) -> Tuple[bytes, Optional[int]]:
    """
    (body, JSON header length or None) of a response: plain JSON unless some output is
    asked for in binary. ``binary_request`` tells whether the request body used the
    extension.
    """
    default, per_output = wants_binary(payload)
    extension = binary_request or default or any(per_output.values())
    chunks: List[Any] = []

    def place(output: Any, datatype: str, shape: List[int], flat: Any, numeric: bool, params: dict) -> bool:
        if not per_output.get(output.name, default):
            if extension:
                params.clear()
            return False
        # A memoryview of the array: the final join copies the data once, no tobytes() first.
        chunk = memoryview(flat).cast("B") if numeric else pack_bytes(flat)
        params["binary_data_size"] = len(chunk)
        chunks.append(chunk)
        return True

    doc = response_dict(response, output_data=place if extension else None)
    header = dumps(doc)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
