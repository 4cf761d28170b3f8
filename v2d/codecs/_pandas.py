"""
``PandasCodec`` ("pd"): a whole request (response) as a ``pandas.DataFrame``, one
column per input (output).

Columns of other Python objects (dicts, lists, numbers mixed with text) travel as JSON
text, one item per row, under the content type ``pd_json`` (as in MLServer).

pandas is optional: it is imported only when a DataFrame is decoded, and payload or
type-hint checks look for an already imported pandas, so a worker environment without
pandas imports v2d.codecs fine and gets a clear error only if it asks for "pd".
"""

from __future__ import annotations

import json
import sys
from typing import Any, List, Optional, Tuple

import numpy as np

from v2d.codecs._base import (
    RequestCodec,
    bytes_items,
    content_type_of,
    content_type_parameters,
    encoded_tensor,
    get_decoded,
    has_decoded,
)
from v2d.codecs._errors import CodecError
from v2d.codecs._numpy import NumpyCodec, to_datatype, to_dtype
from v2d.codecs._registry import find_input_codec
from v2d.errors import InferenceError
from v2d.types import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
)

__all__ = ["JSON_CONTENT_TYPE", "PandasCodec", "require_pandas", "to_response_output"]

#: The content type of a column whose items are JSON text.
JSON_CONTENT_TYPE = "pd_json"


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
    """One input (output) as a Series (its decoded payload, if it holds one)."""
    if has_decoded(tensor):
        decoded = get_decoded(tensor)
        if not isinstance(decoded, np.ndarray):
            return pd.Series(decoded)
        if tensor.datatype != "BYTES":
            decoded = decoded.astype(to_dtype(tensor.datatype), copy=False)
        return _array_series(pd, decoded)
    content_type = content_type_of(tensor.parameters)
    if content_type == JSON_CONTENT_TYPE:
        return pd.Series([_json_item(tensor.name, item) for item in bytes_items(tensor)], dtype=object)
    if content_type and content_type not in (NumpyCodec.ContentType, PandasCodec.ContentType):
        codec = find_input_codec(content_type=content_type)
        if codec is not None:
            return pd.Series(codec.decode_input(tensor))
    if tensor.datatype == "BYTES":
        return pd.Series(bytes_items(tensor), dtype=object)
    return _array_series(pd, NumpyCodec.decode_input(tensor))


def _array_series(pd: Any, array: np.ndarray) -> Any:
    """A column from an array: 1-D as it is, ``[N, 1]`` flattened, else one row per entry."""
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


def _json_item(name: str, item: Any) -> Any:
    try:
        return json.loads(item)
    except (TypeError, ValueError):
        raise InferenceError(
            f"input '{name}': item is not valid JSON (content type '{JSON_CONTENT_TYPE}')"
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    raise TypeError(f"cannot encode a {type(value).__name__} as JSON")


def _frame(pd: Any, tensors: List[Any]) -> Any:
    columns = {}
    for tensor in tensors:
        columns[tensor.name] = _column(pd, tensor)
    lengths = {name: len(series) for name, series in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InferenceError(f"the 'pd' content type needs columns of one length, got {lengths}")
    return pd.DataFrame(columns)


def _is_text(item: Any) -> bool:
    if isinstance(item, str):
        return True
    try:
        bytes(item).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        return False
    return True


def _bytes_column(name: str, items: List[Any], use_bytes: bool) -> Tuple[List[Any], Optional[str]]:
    if all(isinstance(item, str) for item in items):
        return ([item.encode("utf-8") for item in items] if use_bytes else list(items)), "str"
    text = True
    out: List[Any] = []
    for item in items:
        if isinstance(item, str):
            out.append(item.encode("utf-8") if use_bytes else item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            out.append(bytes(item))
            text = text and _is_text(item)
        else:
            return _json_column(name, items, use_bytes), JSON_CONTENT_TYPE
    return out, ("str" if text else None)


def _json_column(name: str, items: List[Any], use_bytes: bool) -> List[Any]:
    """Each item as compact JSON text (``pd_json``)."""
    out = []
    for item in items:
        try:
            text = json.dumps(
                item, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_json_default
            )
        except (TypeError, ValueError) as e:
            raise CodecError(
                f"column '{name}': cannot encode a {type(item).__name__} item as JSON ({e})"
            ) from None
        out.append(text.encode("utf-8") if use_bytes else text)
    return out


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


def to_response_output(series: Any, use_bytes: bool = True) -> ResponseOutput:
    """One column (a Series) as a response output named after it, shape ``[N, 1]``."""
    name = str(series.name)
    shape, datatype, data, content_type = _tensor_parts(require_pandas(), name, series, use_bytes)
    return encoded_tensor(ResponseOutput, name, (datatype, shape, data), content_type)


def _outputs(payload: Any, use_bytes: bool) -> List[ResponseOutput]:
    return [to_response_output(payload[column].rename(column), use_bytes) for column in payload.columns]


class PandasCodec(RequestCodec):
    """A request (response) as a DataFrame: one column per input (output)."""

    ContentType = "pd"
    JsonContentType = JSON_CONTENT_TYPE

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
