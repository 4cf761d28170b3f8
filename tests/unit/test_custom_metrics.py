"""
Custom metrics (``register`` / ``log``): the model context, recording into a fresh
Prometheus registry, in this process (``LocalModel``) and from worker children (the
``metrics`` message). No reactor: runtimes here are plain functions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

import v2d
from v2d import custom_metrics
from v2d.custom_metrics import InvalidModelContext, ModelContext, log, model_context, register
from v2d.metrics import Metrics
from v2d.runtime import MLModel
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, InferenceResponse
from v2d.wrappers import LocalModel


def _samples(metrics: Metrics, name: str) -> dict:
    """{(suffix, model, version): value} of one histogram, from the text exposition."""
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name in (name + "_count", name + "_sum"):
                suffix = sample.name[len(name) + 1 :]
                out[(suffix, sample.labels["model_name"], sample.labels["model_version"])] = sample.value
    return out


def test_public_names():
    from v2d import metrics as server_metrics

    assert v2d.register is register and v2d.log is log
    assert server_metrics.register is register and server_metrics.log is log


def test_import_v2d_stays_light_and_the_api_needs_no_prometheus():
    code = (
        "import sys, v2d\n"
        "from v2d import register, log\n"
        "import v2d.custom_metrics\n"
        "heavy = [m for m in ('twisted', 'prometheus_client', 'klein', 'grpc') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_log_outside_a_model_is_a_500_as_in_mlserver():
    with pytest.raises(InvalidModelContext, match="outside of a model context") as info:
        log(anything=1)
    assert info.value.status_code == 500 and info.value.kind == "INTERNAL"


def test_register_needs_no_context_and_the_first_description_wins():
    first = register("tcm_first_wins", "The first")
    again = register("tcm_first_wins", "Another")
    assert first == again and again.description == "The first"
    with pytest.raises(ValueError, match="invalid metric name"):
        register("not a name", "x")


def test_log_records_for_the_current_model_with_its_labels():
    metrics = Metrics()
    register("tcm_latency", "Latency seen by the runtime")
    with model_context(ModelContext("m1", "v1", metrics)):
        log(tcm_latency=0.5, tcm_unregistered=3)
        register("tcm_latency", "ignored").observe(1.5)
    with model_context(ModelContext("m2", "", metrics)):
        log(tcm_latency=2)
    assert custom_metrics.current_model() is None
    assert _samples(metrics, "tcm_latency") == {
        ("count", "m1", "v1"): 2.0,
        ("sum", "m1", "v1"): 2.0,
        ("count", "m2", ""): 1.0,
        ("sum", "m2", ""): 2.0,
    }
    assert _samples(metrics, "tcm_unregistered")[("count", "m1", "v1")] == 1.0
    text = metrics.exposition().decode()
    assert "# HELP tcm_latency Latency seen by the runtime" in text
    assert "# HELP tcm_unregistered " + custom_metrics.DEFAULT_DESCRIPTION in text


def test_values_must_be_numbers():
    with model_context(ModelContext("m", "", Metrics())):
        with pytest.raises(TypeError, match="custom metric 'tcm_text' must be a number, not str"):
            log(tcm_text="1")


def test_a_name_taken_by_a_server_metric_is_refused_clearly():
    metrics = Metrics()
    name = "model_infer_request_duration_seconds"
    with pytest.raises(ValueError, match=f"custom metric '{name}' cannot be registered"):
        metrics.define_custom(name, "clash")


def test_concurrent_tasks_keep_their_own_model():
    metrics = Metrics()

    async def serve(name: str, delay: float) -> None:
        with model_context(ModelContext(name, "", metrics)):
            await asyncio.sleep(delay)
            log(tcm_concurrent=1)

    async def main() -> None:
        await asyncio.gather(*(serve(f"model-{i}", 0.001 * (5 - i)) for i in range(5)))

    asyncio.run(main())
    assert _samples(metrics, "tcm_concurrent") == {("count", f"model-{i}", ""): 1.0 for i in range(5)} | {
        ("sum", f"model-{i}", ""): 1.0 for i in range(5)
    }


class _Counting(MLModel):
    def load(self) -> bool:
        register("tcm_requests", "Requests the runtime counted")
        log(tcm_loads=1)
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        log(tcm_requests=len(payload.inputs) + 1)
        return InferenceResponse(model_name=self.name, outputs=[])


def test_a_local_model_runs_its_runtime_as_the_current_model():
    metrics = Metrics()
    settings = ModelSettings(name="counting", versions=["2"], implementation="x.Y")
    model = LocalModel(_Counting(settings), metrics=metrics)
    results: List[Any] = []
    model.load().addBoth(results.append)
    for _ in range(3):
        model.predict(InferenceRequest(inputs=[])).addBoth(results.append)
    assert results[0] is True and all(isinstance(r, InferenceResponse) for r in results[1:])
    assert _samples(metrics, "tcm_requests") == {
        ("count", "counting", "2"): 3.0,
        ("sum", "counting", "2"): 3.0,
    }
    assert _samples(metrics, "tcm_loads")[("count", "counting", "2")] == 1.0
    assert custom_metrics.current_model() is None
