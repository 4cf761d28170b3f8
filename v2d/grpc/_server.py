"""
The gRPC server: grpc.aio on the reactor's own asyncio loop, started and stopped
through Deferreds (v2d.aio is the seam).

It serves ``inference.GRPCInferenceService``, ``grpc.health.v1.Health`` (from
readiness) and server reflection, with the configured message size limit and optional
TLS.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from v2d.aio import as_deferred
from v2d.grpc._health import ReadinessHealth
from v2d.grpc._messages import POOL, SERVICE_NAME
from v2d.grpc._service import InferenceServicer

__all__ = ["GRPCServer", "reflection_pool"]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A descriptor pool with every file the server serves, for reflection."""
    pool = descriptor_pool.DescriptorPool()
    seen = set()
    files = [POOL.FindFileByName(n) for n in ("model_config.proto", "grpc_service.proto")]
    files += [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    for file in files:
        for dep in list(file.dependencies) + [file]:
            if dep.name in seen:
                continue
            seen.add(dep.name)
            proto = descriptor_pb2.FileDescriptorProto()
            dep.CopyToProto(proto)
            pool.Add(proto)
    return pool


def _loop(reactor: Any) -> asyncio.AbstractEventLoop:
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        raise RuntimeError(
            "the gRPC server needs Twisted's asyncio reactor (twisted.internet.asyncioreactor)"
        )
    return loop


class GRPCServer:
    """``start()`` fires when listening; ``stop(grace)`` when every call has ended."""

    log = Logger()

    def __init__(self, dataplane: Any, settings: Any, reactor: Any) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.reactor = reactor
        self.server: Optional[grpc.aio.Server] = None
        self.port: Optional[int] = None

    def options(self) -> List[tuple]:
        size = int(self.settings.grpc_max_message_size)
        return [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.so_reuseport", 0),
        ]

    def start(self) -> Deferred:
        return as_deferred(self._start(), loop=_loop(self.reactor))

    async def _start(self) -> int:
        server = grpc.aio.server(options=self.options())
        servicer = InferenceServicer(self.dataplane)
        server.add_generic_rpc_handlers((servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(self.dataplane), server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME], server, pool=reflection_pool()
        )
        address = self.settings.grpc
        if self.settings.grpc_tls_cert:
            with open(self.settings.grpc_tls_cert, "rb") as f:
                cert = f.read()
            with open(self.settings.grpc_tls_key, "rb") as f:
                key = f.read()
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"gRPC cannot listen on {address}")
        await server.start()
        self.server, self.port = server, port
        self.log.info(
            "gRPC listening on {address}{tls}",
            address=address,
            tls=" (TLS)" if self.settings.grpc_tls_cert else "",
        )
        return port

    def stop(self, grace_seconds: Optional[float] = None) -> Deferred:
        """Stop accepting calls; let calls in progress finish for up to ``grace_seconds``."""
        server, self.server = self.server, None
        if server is None:
            return as_deferred(None)
        return as_deferred(server.stop(grace_seconds), loop=_loop(self.reactor))
