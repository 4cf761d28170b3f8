"""
``NumpyCodec`` ("np"): a tensor of any V2 datatype as a numpy array, and its
single-input request codec ``NumpyRequestCodec``.

Numeric tensors convert in one numpy step (no copy when the data already is an array
of the right dtype and shape). BYTES tensors decode to an object array of their items
(``bytes`` or ``str`` as they arrived); string, bytes and object arrays encode to
BYTES, strings as UTF-8.
"""

from __future__ import annotations

import typing
from typing import Any, List

import numpy as np

from v2d.codecs._base import (
    InputCodec,
    SingleInputRequestCodec,
    bytes_items,
    encoded_tensor,
)
from v2d.codecs._errors import CodecError
from v2d.errors import InferenceError
from v2d.types import DATATYPES, RequestInput, ResponseOutput, datatype_of

__all__ = ["NumpyCodec", "NumpyRequestCodec", "to_datatype", "to_dtype"]


def to_dtype(datatype: str) -> Any:
    """The numpy dtype a tensor of ``datatype`` decodes to (object for BYTES)."""
    try:
        dtype = DATATYPES[datatype]
    except KeyError:
        raise InferenceError(f"unknown datatype {datatype!r}") from None
    return np.dtype(object) if dtype is None else dtype


def to_datatype(dtype: Any) -> str:
    """The V2 datatype of a numpy dtype (strings, bytes and objects are BYTES)."""
    try:
        return datatype_of(dtype)
    except (ValueError, TypeError) as e:
        raise CodecError(str(e)) from None


def _unalias(hint: Any) -> Any:
    """The value of a ``type X = ...`` alias (newer numpy spells ``NDArray`` so)."""
    for _ in range(8):
        value = getattr(hint, "__value__", None)
        if value is None:
            break
        hint = value
    return hint


def _batch_shape(shape: List[int]) -> List[int]:
    """MLServer's convention: a 1-D ``[N]`` tensor is sent as ``[N, 1]``."""
    if len(shape) > 1:
        return shape
    return shape + [1]


def _element_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.str_):  # pragma: no cover - tolist() gives str
        return str(item).encode("utf-8")
    raise CodecError(f"cannot encode a {type(item).__name__} item as BYTES (only str and bytes)")


def _bytes_data(array: np.ndarray) -> List[bytes]:
    """The items of a string, bytes or object array as a flat list of ``bytes``."""
    items = array.ravel().tolist()
    if array.dtype.kind == "S":
        return items
    return [_element_bytes(item) for item in items]


def _encode(payload: Any) -> tuple:
    array = np.asarray(payload)
    datatype = to_datatype(array.dtype)
    shape = _batch_shape(list(array.shape))
    if datatype == "BYTES":
        data: Any = _bytes_data(array)
    else:
        data = array.astype(DATATYPES[datatype], copy=False).reshape(shape)
    return datatype, shape, data


def _decode(tensor: Any, what: str) -> np.ndarray:
    dtype = to_dtype(tensor.datatype)
    shape = tuple(tensor.shape)
    data = tensor.data
    if dtype.kind == "O":
        items = bytes_items(tensor)
        array = np.empty(len(items), dtype=object)
        array[:] = items
    elif isinstance(data, np.ndarray) and data.dtype == dtype:
        array = data
    else:
        try:
            array = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            raise InferenceError(
                f"{what} '{tensor.name}': data is not a valid {tensor.datatype} tensor"
            ) from None
    if array.shape != shape:
        size = 1
        for d in shape:
            size *= d
        if array.size != size:
            raise InferenceError(
                f"{what} '{tensor.name}': data has {array.size} elements but shape {list(shape)} needs {size}"
            )
        array = array.reshape(shape)
    return array


class NumpyCodec(InputCodec):
    """A tensor as a numpy array."""

    ContentType = "np"
    TypeHint = np.ndarray

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether ``payload`` is a numpy array."""
        return isinstance(payload, np.ndarray)

    @classmethod
    def matches_type_hint(cls, type_hint: Any) -> bool:
        """``np.ndarray``, also subscripted (``numpy.typing.NDArray[np.float32]``)."""
        hint = _unalias(type_hint)
        if hint is np.ndarray:
            return True
        origin = _unalias(typing.get_origin(hint))
        return origin is np.ndarray or typing.get_origin(origin) is np.ndarray

    @classmethod
    def encode_output(cls, name: str, payload: Any, **kwargs: Any) -> ResponseOutput:
        """A response output holding ``payload`` (1-D arrays get shape ``[N, 1]``)."""
        return encoded_tensor(ResponseOutput, name, _encode(payload), cls.ContentType)

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> np.ndarray:
        """The output's data as an array of its shape."""
        return _decode(response_output, "output")

    @classmethod
    def encode_input(cls, name: str, payload: Any, **kwargs: Any) -> RequestInput:
        """A request input holding ``payload`` (1-D arrays get shape ``[N, 1]``)."""
        return encoded_tensor(RequestInput, name, _encode(payload), cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> np.ndarray:
        """The input's data as an array of its shape (object dtype for BYTES)."""
        return _decode(request_input, "input")


class NumpyRequestCodec(SingleInputRequestCodec):
    """A request (response) of a single tensor, as a numpy array."""

    InputCodec = NumpyCodec
    ContentType = NumpyCodec.ContentType
