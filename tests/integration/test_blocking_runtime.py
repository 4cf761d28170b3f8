"""
A synchronous ``predict`` that sleeps: with ``run_in_thread`` the server keeps
answering meanwhile; without it, the log names the model that blocked the loop.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import write_model

pytestmark = pytest.mark.integration

SLEEPY = """
import time

from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Sleepy(MLModel):
    def predict(self, payload):
        time.sleep(2)
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="slept", shape=[1], datatype="INT32", data=[2])],
        )
"""

BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]}


def _infer_in_background(d: Daemon, name: str) -> tuple:
    answers: list = []
    path = f"/v2/models/{name}/infer"
    thread = threading.Thread(target=lambda: answers.append(d.post(path, BODY, timeout=30)))
    thread.start()
    return thread, answers


def test_run_in_thread_keeps_the_server_answering_and_blocking_is_reported(tmp_path):
    write_model(tmp_path, "threaded", "models.Sleepy", SLEEPY, run_in_thread=True)
    write_model(tmp_path, "blocking", "models.Sleepy", SLEEPY)
    with Daemon(str(tmp_path), "--blocked-loop-warning", "1", grpc=False) as d:
        thread, answers = _infer_in_background(d, "threaded")
        time.sleep(0.3)  # the predict is sleeping now
        slowest = 0.0
        while thread.is_alive():
            began = time.monotonic()
            assert d.get("/v2/health/live", timeout=5)[0] == 200
            slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.1)
        assert slowest < 0.5, f"/v2/health/live took {slowest:.2f} s while a threaded predict ran"
        status, out, _ = answers[0]
        assert status == 200 and out["outputs"][0]["data"] == [2], out
        assert "blocked the event loop" not in d.log()

        thread, answers = _infer_in_background(d, "blocking")
        time.sleep(0.3)
        began = time.monotonic()
        assert d.get("/v2/health/live", timeout=10)[0] == 200
        assert time.monotonic() - began > 1.0, "the loop was blocked: this is what the warning is for"
        thread.join()
        assert answers[0][0] == 200
        deadline = time.monotonic() + 5
        while "model blocking: predict blocked the event loop for 2." not in d.log():
            assert time.monotonic() < deadline, d.log()
            time.sleep(0.1)
        assert "run_in_thread" in d.log()
