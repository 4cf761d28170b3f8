"""
Transport-neutral errors.

Each error has a ``kind``; ``STATUS_OF_KIND`` is the one table of what each kind is
answered with: an HTTP status (REST) and a gRPC status code (gRPC). A runtime may
raise these too (``InferenceError`` from a ``predict`` becomes a 400 /
INVALID_ARGUMENT, as in MLServer). ``MLServerError`` is
MLServer's base class, with its ``status_code``: REST answers with that status and
gRPC with the kind it maps to.

Imported by worker children: standard library only.
"""

from __future__ import annotations

from typing import Dict, NamedTuple

__all__ = [
    "Cancelled",
    "ErrorStatus",
    "FailedPrecondition",
    "KIND_OF_STATUS",
    "InferenceError",
    "Internal",
    "InvalidArgument",
    "InvalidModelURI",
    "MLServerError",
    "ModelNotFound",
    "ModelParametersMissing",
    "ModelNotReady",
    "NotFound",
    "PayloadTooLarge",
    "CLASS_OF_KIND",
    "STATUS_OF_KIND",
    "StatusCodeError",
    "Unavailable",
    "Unimplemented",
    "V2DError",
    "grpc_code_name",
    "http_status",
    "kind_of_status",
    "status_of_kind",
]


class ErrorStatus(NamedTuple):
    """How each transport answers an error of one kind."""

    #: The HTTP status REST answers with (``MLServerError`` may carry its own).
    http: int
    #: The name of the ``grpc.StatusCode`` gRPC answers with.
    grpc: str


#: The one table of error kinds: each kind's HTTP status and gRPC status code.
STATUS_OF_KIND: Dict[str, ErrorStatus] = {
    "INVALID_ARGUMENT": ErrorStatus(400, "INVALID_ARGUMENT"),
    "FAILED_PRECONDITION": ErrorStatus(400, "FAILED_PRECONDITION"),
    "UNIMPLEMENTED": ErrorStatus(400, "UNIMPLEMENTED"),
    "NOT_FOUND": ErrorStatus(404, "NOT_FOUND"),
    "RESOURCE_EXHAUSTED": ErrorStatus(413, "RESOURCE_EXHAUSTED"),
    # the client went away before its answer (nginx's 499); nobody reads it but the metrics
    "CANCELLED": ErrorStatus(499, "CANCELLED"),
    "UNAVAILABLE": ErrorStatus(503, "UNAVAILABLE"),
    "INTERNAL": ErrorStatus(500, "INTERNAL"),
    "UNKNOWN": ErrorStatus(500, "UNKNOWN"),
}

#: What a kind missing from the table (a runtime's own subclass) is answered with.
_OTHER = STATUS_OF_KIND["INTERNAL"]


def status_of_kind(kind: str) -> ErrorStatus:
    """The HTTP status and gRPC code of an error kind (INTERNAL's for a kind not in the table)."""
    return STATUS_OF_KIND.get(kind, _OTHER)


def grpc_code_name(error: BaseException) -> str:
    """The name of the gRPC status code an error is answered with (INTERNAL unless a V2DError)."""
    return status_of_kind(error.kind).grpc if isinstance(error, V2DError) else _OTHER.grpc


def http_status(error: BaseException) -> int:
    """The HTTP status an error is answered with (500 unless a V2DError)."""
    return error.status_code if isinstance(error, V2DError) else _OTHER.http


#: The kinds of the HTTP statuses an error may carry, as MLServer maps them to gRPC
#: codes; any other status is UNKNOWN over gRPC (and itself over REST).
KIND_OF_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    422: "FAILED_PRECONDITION",
    500: "INTERNAL",
}


def kind_of_status(status_code: int) -> str:
    """The kind (so the gRPC code) of an HTTP status, by MLServer's table; else UNKNOWN."""
    return KIND_OF_STATUS.get(status_code, "UNKNOWN")


class V2DError(Exception):
    """Base of every error v2d reports to a client; ``kind`` says which."""

    kind = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def status_code(self) -> int:
        """The HTTP status REST answers with."""
        return status_of_kind(self.kind).http

    def __reduce__(self):  # keep the message when pickled to or from a worker
        return (type(self), (self.message,))


class MLServerError(V2DError):
    """
    MLServer's base error: a message and the HTTP status to answer with (400 unless
    given). REST answers with ``status_code``; gRPC with the matching code.
    """

    def __init__(self, msg: str, status_code: int = 400) -> None:
        super().__init__(msg)
        self._status_code = int(status_code)
        self.kind = kind_of_status(self._status_code)

    @property
    def status_code(self) -> int:
        return self._status_code

    def __reduce__(self):
        return (_rebuild_mlserver_error, (type(self), self.message, self._status_code))


def _rebuild_mlserver_error(cls: type, message: str, status_code: int) -> "MLServerError":
    error: MLServerError = MLServerError.__new__(cls)
    MLServerError.__init__(error, message, status_code)
    return error


class InvalidArgument(V2DError):
    """The request is malformed; the message names the field."""

    kind = "INVALID_ARGUMENT"


class InferenceError(MLServerError, InvalidArgument):
    """Raised by runtimes for a request they cannot serve (MLServer's name): a 400."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, 400)


class InvalidModelURI(MLServerError):
    """A model's ``parameters.uri`` does not name anything usable (422, as MLServer)."""

    def __init__(self, name: str, model_uri: str | None = None) -> None:
        message = f"invalid uri for model '{name}'" + (f": {model_uri}" if model_uri else "")
        super().__init__(message, 422)


class ModelParametersMissing(MLServerError):
    """A model's settings have no ``parameters`` where its runtime needs them (400)."""

    def __init__(self, model_name: str) -> None:
        super().__init__(f"parameters missing for model '{model_name}'", 400)


class NotFound(V2DError):
    """Something named in the request does not exist."""

    kind = "NOT_FOUND"


class ModelNotFound(MLServerError, NotFound):
    """No model of that name (and version): a 404."""

    def __init__(self, name: str, version: str | None = None) -> None:
        if version:
            message = f"model '{name}' version '{version}' not found"
        else:
            message = f"model '{name}' not found"
        super().__init__(message, 404)
        self.name = name
        self.version = version


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


class Cancelled(V2DError):
    """The client went away (or cancelled its call) before the answer; its work was cancelled."""

    kind = "CANCELLED"


class Internal(V2DError):
    """A runtime failed; the message is the exception's."""

    kind = "INTERNAL"


#: An error carrying its own HTTP status (``MLServerError`` under a name of v2d's).
StatusCodeError = MLServerError


#: v2d's class of each kind its classes have (an error rebuilt from its kind is one of these).
CLASS_OF_KIND: Dict[str, type] = {
    cls.kind: cls
    for cls in (
        InvalidArgument,
        NotFound,
        Unavailable,
        FailedPrecondition,
        PayloadTooLarge,
        Unimplemented,
        Cancelled,
        Internal,
    )
}
