"""
Every zope interface of v2d, in one place.

The dataplane talks to ``IModelRegistry`` and ``IModel`` only: a runtime in this
process, a runtime in a worker process and a batching wrapper all provide ``IModel``,
and the dataplane cannot tell them apart. The transports talk to ``IDataPlane``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "ICustomHandlers",
    "IDataPlane",
    "IEncodedInference",
    "IModel",
    "IModelFactory",
    "IModelRegistry",
    "IModelRepository",
    "IWorkerPool",
]


class IModel(Interface):
    """
    A model as the registry holds it: ``LocalModel`` (a runtime in this process),
    ``WorkerModel`` (a runtime in worker processes) or a batching wrapper of either.

    ``load``, ``unload`` and ``predict`` return a Deferred: the registry, the
    batching wrapper and the dataplane add callbacks to it (the dataplane also takes
    a plain value or an awaitable from ``predict``). Cancelling ``predict``'s
    Deferred (its client went away) should cancel the work. A runtime, the
    ``MLModel`` a user writes, may instead return a plain value, a Deferred or an
    awaitable (asyncio semantics) from any of the three: ``LocalModel`` and the
    worker child turn each into a Deferred (``v2d.aio.as_deferred``).

    Read besides the methods: ``name``, ``version``, ``settings`` (model
    configuration, custom metrics), ``ready``; optional, ``streaming`` (False when
    absent) with ``predict_stream``.
    """

    name = Attribute("The model's name (str).")
    version = Attribute("The model's version (str or None).")
    settings = Attribute("The model's v2d.settings.ModelSettings.")
    ready = Attribute("True once loaded and able to serve.")

    def load():  # type: ignore[misc]
        """
        Load the model: a Deferred firing with True or None when loaded, False when
        the model could not load (a failure says why).
        """

    def unload():  # type: ignore[misc]
        """Free what ``load`` took: a Deferred."""

    def predict(payload):  # type: ignore[misc]
        """
        Serve one v2d.types.InferenceRequest: a Deferred firing with a
        v2d.types.InferenceResponse (a missing model name, version or id is filled in
        by the dataplane; anything else is an INTERNAL error). A v2d.errors error is
        answered as its kind; ``NotImplementedError`` as UNIMPLEMENTED; any other as
        INTERNAL.
        """

    def metadata():  # type: ignore[misc]
        """
        The model's v2d.types.MetadataModelResponse, at once (not a Deferred).
        """


class IDataPlane(Interface):
    """
    The Open Inference Protocol, transport-free: what REST and gRPC call. Errors are
    v2d.errors (raised, or failing the Deferreds); each transport answers them from
    the one table, ``v2d.errors.STATUS_OF_KIND``.
    """

    inflight = Attribute("The requests and streams being served (int).")
    draining = Attribute("True once shutdown began: new requests are refused.")
    shared_memory = Attribute(
        "The system shared-memory regions (v2d.shm.SharedMemoryRegistry), or None when the "
        "server has no such extension."
    )

    def live():  # type: ignore[misc]
        """Whether the server is live (bool)."""

    def ready():  # type: ignore[misc]
        """Whether the server is ready: started, not draining, every model ready (bool)."""

    def metadata():  # type: ignore[misc]
        """The server's v2d.types.MetadataServerResponse."""

    def model_metadata(name, version=None):  # type: ignore[misc]
        """A model's v2d.types.MetadataModelResponse; raises ModelNotFound."""

    def model_ready(name, version=None):  # type: ignore[misc]
        """Whether a model can serve (bool); raises ModelNotFound."""

    def model(name, version=None):  # type: ignore[misc]
        """The ready IModel (for transports that need more than ``infer``)."""

    def admit(name, version):  # type: ignore[misc]
        """The ready IModel for a request; raises while draining or if there is none."""

    def infer(name, version, request, model=None):  # type: ignore[misc]
        """
        Serve one v2d.types.InferenceRequest: a Deferred firing with the
        InferenceResponse. Cancelling the Deferred cancels the model's work.
        """

    def infer_stream(name, version, payloads):  # type: ignore[misc]
        """
        Serve an async iterator of InferenceRequests with the model's
        ``predict_stream``: an async iterator of finished InferenceResponses (errors
        raised as v2d errors), with ``aclose()`` for a consumer that stops early.
        Raises at once for a model that cannot stream.
        """

    def takes_encoded(model, wire):  # type: ignore[misc]
        """Whether ``model`` takes requests in encoding ``wire`` itself (IEncodedInference)."""

    def infer_encoded(model, wire, data, headers):  # type: ignore[misc]
        """A request still in encoding ``wire``: a Deferred of (response bytes, headers or None)."""

    def repository_index(ready_only=False):  # type: ignore[misc]
        """Every model found or loaded: dicts of name, version, state, reason."""

    def load_model(name):  # type: ignore[misc]
        """(Re)load a model from its folder: a Deferred."""

    def unload_model(name):  # type: ignore[misc]
        """Unload every version of a model: a Deferred."""

    def load_all():  # type: ignore[misc]
        """Load every model found at start-up: a Deferred that never fails."""

    def drain(clock, timeout):  # type: ignore[misc]
        """
        Refuse new requests; a Deferred firing when none is in flight, or after
        ``timeout`` s, when those still in flight are answered UNAVAILABLE.
        """

    def counted(d, answer):  # type: ignore[misc]
        """
        Count the Deferred ``d`` of a call served outside the dataplane (a custom
        handler) as in flight until ``answer`` (which writes the answer) has had its
        result; a call cancelled at the drain's deadline gives ``answer`` UNAVAILABLE.
        """


class IEncodedInference(Interface):
    """
    A model that can take a request still in its wire encoding and answer in it,
    decoding and encoding where it runs (a worker process does, sparing the server's
    loop that work). Optional: the dataplane falls back to ``IModel.predict``.
    """

    wires = Attribute("The encodings it takes now, e.g. {'grpc'} (empty until loaded).")

    def infer_encoded(wire, data, headers):  # type: ignore[misc]
        """
        Serve one request given as ``data`` (bytes in encoding ``wire``) with transport
        ``headers``; a Deferred firing with (response bytes, response headers or None).
        Its response is the one ``predict`` would give, completed and encoded.
        """


class ICustomHandlers(Interface):
    """
    A model whose runtime serves REST endpoints of its own (``@custom_handler``
    methods). Optional: a model without it has none.
    """

    custom_handlers = Attribute(
        "The runtime's handlers, a list of v2d.handlers.custom.HandlerRoute (empty until loaded)."
    )

    def call_custom(attribute, has_body, body, query):  # type: ignore[misc]
        """
        Call the runtime's handler method ``attribute`` with a request's parsed JSON
        ``body`` (``has_body`` False when there was none) and ``query`` (name -> list of
        str); a Deferred firing with the method's result.
        """


class IModelFactory(Interface):
    """Turns model settings into an ``IModel`` provider (in-process or in a worker)."""

    def create(settings):  # type: ignore[misc]
        """A Deferred firing with an unloaded ``IModel`` for ``settings``."""


class IModelRepository(Interface):
    """Discovers model folders; knows nothing of what is loaded."""

    def discover():  # type: ignore[misc]
        """
        Every model found: a list of (name, ModelSettings or None, error or None).
        Folders whose settings are invalid come back with the error.
        """

    def find(name):  # type: ignore[misc]
        """The ModelSettings of model ``name``, read afresh; raises ModelNotFound."""


class IModelRegistry(Interface):
    """The loaded models, by name and version."""

    def get(name, version=None):  # type: ignore[misc]
        """The IModel; raises ModelNotFound, or ModelNotReady if it is not ready."""

    def load(settings):  # type: ignore[misc]
        """Load (or reload) a model from settings; Deferred firing with the IModel."""

    def unload(name):  # type: ignore[misc]
        """Unload every version of a model; Deferred."""

    def ready(name, version=None):  # type: ignore[misc]
        """Whether the model (version) can serve; raises ModelNotFound if unknown."""

    def all_ready():  # type: ignore[misc]
        """True when no model is loading or failed (unloaded ones do not count)."""

    def names():  # type: ignore[misc]
        """Every model name the registry knows."""

    def mark_failed(name, version, reason):  # type: ignore[misc]
        """Record a model that could not even be read (invalid settings)."""

    def unload_all():  # type: ignore[misc]
        """Unload every model; Deferred firing when all are unloaded."""

    def states():  # type: ignore[misc]
        """A dict name -> list of (version, state, reason) for the repository index."""


class IWorkerPool(Interface):
    """Worker processes that run models out of the server's process."""

    def model_factory(settings):  # type: ignore[misc]
        """An IModelFactory for this model (spawning workers as needed)."""

    def stop():  # type: ignore[misc]
        """End every worker (close input, TERM, KILL); Deferred firing when all exited."""
