"""
Adaptive batching: an ``IModel`` wrapper that merges requests into one ``predict``.

With ``max_batch_size`` > 1 in model-settings.json, requests are queued until that many
are waiting or ``max_batch_time`` seconds have passed since the first; inputs are
concatenated on axis 0, the model predicts once, and every output is split back by
each request's share of axis 0.

Only requests that fit together are merged: the same input names, datatypes and
trailing shapes, and the same requested outputs. A request that does not fit the
batch is served on its own, so a malformed or odd request fails alone and never takes
the others down. The merged request carries the first request's parameters (headers
included); every response gets the merged response's parameters.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure

from v2d.errors import Internal
from v2d.interfaces import IModel
from v2d.types import (
    DATATYPES,
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    ResponseOutput,
)

__all__ = ["BatchingModel", "batching_wrapper"]


def _signature(request: InferenceRequest) -> Optional[tuple]:
    """What must match for requests to share a batch; None if the request cannot batch."""
    parts = []
    for inp in request.inputs:
        shape = list(inp.shape)
        if not shape:
            return None
        data = inp.data
        if DATATYPES.get(inp.datatype) is not None:
            if not isinstance(data, np.ndarray) or list(data.shape) != shape:
                return None
        elif not isinstance(data, list) or len(data) != int(np.prod(shape)):
            return None
        parts.append((inp.name, inp.datatype, tuple(shape[1:])))
    if not parts:
        return None
    outputs = tuple(o.name for o in request.outputs) if request.outputs else None
    return (tuple(parts), outputs)


def _merge(requests: List[InferenceRequest]) -> InferenceRequest:
    first = requests[0]
    inputs = []
    for i, inp in enumerate(first.inputs):
        pieces = [r.inputs[i] for r in requests]
        rows = sum(p.shape[0] for p in pieces)
        if DATATYPES.get(inp.datatype) is not None:
            data: Any = np.concatenate([p.data for p in pieces], axis=0)
        else:
            data = [item for p in pieces for item in p.data]
        inputs.append(
            RequestInput(
                name=inp.name,
                shape=[rows, *inp.shape[1:]],
                datatype=inp.datatype,
                data=data,
                parameters=inp.parameters,
            )
        )
    return InferenceRequest(id=first.id, parameters=first.parameters, inputs=inputs, outputs=first.outputs)


def _split(response: InferenceResponse, requests: List[InferenceRequest]) -> List[InferenceResponse]:
    sizes = [r.inputs[0].shape[0] for r in requests]
    total = sum(sizes)
    per_request: List[List[ResponseOutput]] = [[] for _ in requests]
    for output in response.outputs:
        data = output.data
        shape = list(output.shape) if output.shape is not None else list(np.shape(data))
        if not shape or shape[0] != total:
            raise Internal(
                f"batched output '{output.name}' has shape {shape}; its first dimension must be the "
                f"batch size {total} (set max_batch_size to 0 for models that do not batch on axis 0)"
            )
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        flat: Any = data
        if isinstance(data, np.ndarray):
            if data.ndim != len(shape):
                flat = data.reshape(total, -1)
        else:
            flat = list(data)
        start = 0
        for i, n in enumerate(sizes):
            if isinstance(flat, np.ndarray):
                piece: Any = flat[start : start + n]
            else:
                piece = flat[start * row : (start + n) * row]
            per_request[i].append(
                ResponseOutput(
                    name=output.name,
                    shape=[n, *shape[1:]],
                    datatype=output.datatype,
                    data=piece,
                    parameters=output.parameters,
                )
            )
            start += n
    return [
        InferenceResponse(
            model_name=response.model_name,
            model_version=response.model_version,
            id=request.id,
            parameters=response.parameters,
            outputs=outputs,
        )
        for request, outputs in zip(requests, per_request)
    ]


class BatchingModel(proxyForInterface(IModel, "model")):  # type: ignore[misc]
    """Wraps an IModel; ``predict`` queues requests into adaptive batches."""

    def __init__(self, model: Any, clock: IReactorTime, max_batch_size: int, max_batch_time: float) -> None:
        self.model = model
        self.clock = clock
        self.max_batch_size = max_batch_size
        self.max_batch_time = max_batch_time
        self._queue: List[Tuple[InferenceRequest, Deferred]] = []
        self._signature: Optional[tuple] = None
        self._timer: Optional[Any] = None

    @property
    def streaming(self) -> bool:
        return bool(getattr(self.model, "streaming", False))

    def predict_stream(self, payloads: Any) -> Any:
        return self.model.predict_stream(payloads)

    def predict(self, payload: InferenceRequest) -> Deferred:
        signature = _signature(payload)
        if signature is None:
            return self.model.predict(payload)
        if self._queue and signature != self._signature:
            self._flush()
        d: Deferred = Deferred()
        if not self._queue:
            self._signature = signature
        self._queue.append((payload, d))
        if len(self._queue) >= self.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.max_batch_time, self._flush)
        return d

    def _flush(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, []
        self._signature = None
        if not queue:
            return
        if len(queue) == 1:
            request, d = queue[0]
            self.model.predict(request).chainDeferred(d)
            return
        requests = [r for r, _ in queue]
        waiting = [d for _, d in queue]
        try:
            merged = _merge(requests)
            result = self.model.predict(merged)
        except Exception:
            result = Deferred()
            result.errback()

        def deliver(response: Any) -> None:
            if isinstance(response, Failure):
                for d in waiting:
                    d.errback(response)
                return
            try:
                if not isinstance(response, InferenceResponse):
                    raise Internal(
                        f"model predict() returned {type(response).__name__}, not an InferenceResponse"
                    )
                parts = _split(response, requests)
            except Exception:
                failure = Failure()
                for d in waiting:
                    d.errback(failure)
                return
            for d, part in zip(waiting, parts):
                d.callback(part)

        result.addBoth(deliver)

    def unload(self) -> Deferred:
        self._flush()
        return self.model.unload()


def batching_wrapper(clock: IReactorTime) -> Any:
    """The registry's ``wrap``: batches models whose settings ask for it."""

    def wrap(model: Any) -> Any:
        settings = model.settings
        if settings.max_batch_size and settings.max_batch_size > 1:
            return BatchingModel(model, clock, settings.max_batch_size, settings.max_batch_time)
        return model

    return wrap
