"""
The Open Inference Protocol over gRPC: grpc.aio on the reactor's asyncio loop.

``GRPCServer(dataplane, settings, reactor)`` serves ``inference.GRPCInferenceService``
(with Triton's streaming, model configuration and repository extensions), the standard
health service and server reflection.

``GRPCServer`` is imported on first use, so that worker children (which have protobuf
but not grpcio) can use this package's message conversions (``v2d.grpc._encoded``).
"""

from typing import Any

__all__ = ["GRPCServer"]


def __getattr__(name: str) -> Any:
    if name == "GRPCServer":
        from v2d.grpc._server import GRPCServer

        return GRPCServer
    raise AttributeError(f"module 'v2d.grpc' has no attribute {name!r}")
