"""
The ``decode_args`` example of MLServer's custom runtime docs, with a toy model.

Inputs are decoded from the type hints (two lists of strings); the returned array is
encoded as the response. The "model" scores each question by the share of its words
that appear in the context.
"""

from typing import List

import numpy as np

from v2d import MLModel
from v2d.codecs import decode_args

from scoring import overlap_scores


class QuestionAnswering(MLModel):
    async def load(self) -> bool:
        self._model = overlap_scores
        return True

    @decode_args
    async def predict(self, questions: List[str], context: List[str]) -> np.ndarray:
        return self._model(questions, " ".join(context))
