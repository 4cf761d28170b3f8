"""
The v2d service: wires repository, registry, dataplane, transports and workers, and
owns start-up and the ordered shutdown.

Start: listen (so liveness answers at once), then load every model (readiness follows;
with ``load_models_at_startup`` off, none: the repository API loads them).
Stop: stop listening (REST, metrics and gRPC; the drain begins once every listener has
closed), drain requests in flight (``shutdown_timeout``; what is still in
flight then is answered 503), unload models and end worker processes (those still
running ``KILL_GRACE`` s later are TERMed, then KILLed); ``stopService`` fires when all
of that is done, and at the latest ``shutdown_timeout + KILL_GRACE`` s (plus a second)
after it began; twistd waits for it.

SIGHUP reloads the model repository (``reload_repository``): models whose folder
changed are reloaded (the old version serves until the new one is ready), new
folders loaded and models whose folder is gone unloaded; nothing else stops.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

from v2d.batching import batching_wrapper
from v2d.dataplane import DataPlane
from v2d.interfaces import IModelFactory
from v2d.memory import FreedMemoryTrim
from v2d.metrics import Metrics, MetricsListenerResource, MetricsResource
from v2d.registry import UNAVAILABLE, ModelRegistry
from v2d.repository import ModelRepository, _is_environment
from v2d.rest import RestAPI, make_site
from v2d.rest._cors import CORSPolicy
from v2d.rest._custom import CustomRoutes, klein_serves
from v2d.rest._router import RootResource
from v2d.restricted import Restrictions
from v2d.settings import ModelSettings, Settings
from v2d.shm import EXTENSION, SharedMemoryRegistry
from v2d.wrappers import LocalModelFactory, LoopWatch, ModelThreads

__all__ = ["KILL_GRACE", "V2DService", "folder_fingerprint", "workers_for"]

#: Seconds after the drain during which models unload and worker processes exit on
#: their own; then TERM, and KILL 2 s later (``WorkerPool.term_after + kill_after``).
KILL_GRACE = 5.0
#: Seconds after the drain for the answers written to go out before the REST
#: connections are cut (within KILL_GRACE: a client that does not read is not waited for).
FLUSH_GRACE = 1.0
#: Seconds past ``shutdown_timeout + KILL_GRACE`` after which a shutdown stuck in a
#: blocked loop ends the process (exit code 1).
STUCK_GRACE = 5.0


def start_failure_reason(error: BaseException) -> Optional[str]:
    """One line for a start-up failure the operator can fix (a port in use), else None."""
    if isinstance(error, CannotListenError):
        why = getattr(error.socketError, "strerror", None) or str(error.socketError)
        where = f"{error.interface or '0.0.0.0'}:{error.port}"
        return f"cannot listen on {where} (REST): {why.lower()}; is another server using the port?"
    bound = re.search(r"[Ff]ailed to bind to address (\S+?);", str(error))  # grpc.aio's words
    if bound is not None:
        return f"cannot listen on {bound.group(1)} (gRPC): the address is in use or not available here"
    return None


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
        self.model_threads = ModelThreads(reactor)
        self.local_factory = LocalModelFactory(
            metrics=self.metrics, threads=self.model_threads, watch=LoopWatch(settings.blocked_loop_warning)
        )
        self.worker_pool: Optional[Any] = None
        self.custom_routes = CustomRoutes(
            reserved=self._reserved,
            draining=lambda: self.dataplane.draining,
            counted=lambda d, answer: self.dataplane.counted(d, answer),
        )
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
            shared_memory=SharedMemoryRegistry(),
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
            restrictions=Restrictions.parse(settings.http_restricted_api, "http_restricted_api"),
            metrics_path=None if settings.metrics else (settings.metrics_path or "").encode() or None,
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
        #: Model name -> fingerprint of its folders as last loaded (see ``reload_repository``).
        self._fingerprints: Dict[str, str] = {}
        self._reloading: Optional[Deferred] = None
        self._previous_sighup: Any = None

    def _reserved(self, method: str, path: str) -> bool:
        """Whether v2d serves (method, path) itself (no custom handler may take it)."""
        return path.encode("utf-8") in self.fixed_paths or klein_serves(self.rest.app, method, path)

    def extensions(self) -> List[str]:
        """The protocol extensions this server offers."""
        return ["model_repository", "model_configuration", "binary_tensor_data", EXTENSION]

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

            self.worker_pool = WorkerPool(
                reactor=self.reactor,
                settings=self.settings,
                metrics=self.metrics,
                term_after=KILL_GRACE - 2.0,
                kill_after=2.0,
            )
        return self.worker_pool

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # once the reactor runs (after its own SIGINT/SIGTERM handlers are in place)
        self.reactor.callWhenRunning(self._install_sighup)
        if self.settings.retain_memory:
            self.freed_memory.start()
        d = self._start()
        d.addErrback(self._failed_start)

    # -- SIGHUP: reload the model repository ------------------------------------

    def _install_sighup(self) -> None:
        """SIGHUP -> ``reload_repository`` on the reactor's thread (as Twisted's SIGTERM)."""
        if not self.running or not hasattr(signal, "SIGHUP"):
            return
        if threading.current_thread() is not threading.main_thread():
            return

        def hangup(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload_repository)

        self._previous_sighup = signal.signal(signal.SIGHUP, hangup)

    def _remove_sighup(self) -> None:
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None

    def _fingerprint_all(self) -> Dict[str, str]:
        folders: Dict[str, List[str]] = {}
        for found in self.repository.discover():
            folders.setdefault(found.name, []).append(found.folder)
        return {name: folder_fingerprint(paths) for name, paths in folders.items()}

    def reload_repository(self) -> Deferred:
        """
        Bring the served models in line with the repository on disk: reload each
        model whose folder changed since it was loaded (a swap: its old version serves,
        also its requests in flight, until the new one is ready, and stays if the new
        one fails), load new folders and unload models whose folder is gone (the last
        two only with ``load_models_at_startup``, else the repository API decides what
        is loaded). Failures are logged; the server keeps serving. SIGHUP calls it.
        """
        if self.dataplane.draining or not self.running:
            return succeed(None)
        if self._reloading is not None:
            self.log.info("SIGHUP: a repository reload is under way; this one is ignored")
            return succeed(None)
        self.log.info("SIGHUP: reloading the model repository {root}", root=self.settings.models)
        reloading = self._reloading = maybeDeferred(self._reload)

        def done(result: Any) -> None:
            self._reloading = None
            if isinstance(result, Failure):
                self.log.failure("SIGHUP: repository reload failed", result)

        return reloading.addBoth(done)

    @inlineCallbacks
    def _reload(self) -> Any:
        if self._loaded is not None and not self._loaded.called:
            yield self._loaded
        self.repository.invalidate()  # a reload reads every folder afresh
        current = self._fingerprint_all()
        loaded = set(self.registry.names())
        everything = self.settings.load_models_at_startup
        changed = sorted(n for n in current if n in loaded and current[n] != self._fingerprints.get(n))
        new = sorted(n for n in current if n not in loaded) if everything else []
        gone = sorted(n for n in loaded if n not in current and self._serving(n)) if everything else []
        unchanged = len([n for n in current if n in loaded and n not in changed])
        self._fingerprints.update(current)
        for name in gone:
            self._fingerprints.pop(name, None)
        pending = []
        for name in changed + new:
            self.log.info(
                "SIGHUP: {action} model {model}",
                action="reloading changed" if name in loaded else "loading new",
                model=name,
            )
            pending.append(maybeDeferred(self.dataplane.load_model, name).addErrback(lambda f: None))
        for name in gone:
            self.log.info("SIGHUP: unloading model {model}: its folder is gone", model=name)
            pending.append(maybeDeferred(self.dataplane.unload_model, name).addErrback(lambda f: None))
        yield gatherResults(pending)
        self.log.info(
            "SIGHUP: repository reloaded: {changed} reloaded, {new} loaded, {gone} unloaded, "
            "{unchanged} unchanged",
            changed=len(changed),
            new=len(new),
            gone=len(gone),
            unchanged=unchanged,
        )

    def _serving(self, name: str) -> bool:
        """Whether a model is loaded or failed (not unloaded on purpose)."""
        states = self.registry.states().get(name, [])
        return any(state != UNAVAILABLE or reason != "unloaded" for _, state, reason in states)

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
        self._fingerprints = self._fingerprint_all()
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
        reason = start_failure_reason(failure.value)
        if reason is None:
            self.log.failure("v2d failed to start", failure)
        else:  # one line, no traceback: the operator can fix this
            self.log.critical("v2d failed to start: {reason}", reason=reason)
        # twistd always exits 0 once its reactor stops; a daemon that could not start
        # must exit non-zero so that systemd, Docker or Kubernetes see the failure.
        # (A listen can fail before the reactor runs: stop it as soon as it does.)
        self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred:
        """
        Stop (see the module's docstring); fires when done, or at the latest
        ``shutdown_timeout + KILL_GRACE + 1`` s from now, whatever hangs.
        """
        super().stopService()
        self.freed_memory.stop()
        self._remove_sighup()
        bound = self.settings.shutdown_timeout + KILL_GRACE
        watchdog = threading.Timer(bound + STUCK_GRACE, _stuck, (bound + STUCK_GRACE,))
        watchdog.daemon = True
        if self.reactor.running:  # a real daemon's stop (never a test's memory reactor)
            watchdog.start()
        stopped = self._stop()
        done: Deferred = Deferred()

        def finish(result: Any) -> None:
            if not done.called:
                watchdog.cancel()
                done.callback(None)

        def overdue() -> None:
            if done.called:
                return
            self.log.error("shutdown is taking more than {bound}s; stopping anyway", bound=bound)
            if self.worker_pool is not None:
                for worker in self.worker_pool.live():
                    worker.kill()
            finish(None)

        timer = self.reactor.callLater(bound + 1.0, overdue)
        stopped.addErrback(lambda f: self.log.failure("shutdown failed", f))
        stopped.addBoth(finish)
        done.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return done

    @inlineCallbacks
    def _stop(self) -> Any:
        self.log.info("stopping: no new connections, draining requests in flight")
        # the gRPC server refuses new calls at once; its Deferred fires when its calls have ended
        grpc_stopped = (
            self.grpc_server.stop(self.settings.shutdown_timeout) if self.grpc_server else succeed(None)
        )
        yield self._close_listeners()
        yield self.dataplane.drain(self.reactor, self.settings.shutdown_timeout)
        # the answers written go out before the reactor's stop cuts the connections
        yield self.site.close_connections(self.reactor, FLUSH_GRACE)
        if self.worker_pool is not None:
            # from here, a worker that has not exited KILL_GRACE s later is TERMed, then KILLed
            self.worker_pool.shutting_down()
        yield grpc_stopped
        self.log.info("unloading models")
        yield self.registry.unload_all()
        if self.worker_pool is not None:
            self.log.info("stopping worker processes")
            yield self.worker_pool.stop()
        self.model_threads.stop()
        self.log.info("stopped")

    def _close_listeners(self) -> Deferred:
        """Stop every REST and metrics listener; fires once each has closed (a failure is logged)."""
        closing = [maybeDeferred(p.stopListening).addErrback(self._close_failed, p) for p in self.ports]
        self.ports = []
        return gatherResults(closing)

    def _close_failed(self, failure: Failure, port: Any) -> None:
        self.log.failure("closing the listener on {address} failed", failure, address=_describe(port))


def folder_fingerprint(folders: List[str]) -> str:
    """
    A digest of the files under ``folders`` (names, sizes, modification times;
    environments, caches and hidden entries skipped): it changes when a model's
    settings, code or artefacts change on disk.
    """
    digest = hashlib.sha256()
    for root in sorted(folders):
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            if _is_environment(folder, files, dirs):
                dirs[:] = []
                continue
            for name in sorted(files):
                if name.startswith("."):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "replace"))
    return digest.hexdigest()


def _stuck(seconds: float) -> None:
    """The shutdown's last resort, from a thread: the loop itself is blocked (a runtime's code)."""
    sys.stderr.write(f"v2d: shutdown did not finish within {seconds:g}s (the loop is blocked); exiting\n")
    sys.stderr.flush()
    os._exit(1)


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
