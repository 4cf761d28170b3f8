"""
Restricted APIs: groups of endpoints served only to requests that carry a configured
header and value (Triton's ``--http-restricted-api`` / ``--grpc-restricted-protocol``).

A restriction is written ``GROUP[,GROUP...]:KEY=VALUE``, for example
``model-repository:admin-key=s3cret``. A request to an endpoint of a restricted group
must carry the header (REST) or metadata (gRPC) ``KEY`` with exactly ``VALUE``; gRPC
also takes ``triton-grpc-protocol-KEY``, as Triton's clients send it. Other requests
are refused with 403 / PERMISSION_DENIED. A group may be named in one restriction only.

Transport-free and standard library only: the REST router and the gRPC server classify
their own endpoints into the groups here and ask ``Restrictions.refusal``.
"""

from __future__ import annotations

import hmac
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "GROUPS",
    "GRPC_METADATA_PREFIX",
    "Restriction",
    "Restrictions",
    "grpc_group",
    "rest_group",
]

#: The groups of endpoints a restriction can name.
GROUPS = (
    "health",
    "metadata",
    "inference",
    "model-config",
    "model-repository",
    "shared-memory",
    "metrics",
    "custom",
)

#: Triton's clients send a gRPC restriction key as this prefix + the key.
GRPC_METADATA_PREFIX = "triton-grpc-protocol-"

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class Restriction:
    """One group set and the header (name lower-cased) and value that open it."""

    __slots__ = ("groups", "key", "value")

    def __init__(self, groups: Sequence[str], key: str, value: str) -> None:
        self.groups = tuple(groups)
        self.key = key.lower()
        self.value = value

    def allows(self, headers: Any, prefixes: Tuple[str, ...] = ("",)) -> bool:
        """Whether ``headers`` (a mapping, or anything with ``get(name)``) carry the key with the value."""
        expected = self.value.encode("utf-8")
        for prefix in prefixes:
            sent = headers.get(prefix + self.key)
            if sent is not None and hmac.compare_digest(sent.encode("utf-8"), expected):
                return True
        return False


def _parse_one(text: str, where: str) -> Restriction:
    groups_text, sep, assignment = text.partition(":")
    key, eq, value = assignment.partition("=")
    if not sep or not eq:
        raise ValueError(f"{where}: {text!r} is not GROUP[,GROUP...]:KEY=VALUE")
    groups = [g.strip() for g in groups_text.split(",") if g.strip()]
    if not groups:
        raise ValueError(f"{where}: {text!r} names no group (one of {', '.join(GROUPS)})")
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"{where}: unknown group {group!r} (expected one of {', '.join(GROUPS)})")
    key = key.strip()
    if not _HEADER_NAME.match(key):
        raise ValueError(f"{where}: {key!r} is not a header name")
    if not value:
        raise ValueError(f"{where}: the value for {key!r} is empty")
    return Restriction(groups, key, value)


class Restrictions:
    """The restrictions of one transport, by group."""

    def __init__(self, restrictions: Iterable[Restriction] = ()) -> None:
        self.by_group: Dict[str, Restriction] = {}
        for restriction in restrictions:
            for group in restriction.groups:
                self.by_group[group] = restriction

    def __bool__(self) -> bool:
        return bool(self.by_group)

    @classmethod
    def parse(cls, entries: Optional[Sequence[str]], where: str) -> "Restrictions":
        """
        From the setting's entries (``GROUPS:KEY=VALUE`` each); ValueError naming the
        problem. An entry without ``:`` continues into the next one, so a comma-separated
        variable (``health,metadata:k=v``, split at its commas) reads as written.
        """
        parsed: List[Restriction] = []
        pending: List[str] = []
        for entry in entries or ():
            if ":" not in entry:
                pending.append(entry)
                continue
            parsed.append(_parse_one(",".join(pending + [entry]), where))
            pending = []
        if pending:
            raise ValueError(f"{where}: {','.join(pending)!r} is not GROUP[,GROUP...]:KEY=VALUE")
        seen = {}
        for restriction in parsed:
            for group in restriction.groups:
                if group in seen:
                    raise ValueError(f"{where}: group {group!r} is named in more than one restriction")
                seen[group] = restriction
        return cls(parsed)

    def refusal(self, group: Optional[str], headers: Any, prefixes: Tuple[str, ...] = ("",)) -> Optional[str]:
        """None if a request to ``group`` may pass, else the message to refuse it with."""
        if group is None:
            return None
        restriction = self.by_group.get(group)
        if restriction is None or restriction.allows(headers, prefixes):
            return None
        return f"the {group} API is restricted: this request lacks the header that opens it"


_MODEL = rb"/v2/models/[^/]+(?:/versions/[^/]+)?"
_REST_GROUPS = [
    (re.compile(rb"^/v2/health/[^/]+$"), "health"),
    (re.compile(_MODEL + rb"/ready$"), "health"),
    (re.compile(_MODEL + rb"/(?:infer|infer_stream|generate|generate_stream)$"), "inference"),
    (re.compile(_MODEL + rb"/config$"), "model-config"),
    (re.compile(rb"^/v2/repository(?:/.*)?$"), "model-repository"),
    (re.compile(rb"^/v2/(?:system|cuda)sharedmemory(?:/.*)?$"), "shared-memory"),
    (re.compile(rb"^/v2/?$"), "metadata"),
    (re.compile(_MODEL + rb"/?$"), "metadata"),
]


def rest_group(path: bytes, metrics_path: Optional[bytes] = None) -> str:
    """The group of a REST path (root path already taken off): other paths are ``custom``."""
    if metrics_path is not None and path == metrics_path:
        return "metrics"
    for pattern, group in _REST_GROUPS:
        if pattern.match(path):
            return group
    return "custom"


_GRPC_GROUPS = {
    "/inference.GRPCInferenceService/ServerLive": "health",
    "/inference.GRPCInferenceService/ServerReady": "health",
    "/inference.GRPCInferenceService/ModelReady": "health",
    "/inference.GRPCInferenceService/ServerMetadata": "metadata",
    "/inference.GRPCInferenceService/ModelMetadata": "metadata",
    "/inference.GRPCInferenceService/ModelInfer": "inference",
    "/inference.GRPCInferenceService/ModelStreamInfer": "inference",
    "/inference.GRPCInferenceService/ModelConfig": "model-config",
    "/inference.GRPCInferenceService/RepositoryIndex": "model-repository",
    "/inference.GRPCInferenceService/RepositoryModelLoad": "model-repository",
    "/inference.GRPCInferenceService/RepositoryModelUnload": "model-repository",
    "/inference.GRPCInferenceService/SystemSharedMemoryStatus": "shared-memory",
    "/inference.GRPCInferenceService/SystemSharedMemoryRegister": "shared-memory",
    "/inference.GRPCInferenceService/SystemSharedMemoryUnregister": "shared-memory",
    "/inference.GRPCInferenceService/CudaSharedMemoryStatus": "shared-memory",
    "/inference.GRPCInferenceService/CudaSharedMemoryRegister": "shared-memory",
    "/inference.GRPCInferenceService/CudaSharedMemoryUnregister": "shared-memory",
}


def grpc_group(method: str) -> Optional[str]:
    """The group of a gRPC method (``/package.Service/Method``); None for unknown methods."""
    group = _GRPC_GROUPS.get(method)
    if group is not None:
        return group
    if method.startswith("/grpc.health.v1.Health/"):
        return "health"
    if method.startswith("/grpc.reflection."):
        return "metadata"
    return None
