"""
Exceptions across the wire: they travel pickled, as themselves.

``describe`` (in the child) gives the exception to send, one the server can always
unpickle: v2d's own errors as they are (their class, kind, message and
``status_code`` survive pickling, see v2d.errors); a ``V2DError`` subclass from the
model's own code (which the server never imports) as its nearest class of v2d's, with
the same message and status; ``NotImplementedError`` as itself; anything else as a
``WorkerError`` subclass named after the original type, so a report reads
``ValueError: bad input`` as it would in-process. An exception's ``status_code`` (an
HTTP status, as MLServer's errors carry) crosses too. ``rebuild`` (in the server)
gives back what arrived.

Imported by worker children (Python 3.9 and up): standard library and v2d.errors.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from v2d import errors

__all__ = ["WorkerError", "describe", "rebuild"]


class WorkerError(Exception):
    """An exception raised by a runtime in a worker; its class is named after the original."""

    remote_type = "Exception"

    def __reduce__(self) -> Any:
        return (remote_error, (self.remote_type, str(self), getattr(self, "status_code", None)))


_classes: Dict[str, type] = {}


def _remote_class(name: str) -> type:
    cls = _classes.get(name)
    if cls is None:
        safe = name if name.isidentifier() else "Exception"
        cls = _classes[name] = type(safe, (WorkerError,), {"remote_type": name, "__module__": __name__})
    return cls


def remote_error(type_name: str, message: str, status_code: Optional[int] = None) -> WorkerError:
    """A ``WorkerError`` standing for an exception of type ``type_name`` (the unpickler calls it)."""
    exc = _remote_class(type_name)(message)
    if status_code is not None:
        exc.status_code = status_code
    return exc


def _status(exc: BaseException) -> Optional[int]:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def _v2d_class(cls: type) -> Any:
    """The first class of v2d.errors among ``cls`` and its bases."""
    for base in cls.__mro__:
        if base.__module__ == errors.__name__ and issubclass(base, errors.V2DError):
            return base
    return errors.V2DError


def _as_v2d_error(exc: errors.V2DError) -> errors.V2DError:
    """``exc`` (of a class v2d.errors does not define) as one of v2d's, same message, kind and status."""
    cls = _v2d_class(type(exc))
    if exc.status_code != errors.status_of_kind(exc.kind).http:
        cls = errors.MLServerError  # a status of its own: REST answers with it
    elif getattr(cls, "kind", None) != exc.kind:
        cls = errors.CLASS_OF_KIND.get(exc.kind, errors.Internal)
    out = cls.__new__(cls)
    if issubclass(cls, errors.MLServerError):
        errors.MLServerError.__init__(out, exc.message, exc.status_code)
    else:
        errors.V2DError.__init__(out, exc.message)
    return out


def describe(exc: BaseException) -> BaseException:
    """The exception to send to the other side, one that unpickles there whatever ``exc`` is."""
    if isinstance(exc, errors.V2DError):
        return exc if type(exc).__module__ == errors.__name__ else _as_v2d_error(exc)
    if isinstance(exc, NotImplementedError):
        plain = type(exc) is NotImplementedError and len(exc.args) <= 1
        return exc if plain else NotImplementedError(str(exc))
    return remote_error(type(exc).__name__, str(exc), _status(exc))


def rebuild(received: Any) -> Exception:
    """The exception an ``error`` message carried."""
    if isinstance(received, Exception):
        return received
    return errors.Internal(f"a worker reported an error the server cannot read: {received!r}")
