"""
The benchmark runtimes, written for v2d.

``benchmarks/models/mlserver_runtimes.py`` holds the same logic written for MLServer,
so that both servers run the same work per request:

- ``AddOne``: ``y = x + 1`` on an FP32 tensor (the benchmark sends [1, 16]).
- ``Echo``: ``y = x``, the tensor sent back as it came (1 MiB and 64 MiB).
- ``SlowAddOne``: ``AddOne`` with a fixed cost per ``predict`` call (a blocking sleep
  standing in for compute that holds the interpreter), used to measure adaptive
  batching: with ``max_batch_size`` set, one call serves many requests.

The benchmark copies this file into each generated model folder as ``models.py``.
"""

import time

import numpy as np

from v2d import MLModel
from v2d.codecs import NumpyCodec
from v2d.types import InferenceRequest, InferenceResponse

#: Seconds each SlowAddOne.predict call costs, whatever the batch size.
CALL_COST = 0.005


class AddOne(MLModel):
    """Adds one to the first input."""

    async def load(self) -> bool:
        self.one = np.float32(1)
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("y", x + self.one)],
        )


class Echo(MLModel):
    """Sends the first input back as output ``y``."""

    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("y", x)],
        )


class SlowAddOne(AddOne):
    """AddOne that costs CALL_COST seconds per call, however many rows it gets."""

    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        time.sleep(CALL_COST)
        return super().predict(payload)
