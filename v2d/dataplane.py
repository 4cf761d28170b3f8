"""
The protocol's logic, transport-free.

REST and gRPC decode their wire into v2d.types, call the ``DataPlane`` and encode what
it returns; errors are v2d.errors, mapped by each transport. The dataplane also counts
requests in flight so that shutdown can drain them, and answers those still in flight
at the drain's deadline with ``Unavailable`` (503).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Set

import attrs
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from v2d._responses import complete_response
from v2d._version import __version__
from v2d.errors import FailedPrecondition, Internal, Unavailable, Unimplemented, V2DError
from v2d.interfaces import IEncodedInference, IModelRegistry, IModelRepository
from v2d.registry import describe_failure
from v2d.shm import write_outputs
from v2d.tensors import check_requested_outputs
from v2d.types import InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataServerResponse

__all__ = ["DataPlane"]


@attrs.define(eq=False)
class DataPlane:
    """The Open Inference Protocol over a registry of models and a repository of folders."""

    registry: IModelRegistry
    repository: IModelRepository
    server_name: str = "v2d"
    #: The version ``metadata()`` reports; None: v2d's own.
    server_version: Optional[str] = None
    extensions: List[str] = attrs.field(factory=lambda: ["model_repository"])
    strict_readiness: bool = True
    started: bool = False
    draining: bool = False
    inflight: int = 0
    #: The system shared-memory regions (v2d.shm.SharedMemoryRegistry); None: no such extension.
    shared_memory: Optional[Any] = None
    #: Called as observer(model name, version, seconds, error kind or None) per request.
    observer: Optional[Callable[[str, Optional[str], float, Optional[str]], None]] = None
    _idle: List[Deferred] = attrs.field(factory=list)
    #: The calls in flight (cancelled at the drain's deadline).
    _calls: Set[Deferred] = attrs.field(factory=set)
    #: Why calls in flight were cancelled (set at the drain's deadline).
    _aborted: Optional[str] = None
    log = Logger()

    # -- health and metadata ------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self.started or self.draining:
            return False
        return self.registry.all_ready() if self.strict_readiness else True

    def metadata(self) -> MetadataServerResponse:
        return MetadataServerResponse(
            name=self.server_name,
            version=self.server_version or __version__,
            extensions=list(self.extensions),
        )

    def model_metadata(self, name: str, version: Optional[str] = None) -> MetadataModelResponse:
        return self.registry.get(name, version).metadata()

    def model_ready(self, name: str, version: Optional[str] = None) -> bool:
        return self.registry.ready(name, version)

    def model(self, name: str, version: Optional[str] = None) -> Any:
        """The ready IModel (for transports that need more than ``infer``)."""
        return self.registry.get(name, version)

    # -- inference ------------------------------------------------------------

    def infer(
        self, name: str, version: Optional[str], request: InferenceRequest, model: Optional[Any] = None
    ) -> Deferred:
        """
        Serve one request; a Deferred firing with the InferenceResponse. ``model``, if
        given, is the one ``admit`` already gave for ``name`` and ``version``.
        """
        if model is None:
            model = self.admit(name, version)
        lease = self.shared_memory.resolve(request) if self.shared_memory is not None else None

        def complete(result: Any) -> InferenceResponse:
            response = complete_response(result, model.name, model.version, request.id)
            if request.outputs:
                check_requested_outputs(request, response)
                if lease is not None:
                    write_outputs(request, response)
            return response

        d = self._serve(model, model.predict, (request,), complete)
        if lease is not None:
            d.addBoth(lease.release)
        return d

    def admit(self, name: str, version: Optional[str]) -> Any:
        """The ready model for a request; raises while shutting down or if there is none."""
        if self.draining:
            raise Unavailable("server is shutting down")
        return self.registry.get(name, version)

    @staticmethod
    def takes_encoded(model: Any, wire: str) -> bool:
        """Whether ``model`` takes requests in encoding ``wire`` itself (``IEncodedInference``)."""
        return IEncodedInference.providedBy(model) and wire in model.wires

    def infer_encoded(self, model: Any, wire: str, data: bytes, headers: Any) -> Deferred:
        """
        Serve one request still in its wire encoding by a model that ``takes_encoded``;
        a Deferred firing with (response bytes, response headers or None).
        """
        return self._serve(model, model.infer_encoded, (wire, data, headers))

    def _serve(
        self, model: Any, fn: Callable[..., Any], args: tuple, complete: Optional[Callable[[Any], Any]] = None
    ) -> Deferred:
        """Call the model, counting the request in flight, completing its result, mapping its failure."""
        self.inflight += 1
        started = time.perf_counter()
        try:
            d = fn(*args)
        except BaseException:
            d = Deferred()
            d.errback()
        self._calls.add(d)
        if complete is not None:
            d.addCallback(complete)
        d.addBoth(self._finish, model, d)
        if self.observer is not None:
            d.addBoth(self._observe, model, started)
        return d

    def _observe(self, result: Any, model: Any, started: float) -> Any:
        kind = result.value.kind if isinstance(result, Failure) else None  # type: ignore[union-attr]
        try:
            self.observer(model.name, model.version, time.perf_counter() - started, kind)  # type: ignore[misc]
        except Exception:
            self.log.failure("metrics observer failed")
        return result

    def _finish(self, result: Any, model: Any, call: Optional[Deferred] = None) -> Any:
        self.inflight -= 1
        self._calls.discard(call)  # type: ignore[arg-type]
        if self.inflight == 0 and self._idle:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)
        if isinstance(result, Failure):
            return self._map_failure(result, model)
        return result

    def _map_failure(self, failure: Failure, model: Any) -> Failure:
        exc = failure.value
        if isinstance(exc, V2DError):
            return failure
        if isinstance(exc, CancelledError) and self._aborted is not None:
            return Failure(Unavailable(self._aborted))
        if isinstance(exc, NotImplementedError):
            return Failure(Unimplemented(str(exc) or f"model '{model.name}' does not implement this"))
        self.log.failure("model {model} failed a request", failure, model=model.name)
        return Failure(Internal(describe_failure(failure)))

    def begin_stream(self, name: str, version: Optional[str]) -> Any:
        """Check a model can stream and count the stream in flight; returns the model."""
        if self.draining:
            raise Unavailable("server is shutting down")
        model = self.registry.get(name, version)
        if not getattr(model, "streaming", False):
            raise Unimplemented(f"model '{name}' does not implement predict_stream()")
        self.inflight += 1
        return model

    def end_stream(self, model: Any) -> None:
        """A stream begun with ``begin_stream`` ended."""
        self._finish(None, model)

    # -- repository extension -------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> List[Dict[str, str]]:
        """Every model found or loaded, with its state and reason."""
        entries: Dict[tuple, Dict[str, str]] = {}
        for found in self.repository.discover():
            version = found.settings.version if found.settings else None
            entries[(found.name, version or "")] = {
                "name": found.name,
                "version": version or "",
                "state": "UNAVAILABLE",
                "reason": found.error or "not loaded",
            }
        for name, versions in self.registry.states().items():
            for version, state, reason in versions:
                entries[(name, version)] = {
                    "name": name,
                    "version": version,
                    "state": state,
                    "reason": reason,
                }
        out = [e for _, e in sorted(entries.items())]
        if ready_only:
            out = [e for e in out if e["state"] == "READY"]
        for e in out:
            if not e["version"]:
                del e["version"]
        return out

    def load_model(self, name: str) -> Deferred:
        """(Re)load a model from its folder, picking up changed settings and code."""
        found = self.repository.find(name)
        errors = [d.error for d in found if d.error]
        if errors:
            for d in found:
                if d.error:
                    self.registry.mark_failed(d.name, None, d.error)
            raise FailedPrecondition(f"failed to load model '{name}': {errors[0]}")
        return gatherResults(
            [self.registry.load(d.settings) for d in found], consumeErrors=True
        ).addCallbacks(lambda _: None, lambda f: f.value.subFailure)

    def unload_model(self, name: str) -> Deferred:
        return self.registry.unload(name)

    def load_all(self) -> Deferred:
        """Load every model found at start-up; failures are recorded, never raised."""
        pending = []
        for found in self.repository.discover():
            if found.error or found.settings is None:
                self.log.error("model {model}: {error}", model=found.name, error=found.error)
                self.registry.mark_failed(found.name, None, found.error or "invalid settings")
                continue
            if found.settings.unknown_fields:
                self.log.warn(
                    "model {model}: unknown fields in model-settings.json ignored: {fields}",
                    model=found.name,
                    fields=", ".join(found.settings.unknown_fields),
                )
            pending.append(self.registry.load(found.settings).addErrback(lambda f: None))

        def done(_: Any) -> None:
            self.started = True

        return gatherResults(pending).addCallback(done)

    # -- shutdown ---------------------------------------------------------------

    def drain(self, clock: IReactorTime, timeout: float) -> Deferred:
        """
        Refuse new requests; fire when none is in flight, or after ``timeout`` s, when
        the requests still in flight are answered ``Unavailable`` (their models' work
        is cancelled; a worker busy with one is ended by the pool's stop).
        """
        self.draining = True
        if self.inflight == 0:
            return succeed(None)
        d: Deferred = Deferred()
        self._idle.append(d)

        def expired() -> None:
            if d.called:
                return
            self._idle.remove(d)
            self.log.warn(
                "{n} request(s) still in flight after {timeout}s; answering them 503",
                n=self.inflight,
                timeout=timeout,
            )
            self._aborted = f"server is shutting down: request still in flight after {timeout:g}s"
            for call in list(self._calls):
                call.cancel()
            d.callback(None)

        timer = clock.callLater(timeout, expired)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(stop_timer)
