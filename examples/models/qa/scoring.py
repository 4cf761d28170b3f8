"""A helper module of the qa example (found next to models.py, in the model's own namespace)."""

from typing import List

import numpy as np


def overlap_scores(questions: List[str], context: str) -> np.ndarray:
    """For each question, the share of its words found in the context."""
    words = set(context.lower().split())
    scores = []
    for question in questions:
        asked = [w.strip("?.,!") for w in question.lower().split()]
        scores.append(sum(w in words for w in asked) / max(len(asked), 1))
    return np.asarray(scores, dtype=np.float32)
