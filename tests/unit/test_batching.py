"""Adaptive batching with a fake model and a Clock: merge, split, odd requests alone."""

from __future__ import annotations

import numpy as np
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from v2d.batching import BatchingModel
from v2d.errors import Internal
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput


class Doubler:
    def __init__(self, bad_output=False):
        self.settings = ModelSettings.from_dict({"name": "m", "max_batch_size": 3, "max_batch_time": 0.01})
        self.name, self.version, self.ready = "m", None, True
        self.calls = []
        self.bad_output = bad_output

    def predict(self, payload):
        self.calls.append(payload)
        try:
            return succeed(self._predict(payload))
        except Exception:
            return fail()

    def _predict(self, payload):
        x = payload.inputs[0].data
        y = x * 2 if not self.bad_output else x[:1]
        return InferenceResponse(
            model_name="m",
            outputs=[
                ResponseOutput(name="y", shape=list(y.shape), datatype="FP32", data=y),
                ResponseOutput(
                    name="t",
                    shape=[len(payload.inputs[1].data)],
                    datatype="BYTES",
                    data=[s.upper() for s in payload.inputs[1].data],
                ),
            ],
        )


def request(rows, rid, cols=2):
    x = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols) + rid
    return InferenceRequest(
        id=str(rid),
        inputs=[
            RequestInput(name="x", shape=[rows, cols], datatype="FP32", data=x),
            RequestInput(name="t", shape=[rows], datatype="BYTES", data=[f"r{rid}"] * rows),
        ],
    )


def results(ds):
    out = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_full_batch_is_one_predict_split_back():
    model, clock = Doubler(), Clock()
    batching = BatchingModel(model, clock, 3, 0.01)
    reqs = [request(1, 0), request(2, 10), request(1, 20)]
    got = results([batching.predict(r) for r in reqs])
    assert len(model.calls) == 1 and model.calls[0].inputs[0].shape == [4, 2]
    for r, response in zip(reqs, got):
        assert response.id == r.id
        np.testing.assert_array_equal(response.outputs[0].data, r.inputs[0].data * 2)
        assert response.outputs[0].shape == r.inputs[0].shape
        assert response.outputs[1].data == [s.upper() for s in r.inputs[1].data]


def test_time_limit_flushes_a_partial_batch():
    model, clock = Doubler(), Clock()
    batching = BatchingModel(model, clock, 3, 0.01)
    got = results([batching.predict(request(1, 0)), batching.predict(request(1, 1))])
    assert not got
    clock.advance(0.01)
    assert len(got) == 2 and len(model.calls) == 1


def test_odd_requests_are_served_alone():
    model, clock = Doubler(), Clock()
    batching = BatchingModel(model, clock, 3, 0.01)
    good = batching.predict(request(1, 0))
    odd = InferenceRequest(inputs=[RequestInput(name="x", shape=[3], datatype="FP32", data=[1, 2])])
    model_calls_before = len(model.calls)
    failed = results([batching.predict(odd)])  # malformed: not batched, fails on its own
    assert len(model.calls) == model_calls_before + 1 and model.calls[-1] is odd
    assert len(failed) == 1
    other_shape = batching.predict(request(1, 5, cols=3))  # different trailing shape flushes the queue
    clock.advance(1)
    assert len(results([good, other_shape])) == 2


def test_outputs_that_do_not_batch_fail_every_request_clearly():
    model, clock = Doubler(bad_output=True), Clock()
    batching = BatchingModel(model, clock, 2, 0.01)
    got = results([batching.predict(request(1, 0)), batching.predict(request(2, 1))])
    assert all(isinstance(f.value, Internal) and "batch size 3" in str(f.value) for f in got)
