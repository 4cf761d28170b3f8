"""
The protocol's protobuf message classes, built from v2d/grpc/generated/descriptors.py
in a private descriptor pool.

A private pool keeps v2d's ``inference`` package apart from any other copy of it in the
same process (tritonclient ships one, and a runtime may import it).
"""

from __future__ import annotations

from typing import Any, Dict

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from v2d.grpc.generated.descriptors import FILE_DESCRIPTOR_SET

__all__ = ["POOL", "SERVICE_NAME", "message_class", "pb"]

SERVICE_NAME = "inference.GRPCInferenceService"

POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET).file:
    POOL.Add(_file)


def message_class(full_name: str) -> Any:
    """The message class of ``full_name`` (e.g. ``inference.ModelInferRequest``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


class _Namespace:
    """Message classes by short name: ``pb.ModelInferRequest``."""

    def __init__(self, package: str) -> None:
        self._package = package
        self._cache: Dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            cls = message_class(f"{self._package}.{name}")
        except KeyError:
            raise AttributeError(f"no message {self._package}.{name}") from None
        self.__dict__[name] = cls
        return cls


#: The ``inference`` package's message classes.
pb = _Namespace("inference")

#: The ``inference.DataType`` enum's values by name.
DATA_TYPES = {v.name: v.number for v in POOL.FindEnumTypeByName("inference.DataType").values}
