"""
The v2d service: wires repository, registry, dataplane, transports and workers, and
owns start-up and the ordered shutdown.

Start: listen (so liveness answers at once), then load every model (readiness follows;
with ``load_models_at_startup`` off, none: the repository API loads them).
Stop: stop listening, drain requests in flight (with a deadline), unload models, end
worker processes; ``stopService`` fires only when all of that is done, and twistd
waits for it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.logger import Logger

from v2d.batching import batching_wrapper
from v2d.dataplane import DataPlane
from v2d.interfaces import IModelFactory
from v2d.memory import FreedMemoryTrim
from v2d.metrics import Metrics, MetricsListenerResource, MetricsResource
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.rest import RestAPI, make_site
from v2d.rest._cors import CORSPolicy
from v2d.rest._custom import CustomRoutes, klein_serves
from v2d.rest._router import RootResource
from v2d.settings import ModelSettings, Settings
from v2d.wrappers import LocalModelFactory

__all__ = ["V2DService", "workers_for"]


def workers_for(settings: Settings, model: ModelSettings) -> int:
    """How many worker processes a model gets (0: in-process); see ``--workers`` in docs/settings.md."""
    if model.parallel_workers is not None:
        return model.parallel_workers
    has_environment = bool(model.parameters.environment_tarball or model.parameters.environment_path)
    if has_environment and settings.workers == 0:
        return 1
    return settings.workers


class V2DService(Service):
    """The whole daemon as one Twisted service."""

    log = Logger()

    def __init__(self, settings: Settings, reactor: Any, environ: Optional[dict] = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.repository = ModelRepository(settings.models, dict(os.environ if environ is None else environ))
        self.metrics = Metrics(inflight=lambda: self.dataplane.inflight)
        self.local_factory = LocalModelFactory(metrics=self.metrics)
        self.worker_pool: Optional[Any] = None
        self.custom_routes = CustomRoutes(reserved=self._reserved, draining=lambda: self.dataplane.draining)
        self.registry = ModelRegistry(
            factory_for=self.factory_for,
            wrap=batching_wrapper(reactor),
            on_ready=self.custom_routes.mount,
            on_unload=self.custom_routes.unmount,
        )
        self.dataplane = DataPlane(
            registry=self.registry,
            repository=self.repository,
            server_name=settings.server_name,
            server_version=settings.server_version,
            extensions=self.extensions() if settings.extensions is None else list(settings.extensions),
            strict_readiness=settings.strict_readiness,
        )
        # Metrics are always collected (runtimes' own metrics are recorded even when
        # nothing serves them); they are served on the REST endpoints, on a listener of
        # their own (``metrics``), or not at all (``metrics_path`` none).
        self.metrics_site: Optional[Any] = None
        self.fixed_paths: Dict[bytes, Any] = {}
        if settings.metrics_path is not None:
            self.dataplane.observer = self.metrics.observe
            if settings.metrics:
                listener = MetricsListenerResource(self.metrics, settings.metrics_path)
                self.metrics_site = make_site(
                    listener,
                    64 * 1024,
                    settings.access_logged,
                    read_timeout=settings.request_read_timeout,
                    reactor=reactor,
                )
            else:
                self.fixed_paths[settings.metrics_path.encode("utf-8")] = MetricsResource(self.metrics)
        self.rest = RestAPI(self.dataplane)
        self.freed_memory = FreedMemoryTrim(settings.retain_memory, reactor.callLater)
        cors = CORSPolicy(settings.cors_settings) if settings.cors_settings is not None else None
        root = RootResource(
            self.rest,
            self.rest.app.resource(),
            self.fixed_paths,
            routes=self.custom_routes,
            root_path=settings.root_path,
            cors=cors,
        )
        self.site = make_site(
            root,
            settings.max_body_size,
            settings.access_logged,
            max_bodies_in_flight=settings.max_bodies_in_flight,
            read_timeout=settings.request_read_timeout,
            trim=self.freed_memory,
            reactor=reactor,
        )
        self.ports: List[Any] = []
        self.grpc_server: Optional[Any] = None
        self._loaded: Optional[Deferred] = None

    def _reserved(self, method: str, path: str) -> bool:
        """Whether v2d serves (method, path) itself (no custom handler may take it)."""
        return path.encode("utf-8") in self.fixed_paths or klein_serves(self.rest.app, method, path)

    def extensions(self) -> List[str]:
        """The protocol extensions this server offers."""
        return ["model_repository", "model_configuration", "binary_tensor_data"]

    # -- models in and out of process ------------------------------------------

    def factory_for(self, model: ModelSettings) -> IModelFactory:
        """The factory that builds a model: in this process, or in worker processes."""
        count = workers_for(self.settings, model)
        if count == 0:
            return self.local_factory
        return self._workers().model_factory(model, count)

    def _workers(self) -> Any:
        if self.worker_pool is None:
            from v2d.workers import WorkerPool

            self.worker_pool = WorkerPool(reactor=self.reactor, settings=self.settings, metrics=self.metrics)
        return self.worker_pool

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.settings.retain_memory:
            self.freed_memory.start()
        d = self._start()
        d.addErrback(self._failed_start)

    @inlineCallbacks
    def _start(self) -> Any:
        for description in self.settings.rest:
            endpoint = endpoints.serverFromString(self.reactor, description)
            port = yield endpoint.listen(self.site)
            self.ports.append(port)
            self.log.info("REST listening on {address}", address=_describe(port))
        if self.metrics_site is not None:
            endpoint = endpoints.serverFromString(self.reactor, self.settings.metrics)
            port = yield endpoint.listen(self.metrics_site)
            self.ports.append(port)
            self.log.info(
                "metrics listening on {address}{path}",
                address=_describe(port),
                path=self.settings.metrics_path,
            )
        if self.settings.grpc:
            yield self._start_grpc()
        if not self.settings.load_models_at_startup:
            self.dataplane.started = True
            self.log.info(
                "load_models_at_startup is off: no model loaded; load them with "
                "POST /v2/repository/models/{{name}}/load"
            )
            return
        self._loaded = self.dataplane.load_all()
        yield self._loaded
        ready = [n for n in self.registry.names() if self.registry.ready(n)]
        self.log.info("{n} model(s) ready: {names}", n=len(ready), names=", ".join(ready) or "-")

    def _start_grpc(self) -> Deferred:
        try:
            from v2d.grpc import GRPCServer
        except ImportError:
            self.log.warn("gRPC is not available in this build; serving REST only")
            return succeed(None)
        self.grpc_server = GRPCServer(self.dataplane, self.settings, self.reactor)
        return self.grpc_server.start()

    def _failed_start(self, failure: Any) -> None:
        self.log.failure("v2d failed to start", failure)
        # twistd always exits 0 once its reactor stops; a daemon that could not start
        # must exit non-zero so that systemd, Docker or Kubernetes see the failure.
        # (A listen can fail before the reactor runs: stop it as soon as it does.)
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred:
        super().stopService()
        self.freed_memory.stop()
        return self._stop()

    @inlineCallbacks
    def _stop(self) -> Any:
        self.log.info("stopping: no new connections, draining requests in flight")
        yield gatherResults([succeed(p.stopListening()) for p in self.ports], consumeErrors=True)
        self.ports = []
        grpc_stopped = (
            self.grpc_server.stop(self.settings.shutdown_timeout) if self.grpc_server else succeed(None)
        )
        yield self.dataplane.drain(self.reactor, self.settings.shutdown_timeout)
        yield grpc_stopped
        self.log.info("unloading models")
        yield self.registry.unload_all()
        if self.worker_pool is not None:
            self.log.info("stopping worker processes")
            yield self.worker_pool.stop()
        self.log.info("stopped")


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _describe(port: Any) -> str:
    try:
        host = port.getHost()
    except Exception:
        return repr(port)
    address = getattr(host, "host", None)
    if address is not None:
        return f"{address}:{host.port}"
    return str(getattr(host, "name", host))
