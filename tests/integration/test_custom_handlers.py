"""
Custom handlers and custom metrics end to end: a real ``twistd v2d`` serving a model
whose runtime has ``@custom_handler`` methods and calls ``register`` / ``log``, in
process and in a worker process, over real HTTP on loopback.

Checked: a POST with a JSON list and a GET with query parameters reach the handlers
(in the worker when there is one); bad input is a 400 naming it; the runtime's metric
shows on ``/metrics`` with the model's labels and the right count; unloading the model
takes its routes away (404) and loading it brings them back; a second model claiming
the same route fails to load, saying which model has it.
"""

from __future__ import annotations

import urllib.request

import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import write_model

pytestmark = pytest.mark.integration

RUNTIME = """
import asyncio
import os

from v2d import MLModel, log, register
from v2d.handlers import custom_handler
from v2d.types import InferenceResponse


class Summer(MLModel):
    async def load(self):
        register("summer_request_items", "Items in the requests the summer model served")
        return True

    @custom_handler(rest_path="/summer/sum")
    async def total(self, payload: list) -> dict:
        await asyncio.sleep(0)
        log(summer_request_items=len(payload))
        return {"sum": sum(payload), "pid": os.getpid()}

    @custom_handler(rest_path="/summer/slow")
    async def slow(self, payload: dict) -> dict:
        await asyncio.sleep(payload["seconds"])
        return {"slept": payload["seconds"]}

    @custom_handler(rest_path="/summer/scale", rest_method="GET")
    def scale(self, value: float, factor: int = 2) -> dict:
        return {"scaled": value * factor, "pid": os.getpid()}

    def predict(self, payload):
        log(summer_request_items=len(payload.inputs))
        return InferenceResponse(model_name=self.name, outputs=[])
"""

CLASH = """
from v2d import MLModel
from v2d.handlers import custom_handler


class Clash(MLModel):
    @custom_handler(rest_path="/summer/sum")
    def mine(self, payload: list) -> int:
        return 0

    def predict(self, payload):
        raise NotImplementedError
"""


def _histogram_count(daemon: Daemon, name: str) -> dict:
    """{labels: count} of one histogram on /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                if sample.name == name + "_count":
                    counts[tuple(sorted(sample.labels.items()))] = sample.value
    return counts


@pytest.fixture(params=[[], ["--workers", "1"]], ids=["in-process", "workers"])
def daemon(request, tmp_path):
    write_model(tmp_path, "summer", "models.Summer", RUNTIME)
    with Daemon(str(tmp_path), *request.param, grpc=False) as daemon:
        daemon.in_worker = bool(request.param)  # type: ignore[attr-defined]
        yield daemon


def test_handlers_answer_and_metrics_count(daemon, tmp_path):
    status, body, _ = daemon.post("/summer/sum", [1, 2, 3, 4])
    assert status == 200 and body["sum"] == 10
    assert (body["pid"] != daemon.process.pid) == daemon.in_worker
    status, body, _ = daemon.get("/summer/scale?value=1.5&factor=4")
    assert status == 200 and body["scaled"] == 6.0

    assert daemon.get("/summer/scale?value=x")[:2] == (
        400,
        {"error": "query parameter 'value' must be a number, got 'x'"},
    )
    status, body, _ = daemon.post("/summer/sum", b"[1, 2")
    assert status == 400 and "request body is not valid JSON" in body["error"]

    for _ in range(3):
        assert daemon.post("/summer/sum", [1])[0] == 200
    assert daemon.post("/v2/models/summer/infer", {"inputs": []})[0] == 200
    labels = (("model_name", "summer"), ("model_version", ""))
    assert _histogram_count(daemon, "summer_request_items") == {labels: 5.0}


def test_unload_removes_the_routes(daemon, tmp_path):
    assert daemon.post("/summer/sum", [1])[0] == 200
    assert daemon.post("/v2/repository/models/summer/unload")[0] == 200
    assert daemon.post("/summer/sum", [1])[:2] == (404, {"error": "no such endpoint: POST /summer/sum"})
    assert daemon.post("/v2/repository/models/summer/load")[0] == 200
    assert daemon.post("/summer/sum", [5])[1]["sum"] == 5


def test_a_second_model_on_the_same_route_fails_to_load(daemon, tmp_path):
    write_model(tmp_path, "clash", "models.Clash", CLASH)
    status, body, _ = daemon.post("/v2/repository/models/clash/load")
    assert status == 400
    assert "custom handler mine() of model 'clash': POST /summer/sum is already served by model 'summer'" in (
        body["error"]
    )
    assert daemon.post("/summer/sum", [2])[1]["sum"] == 2


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["in-process", "workers"])
def test_sigterm_waits_for_a_custom_handler_in_flight(tmp_path, workers):
    import signal
    import threading
    import time

    write_model(tmp_path, "summer", "models.Summer", RUNTIME)
    d = Daemon(str(tmp_path), *workers, "--shutdown-timeout", "10", grpc=False)
    with d:
        answers: list = []
        call = threading.Thread(target=lambda: answers.append(d.post("/summer/slow", {"seconds": 1.5})))
        call.start()
        time.sleep(0.5)
        assert d.process is not None
        d.process.send_signal(signal.SIGTERM)
        d.process.wait(30)
        call.join(10)
    status, body, _ = answers[0]
    assert (status, body) == (200, {"slept": 1.5}), "the drain waited for the handler's answer"
