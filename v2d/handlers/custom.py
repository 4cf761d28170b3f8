"""
``@custom_handler``: a runtime method served as a REST endpoint of its own.

As MLServer's: ``@custom_handler(rest_path="/my-endpoint", rest_method="POST")`` on a
method of an ``MLModel`` subclass; ``get_custom_handlers(model)`` lists a model's
(handler, bound method) pairs.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

__all__ = ["CustomHandler", "custom_handler", "get_custom_handlers"]

#: The attribute that marks a method as a custom handler (MLServer's name).
HANDLER_ATTRIBUTE = "__custom_handler__"


@dataclass(frozen=True)
class CustomHandler:
    """Where a custom handler is served: its REST path and HTTP method."""

    rest_path: str
    rest_method: str = "POST"


def custom_handler(rest_path: str, rest_method: str = "POST") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a runtime method as served at ``rest_path`` with ``rest_method``."""

    def mark(method: Callable[..., Any]) -> Callable[..., Any]:
        setattr(method, HANDLER_ATTRIBUTE, CustomHandler(rest_path=rest_path, rest_method=rest_method.upper()))
        return method

    return mark


def get_custom_handlers(model: Any) -> List[Tuple[CustomHandler, Callable[..., Any]]]:
    """(handler, bound method) for each method of ``model`` marked by ``custom_handler``."""
    found = []
    for name, _ in inspect.getmembers(type(model)):
        member = getattr(model, name, None)
        handler = getattr(member, HANDLER_ATTRIBUTE, None)
        if isinstance(handler, CustomHandler):
            found.append((handler, member))
    return found
