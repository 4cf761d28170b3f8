"""
Prometheus metrics: per-model request counts and latencies, requests in flight.

The dataplane reports each finished request (and each stream, as one request) to an
observer, with the error kind of a failed one (CANCELLED: its client went away); this
module is that observer and serves the text exposition format at ``GET /metrics``
(``metrics_path``) on the REST endpoints, or on a listener of its own (``metrics``, as
MLServer's ``metrics_port``). Each service has its own ``CollectorRegistry`` (no
process-global state). Names follow MLServer's where the idea is the same. Runtimes'
own metrics (``register``/``log``, v2d.custom_metrics) are recorded here too, as
histograms labelled by model name and version.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource

from v2d.custom_metrics import LABELS, log, register

__all__ = ["Metrics", "MetricsListenerResource", "MetricsResource", "log", "register"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The metrics of one v2d service."""

    def __init__(self, inflight: Optional[Callable[[], float]] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.success = Counter(
            "model_infer_request_success",
            "Inference requests served.",
            ["model", "version"],
            registry=self.registry,
        )
        self.failure = Counter(
            "model_infer_request_failure",
            "Inference requests that failed, by error kind (CANCELLED: the client went away).",
            ["model", "version", "kind"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "model_infer_request_duration_seconds",
            "Time from decoded request to response, per model.",
            ["model", "version"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("v2d_requests_in_flight", "Requests being served.", registry=self.registry)
        if inflight is not None:
            self.in_flight.set_function(inflight)
        self._children: dict = {}
        self._custom: dict = {}

    def observe(self, name: str, version: Optional[str], seconds: float, error_kind: Optional[str]) -> None:
        """Record one finished request (the dataplane's observer)."""
        key = (name, version)
        children = self._children.get(key)
        if children is None:
            label = version or ""
            children = self._children[key] = (
                self.success.labels(name, label),
                self.duration.labels(name, label),
            )
        if error_kind is None:
            children[0].inc()
        else:
            self.failure.labels(name, version or "", error_kind).inc()
        children[1].observe(seconds)

    def define_custom(self, name: str, description: str) -> Histogram:
        """A runtime's histogram ``name`` (created on first use; a custom-metrics sink)."""
        metric = self._custom.get(name)
        if metric is None:
            try:
                metric = Histogram(name, description, list(LABELS), registry=self.registry)
            except ValueError as e:  # the name is taken (a server metric or a series of one)
                raise ValueError(f"custom metric {name!r} cannot be registered: {e}") from None
            metric = self._custom[name] = metric
        return metric

    def observe_custom(self, name: str, description: str, model: str, version: str, value: float) -> None:
        """Observe one value of a runtime's metric for a model (a custom-metrics sink)."""
        self.define_custom(name, description).labels(model, version).observe(value)

    def exposition(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class MetricsResource(Resource):
    """``GET /metrics``."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.exposition()


class MetricsListenerResource(Resource):
    """The whole of the separate metrics listener: ``GET path``; any other path is 404."""

    isLeaf = True

    def __init__(self, metrics: Metrics, path: str) -> None:
        super().__init__()
        self.metrics = MetricsResource(metrics)
        self.path = path.encode("utf-8")

    def render(self, request: Any) -> bytes:
        if request.path == self.path:
            if request.method in (b"GET", b"HEAD"):
                return self.metrics.render_GET(request)
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return _error(
                request, f"method {request.method.decode('latin-1')} not allowed on {self.path.decode()}"
            )
        request.setResponseCode(404)
        where = request.path.decode("latin-1")
        return _error(
            request, f"no such endpoint: {where} (this listener serves the metrics at {self.path.decode()})"
        )


def _error(request: Any, message: str) -> bytes:
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": message}).encode()
