"""
Every zope interface of v2d, in one place.

The dataplane talks to ``IModelRegistry`` and ``IModel`` only: a runtime in this
process, a runtime in a worker process and a batching wrapper all provide ``IModel``,
and the dataplane cannot tell them apart.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "ICustomHandlers",
    "IEncodedInference",
    "IModel",
    "IModelFactory",
    "IModelRegistry",
    "IModelRepository",
    "IWorkerPool",
]


class IModel(Interface):
    """
    A loaded (or loadable) model.

    ``load``, ``unload``, ``predict`` may return a plain value, a Deferred or an
    awaitable (asyncio semantics); callers normalise with ``v2d.aio.as_deferred``.
    """

    name = Attribute("The model's name (str).")
    version = Attribute("The model's version (str or None).")
    settings = Attribute("The model's v2d.settings.ModelSettings.")
    ready = Attribute("True once loaded and able to serve.")

    def load():  # type: ignore[misc]
        """Load the model. Result: True/None when loaded, False when not."""

    def unload():  # type: ignore[misc]
        """Free what ``load`` took."""

    def predict(payload):  # type: ignore[misc]
        """Serve one v2d.types.InferenceRequest; result: v2d.types.InferenceResponse."""

    def metadata():  # type: ignore[misc]
        """The model's v2d.types.MetadataModelResponse."""


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
