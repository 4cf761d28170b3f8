"""
Every message between the server and a worker child, defined once.

After the JSON handshake (v2d.workers._handshake) each message is a pickled tuple
``(op, request_id, body)``; ``op`` is the value of an ``Op`` (a plain string on the
wire, so either side reads it without importing this module's classes). A request's
replies carry its id; id 0 is for messages that answer no request.

Server to child:

- ``load`` (ModelSettings) -> ``loaded`` (a ``LoadedInfo`` dict) or ``error``
- ``predict`` (InferenceRequest) -> ``result`` (what ``predict`` returned) or ``error``
- ``infer_encoded`` ((wire, bytes, headers)) -> ``result`` ((body bytes, extra)) or ``error``
- ``custom`` ((attribute, has_body, body, query)) -> ``result`` or ``error``
- ``cancel`` (None): the server gave up on that request; no reply follows
- ``stream_open`` -> any number of ``stream_item`` then ``stream_end`` or ``error``;
  ``stream_item`` (InferenceRequest), ``stream_close`` (no more requests) and
  ``stream_cancel`` go the other way under the same id
- ``unload`` (None) -> ``unloaded`` or ``error``

Either way: ``release`` (id 0, a list of shared-memory paths the sender is done with,
v2d.workers._wire). Child to server only: ``metrics`` (id 0, ``(definitions,
observations)``: the custom metrics logged since the last one).

Bump ``v2d.workers._wire.WIRE_VERSION`` when this vocabulary changes incompatibly.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Dict, List, Mapping, Tuple, TypedDict

__all__ = ["Handler", "LoadedInfo", "Message", "Op", "REQUESTS", "dispatch", "message", "table"]


class Op(enum.Enum):
    """The operations of the wire; ``.value`` is what travels."""

    LOAD = "load"
    LOADED = "loaded"
    PREDICT = "predict"
    INFER_ENCODED = "infer_encoded"
    CUSTOM = "custom"
    RESULT = "result"
    ERROR = "error"
    CANCEL = "cancel"
    STREAM_OPEN = "stream_open"
    STREAM_ITEM = "stream_item"
    STREAM_CLOSE = "stream_close"
    STREAM_CANCEL = "stream_cancel"
    STREAM_END = "stream_end"
    UNLOAD = "unload"
    UNLOADED = "unloaded"
    RELEASE = "release"
    METRICS = "metrics"


#: Ops a child answers with one ``result`` (or ``loaded``/``unloaded``) or one ``error``.
REQUESTS = frozenset({Op.LOAD, Op.PREDICT, Op.INFER_ENCODED, Op.CUSTOM, Op.UNLOAD})


class LoadedInfo(TypedDict, total=False):
    """The body of ``loaded``: what the server needs to know of a loaded runtime."""

    ready: bool  # the ready rule of v2d.runtimes
    metadata: Any  # MetadataModelResponse
    streaming: bool  # whether the runtime serves streams of its own
    wires: List[str]  # encodings the child decodes and encodes itself (IEncodedInference)
    handlers: List[Any]  # the runtime's custom handlers (v2d.handlers.custom.HandlerRoute)


#: A message as it travels: (op value, request id, body).
Message = Tuple[str, int, Any]
#: What a dispatch table maps an op to: called with the request id and the body.
Handler = Callable[[int, Any], None]


def message(op: Op, rid: int = 0, body: Any = None) -> Message:
    """The tuple that travels for ``op``."""
    return (op.value, rid, body)


def dispatch(table: Mapping[str, Handler], received: Message, unknown: Callable[[str, int], None]) -> None:
    """Call the handler ``table`` has for the message's op (``unknown`` when it has none)."""
    op, rid, body = received
    handler = table.get(op)
    if handler is None:
        unknown(op, rid)
    else:
        handler(rid, body)


def table(handlers: Mapping[Op, Handler]) -> Dict[str, Handler]:
    """A dispatch table keyed by what travels, from one keyed by ``Op``."""
    return {op.value: handler for op, handler in handlers.items()}
