"""
The Open Inference Protocol's messages as plain Python objects.

These are what runtimes receive and return. They are transport-free: REST and gRPC
decode their wire formats into them and encode them back. Numeric tensor data travels
as numpy arrays (already shaped); BYTES data as a flat list of ``bytes`` or ``str``.

The message classes compare by value (numpy arrays and lists with equal items are
equal data, as MLServer's pydantic models compare) and offer the pydantic methods
MLServer's runtimes call on them (``model_validate``, ``parse_obj``, ``parse_raw``,
``parse_file``, ``model_dump``, ``dict``, ``model_dump_json``, ``json``,
``model_copy``), without pydantic.

This module is imported by worker children running other Pythons (3.9 and up), so it
uses only the standard library and numpy.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from v2d.errors import InferenceError

__all__ = [
    "DATATYPES",
    "Datatype",
    "HeaderDict",
    "InferenceErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataModelErrorResponse",
    "MetadataModelResponse",
    "MetadataServerErrorResponse",
    "MetadataServerResponse",
    "MetadataTensor",
    "Parameters",
    "RepositoryIndexRequest",
    "RepositoryIndexResponse",
    "RepositoryIndexResponseItem",
    "RepositoryLoadErrorResponse",
    "RepositoryUnloadErrorResponse",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "State",
    "TensorData",
    "datatype_of",
    "numpy_dtype",
]


class Datatype(str, Enum):
    """The protocol's tensor datatypes (MLServer's enum; each equals its name as a str)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    def __str__(self) -> str:
        return self.value


#: Every tensor datatype of the protocol and its numpy dtype (``None`` for BYTES,
#: which is a list of byte strings). Little-endian, as on the wire.
DATATYPES: Dict[str, Optional[np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": None,
}

_KIND_TO_DATATYPE = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}


def numpy_dtype(datatype: str) -> Optional[np.dtype]:
    """The numpy dtype of a protocol datatype (``None`` for BYTES); KeyError if unknown."""
    return DATATYPES[datatype]


def datatype_of(dtype: Any) -> str:
    """The protocol datatype for a numpy dtype; strings, bytes and objects are BYTES."""
    dt = np.dtype(dtype)
    if dt.kind in ("U", "S", "O", "V"):
        return "BYTES"
    try:
        return _KIND_TO_DATATYPE[(dt.kind, dt.itemsize)]
    except KeyError:
        raise ValueError(f"no V2 datatype for numpy dtype {dt}") from None


#: The parameter under which the codecs keep a decoded payload (MLServer's name).
DECODED_PARAMETER = "_decoded_payload"


def values_equal(a: Any, b: Any) -> bool:
    """
    Equality of message field values, numpy-aware: an array equals another array or a
    (nested) list with the same items in the same order (shapes are fields of their own).
    """
    if a is b:
        return True
    if isinstance(a, TensorData):
        a = a.root
    if isinstance(b, TensorData):
        b = b.root
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            left, right = _comparable(a), _comparable(b)
            if left.size != right.size:
                return False
            if left.dtype.kind == "f" or right.dtype.kind == "f":
                return bool(np.array_equal(left.ravel(), right.ravel(), equal_nan=True))
            return bool(np.array_equal(left.ravel(), right.ravel()))
        except (TypeError, ValueError):
            return False
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _comparable(value: Any) -> np.ndarray:
    """An array of ``value``; a list with None among numbers reads None as NaN (JSON's null)."""
    if isinstance(value, np.ndarray):
        return value
    array = np.asarray(value)
    if array.dtype == object and any(v is None for v in array.ravel()):
        try:
            return np.asarray([np.nan if v is None else v for v in array.ravel()], dtype=float)
        except (TypeError, ValueError):
            return array
    return array


def _jsonable(value: Any) -> Any:
    """A value made JSON-ready: arrays and tensor data as lists, bytes as UTF-8 text."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, TensorData):
        return _jsonable(value.root)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class TensorData:
    """
    A tensor's data as MLServer's ``TensorData`` holds it: ``root`` is the list (or
    array). Iterates, indexes and measures as its root; compares by value.

    v2d's own messages carry the data itself (a list or an array) in ``data``; this
    class is for code written against MLServer that builds or unwraps it.
    """

    __slots__ = ("root",)
    root: Any

    def __init__(self, root: Any = None) -> None:
        self.root = root.root if isinstance(root, TensorData) else root

    def __iter__(self) -> Iterator[Any]:
        return iter(self.root)

    def __getitem__(self, index: Any) -> Any:
        return self.root[index]

    def __len__(self) -> int:
        return len(self.root)

    def __eq__(self, other: object) -> bool:
        return values_equal(self.root, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TensorData(root={self.root!r})"

    def __reduce__(self):
        return (TensorData, (self.root,))

    @classmethod
    def model_validate(cls, obj: Any) -> "TensorData":
        return cls(obj)

    parse_obj = model_validate

    @classmethod
    def model_validate_json(cls, text: Any) -> "TensorData":
        return cls(json.loads(text))

    parse_raw = model_validate_json

    def model_dump(self, **kwargs: Any) -> Any:
        return self.root

    dict = model_dump

    def model_dump_json(self, **kwargs: Any) -> str:
        return json.dumps(_jsonable(self.root))

    json = model_dump_json


def _plain(value: Any, exclude_none: bool) -> Any:
    """A field's value as plain Python (messages as dicts)."""
    if isinstance(value, _Message):
        return value.model_dump(exclude_none=exclude_none)
    if isinstance(value, Parameters):
        return value.to_dict()
    if isinstance(value, TensorData):
        return value.root
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v, exclude_none) for v in value]
    return value


class _Message:
    """What the message dataclasses share: value equality and pydantic's method names."""

    #: Fields holding nested messages: name -> (class, whether a list of them).
    _NESTED: Dict[str, Any] = {}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            values_equal(getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        )

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def model_validate(cls, obj: Any) -> Any:
        """Build from a mapping (nested mappings become messages); a message is returned as it is."""
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, dict):
            raise TypeError(f"{cls.__name__} must be built from an object, got {type(obj).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(obj) - names)
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown field(s) {', '.join(map(repr, unknown))}")
        kwargs = dict(obj)
        datatype = kwargs.get("datatype")
        if "datatype" in names and _plain_datatype(datatype) not in DATATYPES:
            raise InferenceError(f"{cls.__name__}: field 'datatype': unknown datatype {datatype!r}")
        for name, (kind, many) in cls._NESTED.items():
            value = kwargs.get(name)
            if value is None:
                continue
            if many:
                kwargs[name] = [kind.model_validate(v) for v in value]
            else:
                kwargs[name] = kind.model_validate(value)
        return cls(**kwargs)

    parse_obj = model_validate

    @classmethod
    def model_validate_json(cls, text: Any) -> Any:
        """Build from JSON text."""
        return cls.model_validate(json.loads(text))

    parse_raw = model_validate_json

    @classmethod
    def parse_file(cls, path: str) -> Any:
        """Build from a JSON file."""
        with open(path, "rb") as f:
            return cls.model_validate_json(f.read())

    def model_dump(self, exclude_none: bool = True, **kwargs: Any) -> Dict[str, Any]:
        """The message as plain Python: fields (None ones left out, as MLServer's) and nested dicts."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and exclude_none:
                continue
            out[f.name] = _plain(value, exclude_none)
        return out

    dict = model_dump

    def model_dump_json(self, exclude_none: bool = True, **kwargs: Any) -> str:
        """The message as JSON text (arrays as lists, bytes as UTF-8 text)."""
        return json.dumps(_jsonable(self.model_dump(exclude_none=exclude_none)))

    json = model_dump_json

    def model_copy(self, update: Optional[Dict[str, Any]] = None, deep: bool = False) -> Any:
        """A copy, with ``update``'s fields replaced."""
        new = _copy.deepcopy(self) if deep else _copy.copy(self)
        for key, value in (update or {}).items():
            setattr(new, key, value)
        return new

    copy = model_copy


def _plain_datatype(datatype: Any) -> Any:
    """A ``Datatype`` member as its name (MLServer keeps enum values as strings)."""
    return datatype.value if isinstance(datatype, Enum) else datatype


def _tidy_parameters(message: Any) -> None:
    """``parameters`` given as a plain mapping become a ``Parameters``."""
    if type(message.parameters) is dict:
        message.parameters = Parameters(**message.parameters)


def _tidy_tensor(tensor: Any) -> None:
    """A tensor's fields as v2d keeps them: datatype a str, data unwrapped, parameters an object."""
    if type(tensor.datatype) is not str:
        tensor.datatype = _plain_datatype(tensor.datatype)
    if type(getattr(tensor, "data", None)) is TensorData:
        tensor.data = tensor.data.root
    if type(tensor.parameters) is dict:
        tensor.parameters = Parameters(**tensor.parameters)


class HeaderDict(dict):
    """
    Request or response headers: a dict whose lookups ignore the case of names.

    Names are stored lower-cased (as HTTP/2 and gRPC metadata carry them); ``h["X-Id"]``,
    ``h["x-id"]``, ``"X-ID" in h`` and ``h.get("X-Id")`` all find the same header.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for k, v in dict(*args, **kwargs).items():
            super().__setitem__(k.lower(), v)

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key.lower(), value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def pop(self, key: str, *default: Any) -> Any:
        return super().pop(key.lower(), *default)

    def __reduce__(self):
        return (HeaderDict, (dict(self),))


class Parameters:
    """
    A parameters object: ``content_type`` and ``headers`` by name, any other key kept.

    Values are bool, int, float or str (and ``headers`` a dict of str).
    """

    content_type: Optional[str]
    headers: Optional[Dict[str, str]]

    def __init__(
        self,
        content_type: Optional[str] = None,
        headers: Optional[Dict[str, str]] = None,
        **extra: Any,
    ) -> None:
        self.content_type = content_type
        self.headers = headers
        self.__dict__.update(extra)

    @classmethod
    def from_dict(cls, values: Optional[Dict[str, Any]]) -> Optional["Parameters"]:
        """Build from a mapping, or ``None`` from ``None``."""
        if values is None:
            return None
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        """Every key whose value is not ``None`` (the codecs' decoded-payload cache left out)."""
        return {k: v for k, v in self.__dict__.items() if v is not None and k != DECODED_PARAMETER}

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        value = self.__dict__.get(key)
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __contains__(self, key: object) -> bool:
        return self.__dict__.get(key) is not None  # type: ignore[call-overload]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Parameters):
            return NotImplemented
        return values_equal(self.to_dict(), other.to_dict())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"Parameters({inner})"

    # pydantic's spellings, as MLServer's runtimes use them.

    @classmethod
    def model_validate(cls, obj: Any) -> "Parameters":
        """From a mapping (or a Parameters, returned as it is)."""
        if isinstance(obj, Parameters):
            return obj
        if not isinstance(obj, dict):
            raise TypeError(f"parameters must be an object, got {type(obj).__name__}")
        return cls(**obj)

    parse_obj = model_validate

    def model_dump(self, **kwargs: Any) -> Dict[str, Any]:
        """The keys whose values are not None."""
        return self.to_dict()

    dict = model_dump

    def model_dump_json(self, **kwargs: Any) -> str:
        """The JSON text of ``model_dump()``."""
        return json.dumps(_jsonable(self.to_dict()))

    json = model_dump_json


class _Unhidden:
    """
    A method of Parameters that a parameter of the same name cannot hide: a data
    descriptor wins over the instance's ``__dict__``, where the parameter's value stays
    (``get(name)``, ``to_dict()``, iteration see it; setting the attribute sets it).
    """

    def __init__(self, name: str, method: Any) -> None:
        self.name = name
        self.method = method

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        return self.method.__get__(obj, cls)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value

    def __delete__(self, obj: Any) -> None:
        obj.__dict__.pop(self.name, None)


for _name, _value in list(vars(Parameters).items()):
    if (
        not _name.startswith("__")
        and callable(getattr(_value, "__get__", None))
        and (callable(_value) or isinstance(_value, (classmethod, staticmethod)))
    ):
        setattr(Parameters, _name, _Unhidden(_name, _value))
del _name, _value


@dataclass(eq=False)
class RequestInput(_Message):
    """One input tensor of a request."""

    name: str
    shape: List[int]
    datatype: str
    data: Any = None
    parameters: Optional[Parameters] = None

    _NESTED = {"parameters": (Parameters, False)}

    def __post_init__(self) -> None:
        _tidy_tensor(self)


@dataclass(eq=False)
class RequestOutput(_Message):
    """An output the client asks for, by name."""

    name: str
    parameters: Optional[Parameters] = None

    _NESTED = {"parameters": (Parameters, False)}

    def __post_init__(self) -> None:
        _tidy_parameters(self)


@dataclass(eq=False)
class ResponseOutput(_Message):
    """One output tensor of a response."""

    name: str
    shape: List[int]
    datatype: str
    data: Any = None
    parameters: Optional[Parameters] = None

    _NESTED = {"parameters": (Parameters, False)}

    def __post_init__(self) -> None:
        _tidy_tensor(self)


@dataclass(eq=False)
class InferenceRequest(_Message):
    """An inference request."""

    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    inputs: List[RequestInput] = field(default_factory=list)
    outputs: Optional[List[RequestOutput]] = None

    _NESTED = {
        "parameters": (Parameters, False),
        "inputs": (RequestInput, True),
        "outputs": (RequestOutput, True),
    }

    def __post_init__(self) -> None:
        _tidy_parameters(self)


@dataclass(eq=False)
class InferenceResponse(_Message):
    """An inference response."""

    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    outputs: List[ResponseOutput] = field(default_factory=list)

    _NESTED = {"parameters": (Parameters, False), "outputs": (ResponseOutput, True)}

    def __post_init__(self) -> None:
        _tidy_parameters(self)


@dataclass(eq=False)
class MetadataTensor(_Message):
    """A tensor's description in model metadata and model-settings.json."""

    name: str
    datatype: str
    shape: List[int]
    parameters: Optional[Parameters] = None

    _NESTED = {"parameters": (Parameters, False)}

    def __post_init__(self) -> None:
        _tidy_tensor(self)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form of the protocol."""
        out: Dict[str, Any] = {
            "name": self.name,
            "datatype": self.datatype,
            "shape": list(self.shape),
        }
        if self.parameters is not None and self.parameters.to_dict():
            out["parameters"] = self.parameters.to_dict()
        return out


@dataclass(eq=False)
class MetadataModelResponse(_Message):
    """The model metadata response."""

    name: str
    platform: str = ""
    versions: List[str] = field(default_factory=list)
    inputs: List[MetadataTensor] = field(default_factory=list)
    outputs: List[MetadataTensor] = field(default_factory=list)
    parameters: Optional[Parameters] = None

    _NESTED = {
        "inputs": (MetadataTensor, True),
        "outputs": (MetadataTensor, True),
        "parameters": (Parameters, False),
    }

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form of the protocol."""
        out: Dict[str, Any] = {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.parameters is not None and self.parameters.to_dict():
            out["parameters"] = self.parameters.to_dict()
        return out


@dataclass(eq=False)
class MetadataServerResponse(_Message):
    """The server metadata response."""

    name: str
    version: str
    extensions: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form of the protocol."""
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}


# The protocol's error bodies and the repository extension's messages, as MLServer's
# ``mlserver.types`` names them (v2d's transports write these as JSON themselves).


@dataclass(eq=False)
class InferenceErrorResponse(_Message):
    """An inference error body: ``{"error": "..."}``."""

    error: Optional[str] = None


@dataclass(eq=False)
class MetadataServerErrorResponse(_Message):
    """A server metadata error body."""

    error: str = ""


@dataclass(eq=False)
class MetadataModelErrorResponse(_Message):
    """A model metadata error body."""

    error: str = ""


class State(str, Enum):
    """A model's state in the repository index."""

    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"

    def __str__(self) -> str:
        return self.value


@dataclass(eq=False)
class RepositoryIndexRequest(_Message):
    """A repository index request (``ready``: only models that are, or are not, ready)."""

    ready: Optional[bool] = None


@dataclass(eq=False)
class RepositoryIndexResponseItem(_Message):
    """One model of the repository index."""

    name: str
    state: str
    reason: str = ""
    version: Optional[str] = None


class RepositoryIndexResponse(list):
    """The repository index: a list of ``RepositoryIndexResponseItem`` (``root`` is the list)."""

    @property
    def root(self) -> List[RepositoryIndexResponseItem]:
        return list(self)


@dataclass(eq=False)
class RepositoryLoadErrorResponse(_Message):
    """A model load error body."""

    error: Optional[str] = None


@dataclass(eq=False)
class RepositoryUnloadErrorResponse(_Message):
    """A model unload error body."""

    error: Optional[str] = None
