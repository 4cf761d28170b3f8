"""
Tensor data checks and conversions shared by every transport.

JSON lists, raw little-endian buffers (gRPC raw contents, the REST binary extension)
and numpy arrays meet here. Numeric data is converted by numpy in one step, never
element by element in Python; every error is an ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, List, Sequence, Tuple

import numpy as np

from v2d.errors import Internal, InvalidArgument
from v2d.types import DATATYPES, datatype_of

__all__ = [
    "MAX_DIMS",
    "bytes_elements",
    "check_names",
    "check_requested_outputs",
    "check_shape",
    "decode_json_tensor",
    "decode_raw_tensor",
    "encode_raw_tensor",
    "flat_output",
    "output_array",
    "pack_bytes",
    "prepare_output",
    "shape_size",
]

_LEN = struct.Struct("<I")


def shape_size(shape: Sequence[int]) -> int:
    """The number of elements of a tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return n


#: The most dimensions a request tensor may have (numpy's own limit).
MAX_DIMS = 64

#: The most elements the non-zero dimensions of a shape may multiply to (far beyond any
#: tensor that fits in memory; keeps numpy's size arithmetic from overflowing).
MAX_ELEMENTS = 2**48


def check_shape(shape: Any, field: str) -> List[int]:
    """A valid request shape (non-negative integers, not too many nor too big) or InvalidArgument."""
    if not isinstance(shape, (list, tuple)):
        raise InvalidArgument(f"{field}: shape must be a list of integers")
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"{field}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    product = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InvalidArgument(
                f"{field}: shape must be a list of non-negative integers, got {list(shape)!r}"
            )
        product *= d or 1
        if product > MAX_ELEMENTS:
            raise InvalidArgument(
                f"{field}: shape {list(shape)} is too large (its dimensions multiply past {MAX_ELEMENTS})"
            )
    return list(shape)


def check_names(request: Any) -> None:
    """InvalidArgument if two inputs, or two requested outputs, share a name."""
    for what, items in (("inputs", request.inputs), ("outputs", request.outputs or ())):
        seen = set()
        for i, item in enumerate(items):
            if item.name in seen:
                raise InvalidArgument(f"{what}[{i}].name: {what[:-1]} {item.name!r} is given more than once")
            seen.add(item.name)


def check_requested_outputs(request: Any, known: Iterable[str], model_name: str, source: str) -> None:
    """
    InvalidArgument if the request asks for an output whose name is not in ``known``,
    the names the model ``source`` ("declares" in its metadata, or "returned").
    """
    names = known if isinstance(known, (set, frozenset)) else set(known)
    for i, requested in enumerate(request.outputs or ()):
        if requested.name not in names:
            raise InvalidArgument(
                f"outputs[{i}].name: model '{model_name}' has no output {requested.name!r} "
                f"(it {source}: {', '.join(sorted(names)) or 'none'})"
            )


def _size_mismatch(field: str, got: int, shape: Sequence[int]) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: data has {got} elements but shape {list(shape)} needs {shape_size(shape)}"
    )


def _flatten_bytes(data: Any, field: str) -> List[Any]:
    """A nested list of str/bytes, flattened (one level per dimension)."""
    out: List[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            out.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        else:
            raise InvalidArgument(
                f"{field}: data must hold strings for datatype BYTES, got {type(item).__name__}"
            )
    return out


def decode_json_tensor(datatype: str, shape: Sequence[int], data: Any, field: str) -> Any:
    """
    Tensor data from JSON: a numpy array shaped to ``shape`` for numeric datatypes, a
    flat list of str for BYTES.
    """
    if datatype not in DATATYPES:
        raise InvalidArgument(f"{field}: unknown datatype {datatype!r}")
    dtype = DATATYPES[datatype]
    if dtype is None:
        if not isinstance(data, list):
            data = [data]
        items = _flatten_bytes(data, field)
        if len(items) != shape_size(shape):
            raise _size_mismatch(field, len(items), shape)
        return items
    if not isinstance(data, list):
        if isinstance(data, (int, float)) and not isinstance(data, bool) or isinstance(data, bool):
            data = [data]
        else:
            raise InvalidArgument(f"{field}: data must be a list of numbers for datatype {datatype}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidArgument(
            f"{field}: data is ragged or holds non-numeric values for datatype {datatype}"
        ) from None
    if dtype.kind == "u" and arr.dtype.kind == "f" and arr.size:
        # numpy reads a list mixing ints below and above int64's range as float64: retry exactly.
        exact = np.asarray(data, dtype=object).ravel()
        if all(isinstance(v, int) and not isinstance(v, bool) for v in exact):
            try:
                arr = exact.astype(dtype).reshape(arr.shape)
            except OverflowError:
                raise InvalidArgument(
                    f"{field}: data holds values out of range for datatype {datatype}"
                ) from None
    kind = arr.dtype.kind
    if arr.size == 0:
        arr = arr.astype(dtype)
    elif kind not in "biuf":
        raise InvalidArgument(f"{field}: data holds non-numeric values for datatype {datatype}")
    elif dtype.kind == "b":
        if kind == "f" or (kind in "iu" and ((arr != 0) & (arr != 1)).any()):
            raise InvalidArgument(f"{field}: data must hold booleans for datatype BOOL")
        arr = arr.astype(dtype)
    elif dtype.kind in "iu":
        if kind == "f":
            raise InvalidArgument(f"{field}: data must hold integers for datatype {datatype}")
        info = np.iinfo(dtype)
        if kind != "b" and (arr.min() < info.min or arr.max() > info.max):
            raise InvalidArgument(f"{field}: data holds values out of range for datatype {datatype}")
        arr = arr.astype(dtype, copy=False)
    else:
        wide = arr
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(dtype, copy=False)
        if dtype.itemsize < wide.dtype.itemsize and not np.isfinite(arr).all():
            finite = np.isfinite(wide) if wide.dtype.kind == "f" else np.ones(wide.shape, bool)
            if (finite & ~np.isfinite(arr)).any():
                raise InvalidArgument(f"{field}: data holds values out of range for datatype {datatype}")
    if arr.size != shape_size(shape):
        raise _size_mismatch(field, arr.size, shape)
    return arr.reshape(shape)


def bytes_elements(buffer: Any, field: str) -> List[bytes]:
    """Split a BYTES tensor's raw form (4-byte little-endian length, then the bytes)."""
    view = memoryview(buffer)
    out = []
    pos, end = 0, len(view)
    while pos < end:
        if pos + 4 > end:
            raise InvalidArgument(f"{field}: truncated BYTES element length")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidArgument(f"{field}: BYTES element of {n} bytes overruns the buffer")
        out.append(bytes(view[pos : pos + n]))
        pos += n
    return out


def pack_bytes(items: Sequence[Any]) -> bytes:
    """The raw form of a BYTES tensor from str/bytes items."""
    parts = []
    for item in items:
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray, memoryview)):
            item = str(item).encode("utf-8")
        parts.append(_LEN.pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def decode_raw_tensor(datatype: str, shape: Sequence[int], buffer: Any, field: str) -> Any:
    """
    Tensor data from a raw little-endian buffer (zero-copy where numpy allows): a
    numpy array shaped to ``shape``, or a list of bytes for BYTES.
    """
    if datatype not in DATATYPES:
        raise InvalidArgument(f"{field}: unknown datatype {datatype!r}")
    dtype = DATATYPES[datatype]
    if dtype is None:
        items = bytes_elements(buffer, field)
        if len(items) != shape_size(shape):
            raise _size_mismatch(field, len(items), shape)
        return items
    nbytes = len(memoryview(buffer).cast("B")) if not isinstance(buffer, (bytes, bytearray)) else len(buffer)
    expected = shape_size(shape) * dtype.itemsize
    if nbytes != expected:
        raise InvalidArgument(
            f"{field}: raw data has {nbytes} bytes but shape {list(shape)} of {datatype} needs {expected}"
        )
    arr = np.frombuffer(buffer, dtype=dtype)
    if dtype.kind == "b" and arr.size and (arr.view(np.uint8) > 1).any():
        raise InvalidArgument(f"{field}: raw BOOL data must hold bytes 0 or 1")
    return arr.reshape(shape)


def output_array(datatype: str, data: Any, field: str = "output") -> np.ndarray:
    """An output's numeric data as a C-contiguous little-endian array of its datatype."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"{field}: datatype {datatype!r} is not numeric")
    try:
        return np.ascontiguousarray(data, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{field}: cannot convert data to {datatype}: {e}") from None


def flat_output(datatype: str, data: Any, field: str = "output") -> Tuple[Any, bool]:
    """
    An output's data ready for a wire: (numpy 1-D array, True) for numeric datatypes,
    (flat list, False) for BYTES.
    """
    if DATATYPES.get(datatype) is None:
        if isinstance(data, np.ndarray):
            return data.ravel().tolist(), False
        if isinstance(data, list) and data and isinstance(data[0], list):
            return _flatten_bytes(data, field), False
        return list(data) if not isinstance(data, list) else data, False
    return output_array(datatype, data, field).ravel(), True


def prepare_output(output: Any) -> Tuple[str, List[int], Any, bool]:
    """
    A model's output checked and ready for any wire: (datatype, shape, flat data,
    numeric), the datatype and shape derived from the data where not given (see
    ``flat_output``). ``Internal`` naming the output if they do not fit its data.
    """
    where = f"output '{output.name}'"
    data = output.data
    datatype = output.datatype or infer_datatype(data)
    if datatype not in DATATYPES:
        raise Internal(f"{where} has unknown datatype {datatype!r}")
    shape = output.shape
    if shape is None:
        shape = np.shape(data) if isinstance(data, np.ndarray) else [len(data)]
    shape = [int(d) for d in shape]
    try:
        flat, numeric = flat_output(datatype, data, where)
    except ValueError as e:
        raise Internal(str(e)) from None
    if len(flat) != shape_size(shape):
        raise Internal(f"model returned {where} with {len(flat)} elements for shape {shape}")
    return datatype, shape, flat, numeric


def encode_raw_tensor(datatype: str, data: Any, field: str = "output") -> Any:
    """The raw little-endian form of an output (a memoryview or bytes, no copy where possible)."""
    if DATATYPES.get(datatype) is None:
        items, _ = flat_output(datatype, data, field)
        return pack_bytes(items)
    array = output_array(datatype, data, field)
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def infer_datatype(data: Any) -> str:
    """The datatype of an output given without one (numpy arrays only)."""
    return datatype_of(np.asarray(data).dtype)
