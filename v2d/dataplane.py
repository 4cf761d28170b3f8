"""
The protocol's logic, transport-free.

REST and gRPC decode their wire into v2d.types, call the ``DataPlane`` and encode what
it returns: a response (``infer``) or an async iterator of finished responses
(``infer_stream``); errors are v2d.errors, answered by each transport from the table
in v2d.errors. The dataplane counts requests and streams in flight so that shutdown
can drain them, answers those still in flight at the drain's deadline with
``Unavailable`` (503), and reports each to the observer (metrics). A request whose
client went away is cancelled (the model's Deferred or awaitable with it) and
reported as ``CANCELLED``.
"""

from __future__ import annotations

import copy
import inspect
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Set

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d._responses import complete_response
from v2d._version import __version__
from v2d.aio import CANCELLATIONS, NOT_ANSWERED, answer_of, as_deferred, ensure_future
from v2d.errors import Cancelled, FailedPrecondition, Internal, Unavailable, Unimplemented, V2DError
from v2d.interfaces import IDataPlane, IEncodedInference, IModelRegistry, IModelRepository
from v2d.registry import describe_failure
from v2d.shm import refuse_regions, write_outputs
from v2d.tensors import check_requested_outputs
from v2d.types import InferenceRequest, InferenceResponse, MetadataModelResponse, MetadataServerResponse

__all__ = ["DataPlane", "ResponseStream"]


@implementer(IDataPlane)
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
    #: Called as observer(model name, version, seconds, error kind or None) per request
    #: and per stream.
    observer: Optional[Callable[[str, Optional[str], float, Optional[str]], None]] = None
    _idle: List[Deferred] = attrs.field(factory=list)
    #: The calls and streams in flight (cancelled at the drain's deadline).
    _calls: Set[Any] = attrs.field(factory=set)
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
        Serve one request; a Deferred firing with the InferenceResponse (cancelling it
        cancels the model's work). ``model``, if given, is the one ``admit`` already
        gave for ``name`` and ``version``. Outputs the request asks for must be among
        those the model returns (as MLServer, whatever its metadata declares).
        """
        if model is None:
            model = self.admit(name, version)
        lease = self.shared_memory.resolve(request) if self.shared_memory is not None else None

        def complete(result: Any) -> InferenceResponse:
            response = complete_response(result, model.name, model.version, request.id)
            if request.outputs:
                returned = {output.name for output in response.outputs}
                check_requested_outputs(request, returned, response.model_name, "returned")
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
            if not isinstance(d, Deferred):
                d = as_deferred(d)
        except BaseException:
            d = Deferred()
            d.errback()
        answer = answer_of(d)
        if answer is not NOT_ANSWERED:  # a synchronous model's: finished here, without a callback chain
            return self._finish_now(answer, model, started, complete)
        self._calls.add(d)
        if complete is not None:
            d.addCallback(complete)
        d.addBoth(self._finish, model, d)
        if self.observer is not None:
            d.addBoth(self._observe, model, started)
        return d

    def _finish_now(
        self, result: Any, model: Any, started: float, complete: Optional[Callable[[Any], Any]]
    ) -> Deferred:
        """``_serve``'s callbacks, run at once on a model's result: the same outcome, as a fired Deferred."""
        if complete is not None:
            try:
                result = complete(result)
            except BaseException:
                result = Failure()
        result = self._finish(result, model)
        if self.observer is not None:
            self._observe(result, model, started)
        return fail(result) if isinstance(result, Failure) else succeed(result)

    def _observe(self, result: Any, model: Any, started: float) -> Any:
        kind = result.value.kind if isinstance(result, Failure) else None  # type: ignore[union-attr]
        try:
            self.observer(model.name, model.version, time.perf_counter() - started, kind)  # type: ignore[misc]
        except Exception:
            self.log.failure("metrics observer failed")
        return result

    def _finish(self, result: Any, model: Any, call: Optional[Any] = None) -> Any:
        self._done(call)
        if isinstance(result, Failure):
            return self._map_failure(result, model)
        return result

    def _done(self, call: Any) -> None:
        """A call in flight has its result: the drain may be over."""
        self.inflight -= 1
        self._calls.discard(call)
        if self.inflight == 0 and self._idle:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def counted(self, d: Deferred, answer: Callable[[Any], Any]) -> Deferred:
        """
        Count ``d``, a call the dataplane does not serve itself (a runtime's custom
        handler), as in flight until ``answer`` has had its result: the drain waits for
        it, and at its deadline cancels it, when ``answer`` gets ``Unavailable`` as
        requests do. ``d``, with ``answer``'s result.
        """
        self.inflight += 1
        self._calls.add(d)

        def done(result: Any) -> Any:
            if isinstance(result, Failure) and isinstance(result.value, CANCELLATIONS) and self._aborted:
                result = Failure(Unavailable(self._aborted))
            try:
                return answer(result)
            finally:
                self._done(d)

        return d.addBoth(done)

    def _map_failure(self, failure: Failure, model: Any) -> Failure:
        exc = failure.value
        if isinstance(exc, V2DError):
            return failure
        if isinstance(exc, CANCELLATIONS):
            if self._aborted is not None:
                return Failure(Unavailable(self._aborted))
            self.log.info("a request to model {model} was cancelled: its client went away", model=model.name)
            return Failure(Cancelled(f"request to model '{model.name}' cancelled: the client went away"))
        if isinstance(exc, NotImplementedError):
            return Failure(Unimplemented(str(exc) or f"model '{model.name}' does not implement this"))
        self.log.failure("model {model} failed a request", failure, model=model.name)
        return Failure(Internal(describe_failure(failure)))

    def infer_stream(
        self, name: str, version: Optional[str], payloads: AsyncIterator[InferenceRequest]
    ) -> "ResponseStream":
        """
        Serve a stream of requests with the model's ``predict_stream``: an async
        iterator of finished responses (see ``ResponseStream``). Raises at once while
        shutting down, for an unknown model, or one that does not stream.
        """
        model = self.admit(name, version)
        if not getattr(model, "streaming", False):
            raise Unimplemented(f"model '{name}' does not implement predict_stream()")
        return ResponseStream(self, model, payloads)

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
            # a copy: the repository keeps what it read, and a runtime may change its settings
            settings = copy.deepcopy(found.settings)
            pending.append(self.registry.load(settings).addErrback(lambda f: None))

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


async def _without_regions(payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceRequest]:
    """A stream's requests; one that names a shared-memory region is refused."""
    async for request in payloads:
        yield refuse_regions(request, "streams")


class ResponseStream:
    """
    The finished responses of one model's ``predict_stream``, an async iterator:
    each is an InferenceResponse with the model's name and version filled in; a
    failure is raised as the v2d error ``infer`` would give. The stream counts in
    flight from its creation until it ends, fails or is closed (``aclose``, which the
    consumer calls when it stops early), and is reported to the observer once, as a
    request. Each step runs as a task of its own, so that the drain's deadline can
    cancel it; a consumer that is cancelled cancels the step it awaits, and the
    runtime sees ``CancelledError``.
    """

    log = Logger()

    def __init__(self, dataplane: DataPlane, model: Any, payloads: AsyncIterator[InferenceRequest]) -> None:
        self._dataplane = dataplane
        self._model = model
        self._payloads = _without_regions(payloads)
        self._responses: Any = None
        self._step: Any = None
        self._ended = False
        self._drained = False
        self._started = time.perf_counter()
        dataplane.inflight += 1
        dataplane._calls.add(self)

    def __aiter__(self) -> "ResponseStream":
        return self

    async def __anext__(self) -> InferenceResponse:
        if self._ended:
            raise StopAsyncIteration
        model = self._model
        try:
            if self._drained:
                raise Unavailable("server is shutting down")
            if self._responses is None:
                responses = model.predict_stream(self._payloads)
                if inspect.isawaitable(responses):
                    responses = await responses
                self._responses = responses
            self._step = ensure_future(self._responses.__anext__())
            try:
                result = await self._step
            finally:
                self._step = None
            return complete_response(result, model.name, model.version, None, "predict_stream() yielded")
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as e:
            mapped = self._end(Failure())
            if isinstance(e, CANCELLATIONS) and not self._drained:
                raise  # the consumer itself was cancelled: it must see its own cancellation
            raise mapped.value from None

    def cancel(self) -> None:
        """End the stream at the drain's deadline: its step in flight is cancelled."""
        self._drained = True
        if self._step is not None:
            self._step.cancel()

    async def aclose(self) -> None:
        """Stop early (or after the end): cancel the step in flight and close the model's stream."""
        if not self._ended:
            self._end(Failure(Cancelled(f"stream of model '{self._model.name}' closed before its end")))
        responses, self._responses = self._responses, None
        if self._step is not None:
            self._step.cancel()  # the model's stream ends with the cancelled step
            return
        aclose = getattr(responses, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except Exception:
            self.log.failure("closing the stream of model {model} failed", model=self._model.name)

    def _end(self, failure: Optional[Failure]) -> Any:
        """Count the stream out and report it, once; the failure mapped as ``infer``'s."""
        if self._ended:
            return failure
        self._ended = True
        dataplane = self._dataplane
        result = dataplane._finish(failure, self._model, self)
        if dataplane.observer is not None:
            dataplane._observe(result, self._model, self._started)
        return result
