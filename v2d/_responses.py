"""
What a runtime's ``predict`` returned, made into the response the protocol sends.

Shared by the dataplane (responses of models in this process, and of streams) and worker children
(responses they encode themselves, see ``IEncodedInference``). Child-safe: standard
library and v2d's child-safe modules only.
"""

from __future__ import annotations

from typing import Any, Optional

from v2d.errors import Internal
from v2d.types import InferenceResponse

__all__ = ["complete_response"]


def complete_response(
    result: Any,
    name: str,
    version: Optional[str],
    request_id: Optional[str],
    source: str = "predict() returned",
) -> InferenceResponse:
    """
    ``result`` as the response to a request with ``request_id`` to model ``name``
    (``version``): it must be an InferenceResponse; a missing model name, version or id
    is filled in. Raises ``Internal`` naming the model (and ``source``, the method
    that gave ``result``) otherwise.
    """
    if not isinstance(result, InferenceResponse):
        raise Internal(f"model '{name}' {source} {type(result).__name__}, not an InferenceResponse")
    if not result.model_name:
        result.model_name = name
    if result.model_version is None:
        result.model_version = version
    if result.id is None:
        result.id = request_id
    return result
