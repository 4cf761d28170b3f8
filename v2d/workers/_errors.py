"""
Exceptions across the wire.

A runtime's exception class may live in the model's own code, which the server never
imports, so a child sends a description (``describe``) and the server rebuilds an
exception (``rebuild``) that behaves the same for the dataplane: v2d's own errors
come back as themselves (same kind, same message); ``NotImplementedError`` as itself;
anything else as a ``WorkerError`` subclass carrying the original type's name, so a
report reads ``ValueError: bad input`` as it would in-process. An exception's
``status_code`` (an HTTP status, as MLServer's errors carry) crosses too.

Imported by worker children (Python 3.9 and up): standard library and v2d.errors.
"""

from __future__ import annotations

from typing import Any, Dict

from v2d import errors

__all__ = ["WorkerError", "describe", "rebuild"]

_KINDS = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "UNAVAILABLE": errors.Unavailable,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "RESOURCE_EXHAUSTED": errors.PayloadTooLarge,
    "UNIMPLEMENTED": errors.Unimplemented,
    "INTERNAL": errors.Internal,
}


class WorkerError(Exception):
    """An exception raised by a runtime in a worker; its class is named after the original."""

    remote_type = "Exception"


_classes: Dict[str, type] = {}


def _remote_class(name: str) -> type:
    cls = _classes.get(name)
    if cls is None:
        safe = name if name.isidentifier() else "Exception"
        cls = _classes[name] = type(safe, (WorkerError,), {"remote_type": name, "__module__": __name__})
    return cls


def describe(exc: BaseException) -> Dict[str, Any]:
    """A plain description of an exception (picklable whatever the exception is)."""
    description = _describe(exc)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        description["status_code"] = status
    return description


def _describe(exc: BaseException) -> Dict[str, Any]:
    message = str(exc)
    if isinstance(exc, errors.V2DError):
        own = type(exc).__module__ == errors.__name__
        return {
            "v2d": type(exc).__name__ if own else None,
            "kind": exc.kind,
            "message": exc.message,
            "status_code": exc.status_code,
        }
    if isinstance(exc, NotImplementedError):
        return {"builtin": "NotImplementedError", "message": message}
    return {"type": type(exc).__name__, "message": message}


def _same_message(cls: Any, message: str, status_code: Any) -> Exception:
    """An instance of v2d's error class ``cls`` with ``message`` as it was (constructors
    such as ``ModelNotFound(name)`` build their message; this one is already built)."""
    exc = cls.__new__(cls)
    if issubclass(cls, errors.MLServerError):
        usual = errors.HTTP_STATUS_OF_KIND.get(getattr(cls, "kind", "INTERNAL"), 500)
        errors.MLServerError.__init__(exc, message, status_code if isinstance(status_code, int) else usual)
    else:
        errors.V2DError.__init__(exc, message)
    return exc


def rebuild(description: Dict[str, Any]) -> Exception:
    """The exception a description stands for, on this side of the wire."""
    exc = _rebuild(description)
    status = description.get("status_code")
    if isinstance(status, int) and getattr(exc, "status_code", None) != status:
        try:
            exc.status_code = status  # type: ignore[attr-defined]
        except AttributeError:
            pass
    return exc


def _rebuild(description: Dict[str, Any]) -> Exception:
    message = str(description.get("message", ""))
    if "kind" in description:
        name = description.get("v2d")
        cls = getattr(errors, name, None) if name else None
        status_code = description.get("status_code")
        if isinstance(cls, type) and issubclass(cls, errors.V2DError):
            return _same_message(cls, message, status_code)
        usual = errors.HTTP_STATUS_OF_KIND.get(description["kind"])
        if isinstance(status_code, int) and status_code != usual:
            return errors.MLServerError(message, status_code)
        return _KINDS.get(description["kind"], errors.Internal)(message)
    if description.get("builtin") == "NotImplementedError":
        return NotImplementedError(message)
    return _remote_class(str(description.get("type") or "Exception"))(message)
