"""Adaptive batching through a real daemon: concurrent requests share predict calls."""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration

RUNTIME = """
import asyncio
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Counted(MLModel):
    calls = 0
    rows = []

    async def predict(self, payload):
        Counted.calls += 1
        x = payload.inputs[0].data
        Counted.rows.append(int(x.shape[0]))
        await asyncio.sleep(0.02)  # a fixed cost per call, as a model on an accelerator has
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="y", shape=list(x.shape), datatype="FP32", data=x * 10),
                ResponseOutput(name="calls", shape=[x.shape[0], 1], datatype="INT64",
                               data=[[Counted.calls]] * x.shape[0]),
            ],
        )
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = root / "batched"
    folder.mkdir()
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "batched",
                "implementation": "models.Counted",
                "max_batch_size": 8,
                "max_batch_time": 0.05,
            }
        )
    )
    (folder / "models.py").write_text(textwrap.dedent(RUNTIME))
    with Daemon(str(root), grpc=False) as d:
        yield d


def one(daemon, i):
    body = {
        "id": str(i),
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [i, i + 0.5]}],
    }
    return daemon.post("/v2/models/batched/infer", body)


def test_concurrent_requests_are_batched_and_split_back(daemon):
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: one(daemon, i), range(32)))
    calls = set()
    for i, (status, body, _) in enumerate(results):
        assert status == 200, body
        assert body["id"] == str(i)
        y = next(o for o in body["outputs"] if o["name"] == "y")
        assert y["shape"] == [1, 2] and y["data"] == [i * 10, (i + 0.5) * 10]
        calls.add(next(o for o in body["outputs"] if o["name"] == "calls")["data"][0])
    # 32 requests in far fewer predict calls.
    assert len(calls) < 16


def test_a_bad_request_fails_alone(daemon):
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(one, daemon, i) for i in range(3)]
        bad = pool.submit(
            daemon.post,
            "/v2/models/batched/infer",
            {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, "a"]}]},
        )
        assert all(f.result()[0] == 200 for f in good)
        assert bad.result()[0] == 400
