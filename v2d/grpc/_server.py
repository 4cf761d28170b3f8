"""
The gRPC server: grpc.aio on the reactor's own asyncio loop, started and stopped
through Deferreds (v2d.aio is the seam).

It serves ``inference.GRPCInferenceService``, ``grpc.health.v1.Health`` (from
readiness) and server reflection, with the configured message size limit, optional
TLS (and client certificates: mutual TLS), and the restricted groups of
``grpc_restricted_protocol`` refused without their metadata (PERMISSION_DENIED).
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from v2d._twisted import asyncio_loop
from v2d.aio import as_deferred
from v2d.grpc._h2 import H2Server, listen
from v2d.grpc._health import ReadinessHealth
from v2d.grpc._messages import POOL, SERVICE_NAME
from v2d.grpc._service import InferenceServicer
from v2d.restricted import GRPC_METADATA_PREFIX, Restrictions, grpc_group

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


def _tls_note(settings: Any) -> str:
    if settings.grpc_tls_client_ca:
        return " (TLS, client certificates required)"
    return " (TLS)" if settings.grpc_tls_cert else ""


def _refuse(message: str) -> Any:
    async def refuse(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    return refuse


class RestrictedInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to restricted groups (v2d.restricted) that lack the opening metadata."""

    _PREFIXES = ("", GRPC_METADATA_PREFIX)

    def __init__(self, restrictions: Restrictions) -> None:
        self.restrictions = restrictions

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        group = grpc_group(details.method)
        if handler is None or group is None or group not in self.restrictions.by_group:
            return handler
        metadata = {}
        for key, value in details.invocation_metadata or ():
            if isinstance(value, str):
                metadata[key.lower()] = value
        message = self.restrictions.refusal(group, metadata, self._PREFIXES)
        if message is None:
            return handler
        refuse = _refuse(message)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(bool(handler.request_streaming), bool(handler.response_streaming))]
        return make(
            refuse,
            request_deserializer=None,  # refused unread
            response_serializer=handler.response_serializer,
        )


def _loop(reactor: Any) -> asyncio.AbstractEventLoop:
    loop = asyncio_loop(reactor)
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
        self.server: Optional[Any] = None  # a grpc.aio.Server, or an H2Server
        self.port: Optional[int] = None

    def options(self) -> List[tuple]:
        size = int(self.settings.grpc_max_message_size)
        return [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.so_reuseport", 0),
        ]

    def start(self) -> Deferred:
        if self.settings.grpc_engine == "h2":
            return defer.ensureDeferred(self._start_h2())
        return as_deferred(self._start(), loop=_loop(self.reactor))

    def _interceptors(self) -> List[Any]:
        restrictions = Restrictions.parse(self.settings.grpc_restricted_protocol, "grpc_restricted_protocol")
        return [RestrictedInterceptor(restrictions)] if restrictions else []

    def _add_services(self, server: Any) -> None:
        """The inference service, health and reflection, on either engine's server."""
        servicer = InferenceServicer(self.dataplane)
        server.add_generic_rpc_handlers((servicer.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(self.dataplane), server)
        names = [SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names, pool=reflection_pool()), server
        )

    def _tls(self) -> Optional[tuple]:
        """(certificate chain, key, client CA or None) as bytes, when TLS is set."""
        if not self.settings.grpc_tls_cert:
            return None
        with open(self.settings.grpc_tls_cert, "rb") as f:
            cert = f.read()
        with open(self.settings.grpc_tls_key, "rb") as f:
            key = f.read()
        client_ca = None
        if self.settings.grpc_tls_client_ca:
            with open(self.settings.grpc_tls_client_ca, "rb") as f:
                client_ca = f.read()
        return cert, key, client_ca

    def _listening(self, address: str) -> None:
        self.log.info("gRPC listening on {address}{tls}", address=address, tls=_tls_note(self.settings))

    async def _start_h2(self) -> int:
        size = int(self.settings.grpc_max_message_size)
        server = H2Server(self.reactor, max_receive=size, max_send=size, interceptors=self._interceptors())
        self._add_services(server)
        self.port = await listen(server, self.reactor, self.settings.grpc, self._tls())
        self.server = server
        self._listening(f"{self.settings.grpc} (h2)")
        return self.port

    async def _start(self) -> int:
        server = grpc.aio.server(options=self.options(), interceptors=self._interceptors())
        self._add_services(server)
        address = self.settings.grpc
        tls = self._tls()
        if tls is not None:
            cert, key, client_ca = tls
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"gRPC cannot listen on {address}")
        await server.start()
        self.server, self.port = server, port
        self._listening(f"{address} (grpcio)")
        return port

    def stop(self, grace_seconds: Optional[float] = None) -> Deferred:
        """Stop accepting calls; let calls in progress finish for up to ``grace_seconds``."""
        server, self.server = self.server, None
        if server is None:
            return as_deferred(None)
        if isinstance(server, H2Server):
            return server.stop(grace_seconds)
        return as_deferred(server.stop(grace_seconds), loop=_loop(self.reactor))
