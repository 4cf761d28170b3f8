"""
``PandasCodec`` ("pd"): a whole request (response) as a ``pandas.DataFrame``, one
column per input (output).

pandas is optional: it is imported only when a DataFrame is decoded, and payload or
type-hint checks look for an already imported pandas, so a worker environment without
pandas imports v2d.codecs fine and gets a clear error only if it asks for "pd".
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Tuple

import numpy as np

from v2d.codecs._base import RequestCodec, bytes_items, content_type_of, content_type_parameters
from v2d.codecs._errors import CodecError
from v2d.codecs._numpy import NumpyCodec, to_datatype
from v2d.codecs._registry import find_input_codec
from v2d.errors import InferenceError
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
)

__all__ = ["PandasCodec", "require_pandas"]


def require_pandas() -> Any:
    """The pandas module, or a ``CodecError`` saying to install it."""
    try:
        import pandas
    except ImportError:
        raise CodecError(
            "the 'pd' content type needs pandas, which is not installed in this environment "
            "(pip install pandas)"
        ) from None
    return pandas


def _dataframe_type() -> Optional[type]:
    """``pandas.DataFrame`` if pandas is already imported (without importing it)."""
    pandas = sys.modules.get("pandas")
    return getattr(pandas, "DataFrame", None) if pandas is not None else None


def _column(pd: Any, tensor: Any) -> Any:
    """One input (output) as a Series."""
    content_type = content_type_of(tensor.parameters)
    if content_type and content_type not in (NumpyCodec.ContentType, PandasCodec.ContentType):
        codec = find_input_codec(content_type=content_type)
        if codec is not None:
            return pd.Series(codec.decode_input(tensor))
    if tensor.datatype == "BYTES":
        return pd.Series(bytes_items(tensor), dtype=object)
    array = NumpyCodec.decode_input(tensor)
    if array.ndim == 0:
        array = array.reshape(1)
    elif array.ndim > 1:
        if array.size == array.shape[0]:
            array = array.reshape(array.shape[0])
        else:  # one row per entry of the first dimension
            rows = np.empty(array.shape[0], dtype=object)
            rows[:] = list(array)
            array = rows
    return pd.Series(array)


def _frame(pd: Any, tensors: List[Any]) -> Any:
    columns = {}
    for tensor in tensors:
        columns[tensor.name] = _column(pd, tensor)
    lengths = {name: len(series) for name, series in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InferenceError(f"the 'pd' content type needs columns of one length, got {lengths}")
    return pd.DataFrame(columns)


def _bytes_column(name: str, items: List[Any], use_bytes: bool) -> Tuple[List[Any], Optional[str]]:
    if all(isinstance(item, str) for item in items):
        return ([item.encode("utf-8") for item in items] if use_bytes else list(items)), "str"
    out: List[Any] = []
    for item in items:
        if isinstance(item, str):
            out.append(item.encode("utf-8") if use_bytes else item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append(bytes(item))
        else:
            raise CodecError(
                f"column '{name}': cannot encode a {type(item).__name__} item "
                "(columns must be numeric, datetime, str or bytes)"
            )
    return out, None


def _tensor_parts(
    pd: Any, name: str, series: Any, use_bytes: bool
) -> Tuple[List[int], str, Any, Optional[str]]:
    """(shape, datatype, data, content type) of one column."""
    shape = [len(series), 1]
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        items = [ts.isoformat() for ts in series]
        data = [item.encode("utf-8") for item in items] if use_bytes else items
        return shape, "BYTES", data, "datetime"
    array = series.to_numpy()
    if array.dtype.kind in "biuf":
        return shape, to_datatype(array.dtype), array.reshape(shape), None
    if array.dtype.kind in "USO":
        data, content_type = _bytes_column(name, array.tolist(), use_bytes)
        return shape, "BYTES", data, content_type
    raise CodecError(f"column '{name}': no V2 datatype for dtype {series.dtype}")


def _outputs(payload: Any, use_bytes: bool) -> List[ResponseOutput]:
    pd = require_pandas()
    outputs = []
    for column in payload.columns:
        name = str(column)
        shape, datatype, data, content_type = _tensor_parts(pd, name, payload[column], use_bytes)
        outputs.append(
            ResponseOutput(
                name=name,
                shape=shape,
                datatype=datatype,
                data=data,
                parameters=content_type_parameters(content_type),
            )
        )
    return outputs


class PandasCodec(RequestCodec):
    """A request (response) as a DataFrame: one column per input (output)."""

    ContentType = "pd"

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        """Whether ``payload`` is a DataFrame."""
        frame = _dataframe_type()
        return frame is not None and isinstance(payload, frame)

    @classmethod
    def matches_type_hint(cls, type_hint: Any) -> bool:
        """Whether ``type_hint`` is ``pandas.DataFrame``."""
        frame = _dataframe_type()
        return frame is not None and type_hint is frame

    @classmethod
    def encode_response(
        cls,
        model_name: str,
        payload: Any,
        model_version: Optional[str] = None,
        use_bytes: bool = True,
        **kwargs: Any,
    ) -> InferenceResponse:
        """A response with one output per column (shape ``[N, 1]``)."""
        return InferenceResponse(
            model_name=model_name,
            model_version=model_version,
            parameters=content_type_parameters(cls.ContentType),
            outputs=_outputs(payload, use_bytes),
        )

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        """The response's outputs as the columns of a DataFrame."""
        return _frame(require_pandas(), response.outputs)

    @classmethod
    def encode_request(cls, payload: Any, use_bytes: bool = True, **kwargs: Any) -> InferenceRequest:
        """A request with one input per column (shape ``[N, 1]``)."""
        inputs = [
            RequestInput(
                name=o.name, shape=o.shape, datatype=o.datatype, data=o.data, parameters=o.parameters
            )
            for o in _outputs(payload, use_bytes)
        ]
        return InferenceRequest(parameters=content_type_parameters(cls.ContentType), inputs=inputs)

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        """The request's inputs as the columns of a DataFrame."""
        return _frame(require_pandas(), request.inputs)
