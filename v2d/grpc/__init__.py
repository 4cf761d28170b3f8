"""
The Open Inference Protocol over gRPC: grpc.aio on the reactor's asyncio loop.

``GRPCServer(dataplane, settings, reactor)`` serves ``inference.GRPCInferenceService``
(with Triton's streaming, model configuration and repository extensions), the standard
health service and server reflection.
"""

from v2d.grpc._server import GRPCServer

__all__ = ["GRPCServer"]
