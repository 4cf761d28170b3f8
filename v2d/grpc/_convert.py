"""
Protobuf messages to v2d.types and back.

Tensors come either all raw (``raw_input_contents``: little-endian bytes, BYTES
elements length-prefixed, FP16 only this way) or all typed (``contents``); mixing the
two is refused. Responses use the same form as the request did (raw when the request
had no inputs, as Triton does), and raw whenever an output is FP16, which has no typed
field. Every error is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from google.protobuf.message import DecodeError

from v2d.errors import Internal, InvalidArgument
from v2d.grpc._messages import pb
from v2d.headers import client_parameters
from v2d.shm import WrittenToRegion, from_region
from v2d.tensors import (
    check_names,
    check_shape,
    decode_raw_tensor,
    pack_bytes,
    prepare_output,
    shape_size,
)
from v2d.types import (
    DATATYPES,
    HeaderDict,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    RequestOutput,
)

__all__ = [
    "TYPED_FIELD",
    "decode_infer_request",
    "decode_parameters",
    "encode_infer_response",
    "encode_parameters",
    "metadata_headers",
    "response_metadata",
]

#: The ``InferTensorContents`` field that carries each datatype (FP16 has none).
TYPED_FIELD: Dict[str, Optional[str]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": None,
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_CONTENT_FIELDS = sorted({f for f in TYPED_FIELD.values() if f})

#: Metadata that belongs to the gRPC transport, never copied to or from a model.
_TRANSPORT_METADATA = frozenset(
    {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "host", "connection"}
)

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


# -- parameters -------------------------------------------------------------------


def _parameter_value(param: Any) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


def decode_parameters(params: Mapping[str, Any]) -> Dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a plain dict (unset values left out)."""
    out = {}
    for key, param in params.items():
        value = _parameter_value(param)
        if value is not None:
            out[key] = value
    return out


def _set_parameter(param: Any, value: Any, field: str) -> None:
    if isinstance(value, (bool, np.bool_)):
        param.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        value = int(value)
        if _INT64_MIN <= value <= _INT64_MAX:
            param.int64_param = value
        elif 0 <= value <= _UINT64_MAX:
            param.uint64_param = value
        else:
            param.string_param = str(value)
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, str):
        param.string_param = value
    elif isinstance(value, bytes):
        param.string_param = value.decode("utf-8", "replace")
    else:
        try:
            param.string_param = json.dumps(value)
        except (TypeError, ValueError):
            raise Internal(
                f"{field}: parameter value of type {type(value).__name__} cannot be sent"
            ) from None


def encode_parameters(
    target: Any, params: Optional[Parameters], field: str, skip: Iterable[str] = ()
) -> None:
    """Fill a protobuf parameter map from ``params`` (``None`` values and ``skip`` keys left out)."""
    if params is None:
        return
    skipped = set(skip)
    for key, value in params.to_dict().items():
        if key in skipped:
            continue
        _set_parameter(target[key], value, f"{field}.parameters[{key!r}]")


def _parameters_of(params: Mapping[str, Any], field: str) -> Optional[Parameters]:
    if not params:
        return None
    values = decode_parameters(params)
    if not values:
        return None
    if "headers" in values:
        raise InvalidArgument(f"{field}parameters['headers'] is reserved: send headers as gRPC metadata")
    return client_parameters(values, f"{field}parameters")


# -- metadata ---------------------------------------------------------------------


def metadata_headers(metadata: Optional[Sequence[Tuple[str, Any]]]) -> HeaderDict:
    """Invocation metadata as headers (transport metadata left out; binary values as latin-1)."""
    headers = _new_headers(HeaderDict)  # empty: HeaderDict's __init__ has nothing to do
    for key, value in metadata or ():
        name = key.lower()
        if name in _TRANSPORT_METADATA or name.startswith(":"):
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        # the name is lower-cased already: the plain dict's methods, without HeaderDict's
        if _has(headers, name):
            value = f"{_get(headers, name)}, {value}"
        _put(headers, name, value)
    return headers


_new_headers, _has, _get, _put = dict.__new__, dict.__contains__, dict.__getitem__, dict.__setitem__


def response_metadata(headers: Optional[Mapping[str, Any]]) -> List[Tuple[str, Any]]:
    """A response's headers as gRPC metadata (names lower-cased; transport ones dropped)."""
    out: List[Tuple[str, Any]] = []
    for name, value in (headers or {}).items():
        key = str(name).lower()
        if key.startswith(":") or key.startswith("grpc-") or key in _TRANSPORT_METADATA:
            continue
        if key.endswith("-bin"):
            out.append((key, value if isinstance(value, bytes) else str(value).encode("utf-8")))
        else:
            out.append((key, value.decode("latin-1") if isinstance(value, bytes) else str(value)))
    return out


# -- requests ---------------------------------------------------------------------


def _typed_data(contents: Any, datatype: str, shape: List[int], field: str) -> Any:
    """Tensor data from an ``InferTensorContents``."""
    target = TYPED_FIELD[datatype]
    if target is None:
        raise InvalidArgument(
            f"{field}: datatype {datatype} has no typed contents; send it in raw_input_contents"
        )
    for name in _CONTENT_FIELDS:
        if name != target and len(getattr(contents, name)):
            raise InvalidArgument(
                f"{field}: contents.{name} given for datatype {datatype} (expected {target})"
            )
    values = getattr(contents, target)
    size = shape_size(shape)
    if len(values) != size:
        raise InvalidArgument(
            f"{field}: contents.{target} has {len(values)} elements but shape {shape} needs {size}"
        )
    if datatype == "BYTES":
        return list(values)
    dtype = DATATYPES[datatype]
    assert dtype is not None
    if target in ("int_contents", "uint_contents") and dtype.itemsize < 4 and size:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidArgument(
                f"{field}: contents.{target} holds values out of range for datatype {datatype}"
            )
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


#: ``ModelInferRequest.raw_input_contents`` is field 7.
_RAW_INPUT_FIELD = 7


def _varint_at(view: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view):
            raise DecodeError("truncated varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


class SplitInferRequest:
    """A ``ModelInferRequest`` parsed without its raw contents, which stay views of the wire bytes."""

    def __init__(self, message: Any, raw_contents: List[memoryview]) -> None:
        self.message = message
        self.raw_contents = raw_contents


def split_infer_request(cls: Any, data: bytes) -> SplitInferRequest:
    """
    Parse a ``ModelInferRequest`` with its raw input contents left in place: the top-level
    fields are scanned, entries of field 7 kept as memoryviews of ``data`` (no copy), and
    only the rest handed to protobuf. Raises DecodeError on malformed input.
    """
    view = memoryview(data)
    raw: List[memoryview] = []
    rest: List[memoryview] = []
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        key, pos = _varint_at(view, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _varint_at(view, pos)
            if pos + length > end:
                raise DecodeError("truncated length-delimited field")
            if number == _RAW_INPUT_FIELD:
                raw.append(view[pos : pos + length])
                pos += length
                continue
            pos += length
        elif wire_type == 0:
            _, pos = _varint_at(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise DecodeError(f"unexpected wire type {wire_type}")
        if pos > end:
            raise DecodeError("truncated field")
        rest.append(view[start:pos])
    return SplitInferRequest(cls.FromString(b"".join(rest)), raw)


def not_a_message(type_name: str, reason: str) -> InvalidArgument:
    """The error for bytes that do not parse as message ``type_name``."""
    return InvalidArgument(f"request is not a valid {type_name} message: {reason}")


def decode_infer_request(
    message: Any, field: str = "", raw_contents: Optional[Sequence[Any]] = None
) -> Tuple[str, Optional[str], InferenceRequest, bool]:
    """
    (model name, version or None, request, raw) from a ``ModelInferRequest``; ``raw``
    tells whether the tensors came as raw contents. ``raw_contents``, if given, stands
    for the message's own (see ``split_infer_request``).
    """
    prefix = f"{field}." if field else ""
    if not message.model_name:
        raise InvalidArgument(f"{prefix}model_name is required")
    if raw_contents is None:
        raw_contents = message.raw_input_contents
    raw = len(raw_contents) > 0
    tensors = list(message.inputs)
    # inputs in shared-memory regions have no raw contents entry (as Triton's clients send them)
    in_regions = [i for i, tensor in enumerate(tensors) if "shared_memory_region" in tensor.parameters]
    if raw and len(raw_contents) != len(tensors) - len(in_regions):
        raise InvalidArgument(
            f"{prefix}raw_input_contents has {len(raw_contents)} entries but there are "
            f"{len(tensors) - len(in_regions)} inputs not in shared memory "
            "(one entry per input, in order)"
        )
    inputs = []
    raw_index = 0
    for i, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise InvalidArgument(f"{prefix}inputs[{i}].name is required")
        where = f"{prefix}inputs[{i}] ('{name}')"
        datatype = tensor.datatype
        if datatype not in DATATYPES:
            raise InvalidArgument(
                f"{where}.datatype: unknown datatype {datatype!r} (expected one of {', '.join(DATATYPES)})"
            )
        shape = check_shape(tensor.shape[:], where)  # a list
        has_contents = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        params = tensor.parameters
        parameters = _parameters_of(params, f"{where}.") if params else None
        region = from_region(where, parameters) if in_regions else None
        if region is not None:
            if has_contents:
                raise InvalidArgument(f"{where}.contents must not be set for an input in shared memory")
            data: Any = region
        elif raw:
            if has_contents:
                raise InvalidArgument(
                    f"{where}.contents must not be set when raw_input_contents is used"
                    " (raw and typed contents cannot be mixed)"
                )
            data = decode_raw_tensor(
                datatype, shape, raw_contents[raw_index], f"{prefix}raw_input_contents[{raw_index}]"
            )
            raw_index += 1
        elif has_contents or shape_size(shape) == 0:
            data = _typed_data(tensor.contents, datatype, shape, where)
        else:
            raise InvalidArgument(f"{where}: no data (set contents or raw_input_contents)")
        inputs.append(
            RequestInput(
                name=name,
                shape=shape,
                datatype=datatype,
                data=data,
                parameters=parameters,
            )
        )
    outputs = None
    if len(message.outputs):
        outputs = []
        for i, requested in enumerate(message.outputs):
            if not requested.name:
                raise InvalidArgument(f"{prefix}outputs[{i}].name is required")
            outputs.append(
                RequestOutput(
                    name=requested.name,
                    parameters=_parameters_of(requested.parameters, f"{prefix}outputs[{i}]."),
                )
            )
    params = message.parameters
    request = InferenceRequest(
        id=message.id or None,
        parameters=_parameters_of(params, prefix) if params else None,
        inputs=inputs,
        outputs=outputs,
    )
    if len(inputs) > 1 or (outputs is not None and len(outputs) > 1):  # else no two names to compare
        check_names(request)
    # raw when every input came raw or from a region (none typed), as Triton answers
    return message.model_name, message.model_version or None, request, raw or len(in_regions) == len(inputs)


# -- responses --------------------------------------------------------------------


def _bytes_item(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")


def encode_infer_response(response: InferenceResponse, raw: bool) -> Any:
    """
    A ``ModelInferResponse`` (headers already taken out of ``response.parameters``):
    raw contents if ``raw`` or any output is FP16, typed contents otherwise.
    """
    message, chunks = _build_infer_response(response, raw)
    for chunk in chunks:
        message.raw_output_contents.append(bytes(chunk))
    return message


#: The varints of 0 to 127: one byte each.
_ONE_BYTE = [bytes((n,)) for n in range(0x80)]

#: The tag of ``ModelInferResponse.raw_output_contents`` (field 6, length-delimited).
_RAW_OUTPUT_TAG = b"\x32"


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def serialize_infer_response(response: InferenceResponse, raw: bool) -> bytes:
    """
    The wire bytes of ``encode_infer_response(response, raw)``, with each raw output
    copied once: the message is serialized without its raw contents, and they are
    appended as field entries (protobuf allows a repeated field's entries anywhere).
    In raw form, the message's fields before its outputs and each output's entry are
    protobuf's own serialization of them alone, kept for the next response that has
    the same (see ``_remembered``): fields serialize in the order of their numbers, so
    the pieces joined are the bytes of the whole message.
    """
    message = None
    if response.id or response.parameters is not None:
        message = _head_message(response)
    else:  # the same for every response of this model version
        head = _remembered(("head", response.model_name, response.model_version), _serialized_head, response)
    prepared = _prepared_outputs(response)
    if not _raw_form(raw, prepared):
        if message is None:
            message = _head_message(response)
        for item in prepared:
            _add_output(message, item, True)
        return message.SerializeToString()
    parts: List[Any] = [head if message is None else message.SerializeToString()]
    chunks: List[Any] = []
    for item in prepared:
        parts.append(_output_entry(item))
        chunks.append(_raw_chunk(item))
    for chunk in chunks:
        parts.append(_RAW_OUTPUT_TAG + _varint(len(chunk)))
        parts.append(chunk)
    return b"".join(parts)


def _build_infer_response(response: InferenceResponse, raw: bool) -> Tuple[Any, List[Any]]:
    """The response message without raw contents, and the raw contents (buffers)."""
    message = _head_message(response)
    prepared = _prepared_outputs(response)
    use_raw = _raw_form(raw, prepared)
    chunks: List[Any] = []
    for item in prepared:
        _add_output(message, item, not use_raw)
        if use_raw:
            chunks.append(_raw_chunk(item))
    return message, chunks


#: An output made ready for the wire: (output, datatype, shape, flat data or None if
#: written to a shared-memory region, numeric).
_Prepared = Tuple[Any, str, List[int], Any, bool]


def _head_message(response: InferenceResponse) -> Any:
    """The response message with the fields before its outputs (parameters without headers)."""
    message = pb.ModelInferResponse(
        model_name=response.model_name or "",
        model_version=response.model_version or "",
        id=response.id or "",
    )
    encode_parameters(message.parameters, response.parameters, "response", skip=("headers",))
    return message


def _prepared_outputs(response: InferenceResponse) -> List[_Prepared]:
    prepared: List[_Prepared] = []
    for output in response.outputs:
        if type(output.data) is WrittenToRegion:
            prepared.append((output, output.datatype, list(output.shape), None, False))
            continue
        prepared.append((output, *prepare_output(output)))
    return prepared


def _raw_form(raw: bool, prepared: List[_Prepared]) -> bool:
    """Whether the outputs go as raw contents: asked for, or a datatype without typed contents."""
    return raw or any(TYPED_FIELD[p[1]] is None for p in prepared if p[3] is not None)


def _add_output(message: Any, item: _Prepared, typed: bool) -> None:
    """Add an output to ``message``, with its typed contents if ``typed``."""
    output, datatype, shape, flat, numeric = item
    tensor = message.outputs.add(name=output.name, datatype=datatype, shape=shape)
    encode_parameters(tensor.parameters, output.parameters, f"output '{output.name}'")
    if not typed or flat is None:
        return
    if numeric:
        getattr(tensor.contents, TYPED_FIELD[datatype]).extend(flat.tolist())  # type: ignore[arg-type]
    else:
        tensor.contents.bytes_contents.extend(_bytes_item(value) for value in flat)


def _raw_chunk(item: _Prepared) -> Any:
    """An output's raw contents (an empty entry, keeping the positions, for one written to a region)."""
    _, _, _, flat, numeric = item
    if flat is None:
        return b""
    return memoryview(flat).cast("B") if numeric else pack_bytes(flat)


def _serialized_head(response: InferenceResponse) -> bytes:
    return _head_message(response).SerializeToString()


def _output_entry(item: _Prepared) -> bytes:
    """The serialized ``outputs`` entry of an output in raw form (contents apart)."""
    output, datatype, shape, flat, _ = item
    params = _parameters_key(output.parameters)
    if flat is None or params is None or type(output.name) is not str:
        return _serialized_output(item)
    return _remembered(("output", output.name, datatype, tuple(shape), params), _serialized_output, item)


def _serialized_output(item: _Prepared) -> bytes:
    message = pb.ModelInferResponse()
    _add_output(message, item, False)
    return message.SerializeToString()


#: Parameter values whose (type, value) decides their serialization (floats do not: 0.0 == -0.0);
#: None values are left out of it.
_KEYED_TYPES = frozenset((str, bool, int, type(None)))


def _parameters_key(params: Optional[Parameters]) -> Optional[tuple]:
    """
    The parameters as part of a key: their attributes in order and the types of their
    values (``to_dict`` is made of these); None if they cannot be one.
    """
    if params is None:
        return ()
    values = vars(params)
    kinds = tuple(map(type, values.values()))
    if not _KEYED_TYPES.issuperset(kinds):
        return None
    return (tuple(values.items()), kinds)


#: The serialized pieces of responses, by what they were made of (``_remembered``).
_PIECES: Dict[tuple, bytes] = {}

#: At most this many pieces are kept; when full, all are forgotten.
MOST_PIECES = 1024


def _remembered(key: tuple, build: Any, arg: Any) -> bytes:
    """``build(arg)``, kept under ``key`` for the next call; built each time if ``key`` is unhashable."""
    try:
        found = _PIECES.get(key)
    except TypeError:
        return build(arg)
    if found is None:
        found = build(arg)
        if len(_PIECES) >= MOST_PIECES:
            _PIECES.clear()
        _PIECES[key] = found
    return found
