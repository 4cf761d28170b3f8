"""
Triton's perf_analyzer (PyPI perf-analyzer, set up by .ci/setup-perf-analyzer.sh)
against a real ``twistd v2d``, over ``-i http`` and ``-i grpc``, with no flags that
adapt it to v2d: it reads the model's metadata and configuration, sends random tensors
(binary over HTTP, raw over gRPC) and must finish its measurement.

The only flags given shorten and steady the measurement (windows of 1 s; a stability
band wide enough for a busy two-core machine), never the protocol.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from tests.support.daemon import Daemon
from tests.support.perf_analyzer import find_perf_analyzer, parse_client_stats, run_perf_analyzer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNTIME = """
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput


class AddSub(MLModel):
    def predict(self, payload):
        a = np.asarray(payload.inputs[0].data, dtype=np.float32)
        b = np.asarray(payload.inputs[1].data, dtype=np.float32)
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="OUTPUT0", shape=list(a.shape), datatype="FP32", data=a + b),
            ResponseOutput(name="OUTPUT1", shape=list(a.shape), datatype="FP32", data=a - b),
        ])


class Reverse(MLModel):
    def predict(self, payload):
        words = [bytes(w)[::-1] if isinstance(w, bytes) else w[::-1] for w in payload.inputs[0].data]
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="REVERSED", shape=payload.inputs[0].shape, datatype="BYTES", data=words)])
"""

MODELS = {
    # Triton's classic example shape: batched, 16 FP32 values per item.
    "add_sub": {
        "implementation": "models.AddSub",
        "max_batch_size": 8,
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
            {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]},
        ],
        "outputs": [
            {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]},
            {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 16]},
        ],
    },
    # Not batched, BYTES in and out.
    "reverse": {
        "implementation": "models.Reverse",
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [4]}],
        "outputs": [{"name": "REVERSED", "datatype": "BYTES", "shape": [4]}],
    },
}

MEASUREMENT = ["--measurement-interval", "1000", "--stability-percentage", "100", "--max-trials", "20"]


@pytest.fixture(scope="module")
def perf_analyzer():
    command = find_perf_analyzer()
    if command is None:
        message = "perf_analyzer is not set up (run .ci/setup-perf-analyzer.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return command


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    for name, settings in MODELS.items():
        folder = models / name
        folder.mkdir()
        (folder / "model-settings.json").write_text(json.dumps(dict(settings, name=name)))
        (folder / "models.py").write_text(textwrap.dedent(RUNTIME))
    with Daemon(str(models)) as d:
        yield d


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_perf_analyzer_completes(perf_analyzer, daemon, protocol, model):
    url = daemon.grpc_address if protocol == "grpc" else f"127.0.0.1:{daemon.http_port}"
    result = run_perf_analyzer(perf_analyzer, model, protocol, url, *MEASUREMENT)
    report = f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, report
    stats = parse_client_stats(result.stdout)
    assert stats.get("request_count", 0) > 0, report
    assert stats.get("throughput", 0) > 0, report
    assert "error" not in result.stderr.lower(), report
    assert "Traceback" not in daemon.log()
