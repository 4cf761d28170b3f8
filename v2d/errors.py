"""
Transport-neutral errors.

Each error has a ``kind``; REST maps kinds to HTTP statuses and gRPC to status codes,
each in its own package. A runtime may raise these too (``InferenceError`` from a
``predict`` becomes a 400 / INVALID_ARGUMENT, as in MLServer).

Imported by worker children: standard library only.
"""

from __future__ import annotations

__all__ = [
    "FailedPrecondition",
    "InferenceError",
    "Internal",
    "InvalidArgument",
    "ModelNotFound",
    "ModelNotReady",
    "NotFound",
    "PayloadTooLarge",
    "StatusCodeError",
    "Unavailable",
    "Unimplemented",
    "V2DError",
]


class V2DError(Exception):
    """Base of every error v2d reports to a client; ``kind`` says which."""

    kind = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep the message when pickled to or from a worker
        return (type(self), (self.message,))


class InvalidArgument(V2DError):
    """The request is malformed; the message names the field."""

    kind = "INVALID_ARGUMENT"


class InferenceError(InvalidArgument):
    """Raised by runtimes for a request they cannot serve (MLServer's name)."""


class NotFound(V2DError):
    """Something named in the request does not exist."""

    kind = "NOT_FOUND"


class ModelNotFound(NotFound):
    """No model of that name (and version)."""

    def __init__(self, name: str, version: str | None = None) -> None:
        if version:
            message = f"model '{name}' version '{version}' not found"
        else:
            message = f"model '{name}' not found"
        super().__init__(message)
        self.name = name
        self.version = version

    def __reduce__(self):
        return (type(self), (self.name, self.version))


class Unavailable(V2DError):
    """The server or model cannot serve right now (not ready, worker died, draining)."""

    kind = "UNAVAILABLE"


class ModelNotReady(Unavailable):
    """The model exists but is not ready."""


class FailedPrecondition(V2DError):
    """The request cannot be served in the current state (e.g. loading a broken model)."""

    kind = "FAILED_PRECONDITION"


class PayloadTooLarge(V2DError):
    """The request body is over the configured limit."""

    kind = "RESOURCE_EXHAUSTED"


class Unimplemented(V2DError):
    """The model or server does not offer this (e.g. streaming on a non-streaming model)."""

    kind = "UNIMPLEMENTED"


class Internal(V2DError):
    """A runtime failed; the message is the exception's."""

    kind = "INTERNAL"


#: The kinds of the HTTP statuses a runtime's error may carry, as MLServer maps them to
#: gRPC codes; any other status is UNKNOWN over gRPC (and itself over REST).
KIND_OF_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    422: "FAILED_PRECONDITION",
    500: "INTERNAL",
}


class StatusCodeError(V2DError):
    """
    An error that carries its own HTTP status (``status_code``), as MLServer's errors
    do: REST answers with that status, gRPC with the code of its kind.
    """

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.kind = KIND_OF_STATUS.get(status_code, "UNKNOWN")

    def __reduce__(self):
        return (type(self), (self.message, self.status_code))
