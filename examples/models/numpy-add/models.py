"""
An "advanced interface" runtime: it reads tensors and builds the response itself.

POST /v2/models/numpy-add/infer with an FP32 input "x" of shape [N, 3]; the output
"y" is x + offset (offset from model-settings.json parameters.extra, default 1).
"""

import numpy as np

from v2d import MLModel
from v2d.codecs import NumpyCodec
from v2d.types import InferenceRequest, InferenceResponse


class NumpyAdd(MLModel):
    async def load(self) -> bool:
        self.offset = np.float32(self.settings.parameters.extra.get("offset", 1.0))
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = x + self.offset
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output("y", y)],
        )
