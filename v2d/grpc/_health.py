"""
``grpc.health.v1.Health`` served from the dataplane's readiness.

The service ``""`` is the whole server (SERVING when the server is ready); any other
service name is a model name (SERVING when that model is ready, NOT_FOUND when there
is no such model). ``Watch`` re-checks readiness every ``interval`` seconds and sends
each change.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from v2d.errors import NotFound

__all__ = ["ReadinessHealth"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class ReadinessHealth(health_pb2_grpc.HealthServicer):
    """The standard health service over a dataplane."""

    def __init__(self, dataplane: Any, interval: float = 1.0) -> None:
        self.dataplane = dataplane
        self.interval = interval

    def status(self, service: str) -> Any:
        """SERVING or NOT_SERVING; NotFound for an unknown model."""
        if service == "":
            return SERVING if self.dataplane.ready() else NOT_SERVING
        if self.dataplane.draining:
            return NOT_SERVING
        # model_ready raises ModelNotFound (a NotFound) for an unknown model.
        return SERVING if self.dataplane.model_ready(service) else NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        try:
            return health_pb2.HealthCheckResponse(status=self.status(request.service))
        except NotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, e.message)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        last = None
        while True:
            try:
                status = self.status(request.service)
            except NotFound:
                status = SERVICE_UNKNOWN
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            await asyncio.sleep(self.interval)
