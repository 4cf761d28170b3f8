"""
A model's configuration in Triton's form (the model configuration extension), derived
from its metadata and model-settings.json.

Clients such as perf_analyzer read it to learn a model's tensors and batching. REST
serves the dict as JSON, gRPC as an ``inference.ModelConfig`` message.

- ``input``/``output`` come from the model's metadata (model-settings.json ``inputs`` /
  ``outputs``, or whatever the runtime's ``metadata()`` says). A model that declares
  none has empty lists: clients that generate data (perf_analyzer) then need the
  tensors declared.
- ``max_batch_size`` is model-settings.json's. When it is above 0 the first dimension
  of each declared shape is the batch dimension and is left out of ``dims``, as in
  Triton.
- ``model_transaction_policy.decoupled`` is false: every request gets one response
  (streaming is served by ``predict_stream`` on the streaming endpoints).
"""

from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["config_data_type", "model_config"]


def config_data_type(datatype: str) -> str:
    """Triton's ``DataType`` name for a protocol datatype (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _dims(shape: List[int], batched: bool) -> List[int]:
    dims = [int(d) for d in shape]
    return dims[1:] if batched and dims else dims


def model_config(model: Any) -> Dict[str, Any]:
    """The configuration of an ``IModel`` as Triton's JSON form."""
    meta = model.metadata()
    settings = model.settings
    max_batch_size = int(getattr(settings, "max_batch_size", 0) or 0)
    batched = max_batch_size > 0
    inputs = [
        {
            "name": t.name,
            "data_type": config_data_type(t.datatype),
            "format": "FORMAT_NONE",
            "dims": _dims(t.shape, batched),
            "is_shape_tensor": False,
            "allow_ragged_batch": False,
            "optional": False,
        }
        for t in meta.inputs
    ]
    outputs = [
        {
            "name": t.name,
            "data_type": config_data_type(t.datatype),
            "dims": _dims(t.shape, batched),
            "label_filename": "",
            "is_shape_tensor": False,
        }
        for t in meta.outputs
    ]
    return {
        "name": meta.name or model.name,
        "platform": meta.platform or "",
        "backend": "v2d",
        "max_batch_size": max_batch_size,
        "input": inputs,
        "output": outputs,
        "parameters": {},
        "model_transaction_policy": {"decoupled": False},
    }
