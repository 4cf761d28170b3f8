"""
A client that goes away cancels the work it asked for, through a real ``twistd v2d``:
a runtime whose ``async def predict`` (and ``predict_stream``) sleeps 5 s sees
``CancelledError`` soon after its client disconnects (REST, the fast route and the
Klein streaming route, in mid-stream) or cancels its call (gRPC), and ``/metrics``
counts each as a CANCELLED request, with nothing left in flight.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

import grpc
import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import write_model
from v2d.grpc._messages import SERVICE_NAME, pb

pytestmark = pytest.mark.integration

SLEEPY = """
import asyncio

import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Sleepy(MLModel):
    def mark(self, what):
        with open(self.settings.parameters.extra["marker"], "a") as f:
            f.write(what + "\\n")

    async def nap(self):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            self.mark("cancelled")
            raise
        self.mark("finished")

    def answer(self):
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="y", shape=[1], datatype="FP32", data=np.array([1.0], dtype=np.float32))])

    async def predict(self, payload):
        self.mark("predict")
        await self.nap()
        return self.answer()

    async def predict_stream(self, payloads):
        async for payload in payloads:
            yield self.answer()  # the client goes away in mid-stream
            self.mark("stream")
            await self.nap()
            yield self.answer()
"""

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode()


def marks(marker) -> list:
    return marker.read_text().split() if marker.exists() else []


def wait_for(predicate, what: str, timeout: float = 3.0) -> None:
    """Well under the runtime's 5 s nap: only a cancel gets there in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def metrics(daemon: Daemon) -> str:
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
        return response.read().decode()


CANCELLED = re.compile(r'^model_infer_request_failure_total\{[^}]*kind="CANCELLED"[^}]*\} (\S+)$', re.M)


def cancelled_count(daemon: Daemon) -> float:
    found = CANCELLED.search(metrics(daemon))
    return float(found.group(1)) if found else 0.0


def disconnect_after(daemon: Daemon, path: str, seconds: float) -> None:
    """POST ``BODY`` to ``path``, then close the connection without reading the answer."""
    with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: v2d\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        )
        s.sendall(head.encode() + BODY)
        time.sleep(seconds)


def test_clients_that_go_away_cancel_the_runtimes_work(tmp_path):
    marker = tmp_path / "marks"
    models = tmp_path / "models"
    write_model(models, "sleepy", "models.Sleepy", SLEEPY, parameters={"extra": {"marker": str(marker)}})
    with Daemon(str(models)) as d:
        path = "/v2/models/sleepy/"
        steps = [
            ("REST infer", "predict", lambda: disconnect_after(d, path + "infer", 0.2)),
            ("REST infer_stream", "stream", lambda: disconnect_after(d, path + "infer_stream", 0.2)),
        ]
        with grpc.insecure_channel(d.grpc_address) as channel:
            message = pb.ModelInferRequest(model_name="sleepy")
            message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
            infer = channel.unary_unary(
                f"/{SERVICE_NAME}/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            stream = channel.stream_stream(
                f"/{SERVICE_NAME}/ModelStreamInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )

            def grpc_unary() -> None:
                call = infer.future(message)
                time.sleep(0.2)
                call.cancel()

            def grpc_stream() -> None:
                call = stream(iter([message]))
                time.sleep(0.2)
                call.cancel()

            steps.append(("gRPC ModelInfer", "predict", grpc_unary))
            steps.append(("gRPC ModelStreamInfer", "stream", grpc_stream))
            for n, (what, began, step) in enumerate(steps, start=1):
                step()
                seen = lambda n=n: marks(marker).count("cancelled") == n  # noqa: E731
                wait_for(seen, f"the runtime to see {what} cancelled")
                assert marks(marker)[-2:] == [began, "cancelled"], (what, marks(marker), d.log())
                counted = lambda n=n: cancelled_count(d) == n  # noqa: E731
                wait_for(counted, f"/metrics to count {what} as CANCELLED")
        assert "finished" not in marks(marker)
        assert re.search(r"^v2d_requests_in_flight 0\.0$", metrics(d), re.M), metrics(d)
        assert d.get("/v2/health/ready")[0] == 200
        assert "Unhandled" not in d.log() and "Traceback" not in d.log(), d.log()
