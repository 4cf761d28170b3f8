"""
A runtime's own metrics: ``register`` and ``log`` (MLServer's ``mlserver.register`` and
``mlserver.log``).

``register(name, description)`` declares a histogram labelled by model name and
version; ``log(**metrics)`` observes each value for the model whose code is running.
Which model that is comes from a context variable that v2d sets around every call into
a runtime (``load``, ``unload``, ``predict``, ``predict_stream``, custom handlers), in
the server and in worker children alike, so concurrent requests of different models
never mix their labels.

The context also carries the *sink* that records observations: in the server, the
service's Prometheus registry (``GET /metrics``); in a worker child, a batch sent to
the server with the child's next replies. A sink has two methods:
``define_custom(name, description)`` and
``observe_custom(name, description, model, version, value)``.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Dict, Optional

from v2d.errors import Internal

__all__ = [
    "CustomMetric",
    "InvalidModelContext",
    "LABELS",
    "ModelContext",
    "SELDON_MODEL_NAME_LABEL",
    "SELDON_MODEL_VERSION_LABEL",
    "current_model",
    "log",
    "model_context",
    "register",
]

#: The label names of every custom metric (MLServer's).
SELDON_MODEL_NAME_LABEL = "model_name"
SELDON_MODEL_VERSION_LABEL = "model_version"
LABELS = (SELDON_MODEL_NAME_LABEL, SELDON_MODEL_VERSION_LABEL)

#: The description of a metric ``log`` meets before any ``register``.
DEFAULT_DESCRIPTION = "A runtime's custom metric (logged without register())."

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class InvalidModelContext(Internal):
    """``log()`` was called outside any model's code (a 500, as in MLServer)."""

    status_code = 500

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "log() (custom metrics) was called outside of a model context: call it from a runtime's "
            "load(), predict() or custom handler"
        )


@dataclass(frozen=True)
class ModelContext:
    """The model whose code runs now, and where its metrics go."""

    name: str
    version: str = ""
    sink: Any = None


@dataclass(frozen=True)
class CustomMetric:
    """A registered metric; ``observe(value)`` logs one value for the current model."""

    name: str
    description: str

    def observe(self, value: float) -> None:
        """Log ``value`` for the model whose code runs now."""
        log(**{self.name: value})


_current: ContextVar[Optional[ModelContext]] = ContextVar("v2d_model_context", default=None)
#: Every metric registered in this process: name -> description (the first one wins).
_descriptions: Dict[str, str] = {}


def current_model() -> Optional[ModelContext]:
    """The model whose code runs now, or None outside any."""
    return _current.get()


class _Scope:
    """``with model_context(...)``: a plain class, cheap on the request path."""

    __slots__ = ("context", "token")

    def __init__(self, context: Optional[ModelContext]) -> None:
        self.context = context
        self.token: Any = None

    def __enter__(self) -> None:
        self.token = _current.set(self.context)

    def __exit__(self, *exc_info: Any) -> None:
        _current.reset(self.token)


def model_context(context: Optional[ModelContext]) -> _Scope:
    """``with model_context(c):`` runs its body as ``c``'s model (tasks created inside keep it)."""
    return _Scope(context)


def register(name: str, description: str) -> CustomMetric:
    """
    Declare a histogram ``name`` labelled by model name and version; registering a name
    again gives the metric already declared.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}: use letters, digits, '_' and ':' only")
    known = _descriptions.setdefault(name, str(description))
    context = _current.get()
    if context is not None and context.sink is not None:
        context.sink.define_custom(name, known)
    return CustomMetric(name, known)


def log(**metrics: float) -> None:
    """
    Observe each ``name=value`` for the model whose code runs now; a name never
    registered is registered with a default description.
    """
    context = _current.get()
    if context is None:
        raise InvalidModelContext()
    for name, value in metrics.items():
        if isinstance(value, (str, bytes)):
            raise TypeError(f"custom metric {name!r} must be a number, not {type(value).__name__}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"custom metric {name!r} must be a number, not {type(value).__name__}") from None
        description = _descriptions.get(name)
        if description is None:
            description = register(name, DEFAULT_DESCRIPTION).description
        if context.sink is not None:
            context.sink.observe_custom(name, description, context.name, context.version, number)
