"""
The scikit-learn case's runtime: MLServer's own ``mlserver_sklearn.SKLearnModel``.

Both servers serve this same file (copied in as ``models.py``), in MLServer's API: v2d
through its adapter for subclasses of the real ``mlserver.MLModel``, MLServer as it
serves any runtime. ``predict`` is SKLearnModel's; the subclass adds only what the
peer needs to be measurable at all, as ``mlserver_runtimes.py`` does: the model
configuration endpoint (``custom_handler``; v2d has its own and ignores it), and
outputs without ``parameters`` (perf_analyzer's HTTP client fails on an output that
has ``parameters`` but no ``binary_data_size``; SKLearnModel's NumpyCodec sets
``content_type``).
"""

from typing import Any, Dict

from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_sklearn import SKLearnModel


class BenchSKLearnModel(SKLearnModel):
    """SKLearnModel, measurable by perf_analyzer."""

    @custom_handler(rest_path="/v2/models/sklearn/config", rest_method="GET")
    async def model_config(self) -> Dict[str, Any]:
        tensors = [
            [
                {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": [int(d) for d in t.shape]}
                for t in ts
            ]
            for ts in (self.settings.inputs, self.settings.outputs)
        ]
        return {
            "name": self.name,
            "platform": "",
            "backend": "python",
            "max_batch_size": 0,
            "input": tensors[0],
            "output": tensors[1],
        }

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        response = await super().predict(payload)
        for output in response.outputs:
            output.parameters = None
        return response
