"""
The Open Inference Protocol's messages as plain Python objects.

These are what runtimes receive and return. They are transport-free: REST and gRPC
decode their wire formats into them and encode them back. Numeric tensor data travels
as numpy arrays (already shaped); BYTES data as a flat list of ``bytes`` or ``str``.

This module is imported by worker children running other Pythons (3.9 and up), so it
uses only the standard library and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

__all__ = [
    "DATATYPES",
    "HeaderDict",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataModelResponse",
    "MetadataServerResponse",
    "MetadataTensor",
    "Parameters",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "datatype_of",
    "numpy_dtype",
]

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
        """Every key whose value is not ``None``."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

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
        return self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"Parameters({inner})"


@dataclass(eq=False)
class RequestInput:
    """One input tensor of a request."""

    name: str
    shape: List[int]
    datatype: str
    data: Any = None
    parameters: Optional[Parameters] = None


@dataclass(eq=False)
class RequestOutput:
    """An output the client asks for, by name."""

    name: str
    parameters: Optional[Parameters] = None


@dataclass(eq=False)
class ResponseOutput:
    """One output tensor of a response."""

    name: str
    shape: List[int]
    datatype: str
    data: Any = None
    parameters: Optional[Parameters] = None


@dataclass(eq=False)
class InferenceRequest:
    """An inference request."""

    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    inputs: List[RequestInput] = field(default_factory=list)
    outputs: Optional[List[RequestOutput]] = None


@dataclass(eq=False)
class InferenceResponse:
    """An inference response."""

    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[Parameters] = None
    outputs: List[ResponseOutput] = field(default_factory=list)


@dataclass
class MetadataTensor:
    """A tensor's description in model metadata and model-settings.json."""

    name: str
    datatype: str
    shape: List[int]
    parameters: Optional[Parameters] = None

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


@dataclass
class MetadataModelResponse:
    """The model metadata response."""

    name: str
    platform: str = ""
    versions: List[str] = field(default_factory=list)
    inputs: List[MetadataTensor] = field(default_factory=list)
    outputs: List[MetadataTensor] = field(default_factory=list)
    parameters: Optional[Parameters] = None

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


@dataclass
class MetadataServerResponse:
    """The server metadata response."""

    name: str
    version: str
    extensions: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form of the protocol."""
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}
