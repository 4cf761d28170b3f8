"""
The benchmark runtimes, written for KServe 0.21 (``kserve.Model``).

The same logic as ``benchmarks/models/v2d_runtimes.py``, in KServe's Open Inference
Protocol API: ``predict`` takes an ``InferRequest`` and returns an ``InferResponse``
whose ``InferOutput`` is set from a numpy array. KServe sends it as JSON, with the
binary tensor extension when the REST request asks for binary outputs, or as raw
contents on gRPC.

``benchmarks/kserve/serve.py`` builds one of each, under the model names of the other
servers, and serves them with ``kserve.ModelServer``. KServe's Python server has no
adaptive batching, so the batching case has no KServe row with batching on.
"""

import time
from typing import Dict, Optional

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.utils.utils import generate_uuid

#: Seconds each SlowAddOne.predict call costs, whatever the batch size.
CALL_COST = 0.005


def respond(model: Model, payload: InferRequest, name: str, array: np.ndarray) -> InferResponse:
    """One FP32 output, in whatever form the request asked for (JSON, binary, raw).

    ``set_data_from_numpy`` keeps the array's bytes (raw contents on gRPC); KServe
    turns them into JSON for a REST request that did not ask for binary outputs.
    """
    output = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
    output.set_data_from_numpy(array)
    return InferResponse(
        response_id=payload.id or generate_uuid(),
        model_name=model.name,
        infer_outputs=[output],
        use_binary_outputs=payload.use_binary_outputs,
        requested_outputs=payload.request_outputs,
    )


class AddOne(Model):
    """Adds one to the first input."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.one = np.float32(1)
        self.ready = True
        return self.ready

    def compute(self, x: np.ndarray) -> np.ndarray:
        return x + self.one

    async def predict(
        self,
        payload: InferRequest,
        headers: Optional[Dict[str, str]] = None,
        response_headers: Optional[Dict[str, str]] = None,
    ) -> InferResponse:
        return respond(self, payload, "y", self.compute(payload.inputs[0].as_numpy()))


class Echo(AddOne):
    """Sends the first input back as output ``y``."""

    def compute(self, x: np.ndarray) -> np.ndarray:
        return x


class SlowAddOne(AddOne):
    """AddOne that costs CALL_COST seconds per call (a blocking sleep, as in the others)."""

    def compute(self, x: np.ndarray) -> np.ndarray:
        time.sleep(CALL_COST)
        return x + self.one


#: Model name -> runtime class, as in the other servers' repositories.
MODELS = {"add-one": AddOne, "echo": Echo, "slow-add-one": SlowAddOne}
