"""
The benchmark runtimes, written for MLServer 1.7.1 (the peer).

The same logic as ``benchmarks/models/v2d_runtimes.py``, in MLServer's API. MLServer
has no model configuration endpoint, which perf_analyzer reads before it sends a
request, so each runtime adds ``GET /v2/models/<name>/config`` through MLServer's
documented ``custom_handler``; the gRPC ``ModelConfig`` method is added by
``benchmarks/mlserver/serve.py``. Both answer from the tensors declared in the model's
model-settings.json, in the form of Triton's model configuration.

The benchmark copies this file into each generated model folder as ``models.py``.
"""

import time
from typing import Any, Dict, List

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

#: Seconds each SlowAddOne.predict call costs, whatever the batch size.
CALL_COST = 0.005


def _output(name: str, array: np.ndarray) -> ResponseOutput:
    """NumpyCodec's output without its ``parameters``.

    perf_analyzer's HTTP client reads ``binary_data_size`` from any output that has
    ``parameters`` and fails the request when it is missing; MLServer never sends it.
    """
    output = NumpyCodec.encode_output(name, array)
    output.parameters = None
    return output


def _tensors(tensors: Any) -> List[Dict[str, Any]]:
    return [
        {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": [int(d) for d in t.shape]}
        for t in tensors or []
    ]


def triton_config(model: MLModel) -> Dict[str, Any]:
    """The model's configuration in Triton's JSON form (batching left to the server)."""
    return {
        "name": model.name,
        "platform": "",
        "backend": "python",
        "max_batch_size": 0,
        "input": _tensors(model.settings.inputs),
        "output": _tensors(model.settings.outputs),
    }


class AddOne(MLModel):
    """Adds one to the first input."""

    async def load(self) -> bool:
        self.one = np.float32(1)
        return True

    @custom_handler(rest_path="/v2/models/add-one/config", rest_method="GET")
    async def model_config(self) -> Dict[str, Any]:
        return triton_config(self)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[_output("y", x + self.one)],
        )


class Echo(MLModel):
    """Sends the first input back as output ``y``."""

    @custom_handler(rest_path="/v2/models/echo/config", rest_method="GET")
    async def model_config(self) -> Dict[str, Any]:
        return triton_config(self)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[_output("y", x)],
        )


class SlowAddOne(AddOne):
    """AddOne that costs CALL_COST seconds per call, however many rows it gets."""

    @custom_handler(rest_path="/v2/models/slow-add-one/config", rest_method="GET")
    async def model_config(self) -> Dict[str, Any]:
        return triton_config(self)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        time.sleep(CALL_COST)
        return await super().predict(payload)


class SlowAddOneBatched(SlowAddOne):
    """SlowAddOne under another name, served with adaptive batching on."""

    @custom_handler(rest_path="/v2/models/slow-add-one-batched/config", rest_method="GET")
    async def model_config(self) -> Dict[str, Any]:
        return triton_config(self)
