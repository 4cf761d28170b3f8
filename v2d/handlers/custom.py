"""
``@custom_handler``: a runtime method served as a REST endpoint of its own.

As MLServer's: ``@custom_handler(rest_path="/my-endpoint", rest_method="POST")`` on a
method of an ``MLModel`` subclass; ``get_custom_handlers(model)`` lists a model's
(handler, bound method) pairs. Any marker object with ``rest_path`` and
``rest_method`` counts, so methods marked by MLServer's own decorator (a runtime that
subclasses the real ``mlserver.MLModel``) are found too.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Tuple

__all__ = ["CustomHandler", "HandlerRoute", "custom_handler", "get_custom_handlers", "handler_routes"]

#: The attribute that marks a method as a custom handler (MLServer's name).
HANDLER_ATTRIBUTE = "__custom_handler__"


@dataclass(frozen=True)
class CustomHandler:
    """Where a custom handler is served: its REST path and HTTP method."""

    rest_path: str
    rest_method: str = "POST"


@dataclass(frozen=True)
class HandlerRoute:
    """A custom handler as the server mounts it: HTTP method, path, the runtime's attribute."""

    method: str
    path: str
    attribute: str


_Method = Callable[..., Any]


def custom_handler(rest_path: str, rest_method: str = "POST") -> Callable[[_Method], _Method]:
    """Mark a runtime method as served at ``rest_path`` with ``rest_method``."""
    handler = CustomHandler(rest_path=rest_path, rest_method=rest_method.upper())

    def mark(method: _Method) -> _Method:
        setattr(method, HANDLER_ATTRIBUTE, handler)
        return method

    return mark


def _marker(value: Any) -> Any:
    """The handler marker of a function or method, or None."""
    marker = getattr(getattr(value, "__func__", value), HANDLER_ATTRIBUTE, None)
    fields = (getattr(marker, "rest_path", None), getattr(marker, "rest_method", None))
    return marker if all(isinstance(f, str) for f in fields) else None


def _marked_attributes(model: Any) -> List[Tuple[str, Any]]:
    """(attribute name, marker) of every marked method, without evaluating properties."""
    found: List[Tuple[str, Any]] = []
    seen = set()
    own = getattr(model, "__dict__", None)
    namespaces: List[Mapping[str, Any]] = [own] if isinstance(own, dict) else []
    namespaces += [vars(klass) for klass in type(model).__mro__]
    for namespace in namespaces:
        for name, value in list(namespace.items()):
            if name in seen:
                continue
            seen.add(name)
            marker = _marker(value) if callable(value) or hasattr(value, "__func__") else None
            if marker is not None:
                found.append((name, marker))
    return sorted(found)


def get_custom_handlers(model: Any) -> List[Tuple[Any, _Method]]:
    """(handler, bound method) for each method of ``model`` marked as a custom handler."""
    return [(marker, getattr(model, name)) for name, marker in _marked_attributes(model)]


def handler_routes(model: Any) -> List[HandlerRoute]:
    """
    The routes of ``model``'s custom handlers (method upper-cased, as HTTP has it). A
    runtime that wraps another (an MLServer model, v2d.mlserver_adapter) names it as
    its ``custom_handler_target``.
    """
    model = getattr(model, "custom_handler_target", model)
    return [
        HandlerRoute(method=marker.rest_method.upper(), path=marker.rest_path, attribute=name)
        for name, marker in _marked_attributes(model)
    ]
