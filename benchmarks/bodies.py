"""
Request bodies for the fallback load generators (wrk, h2load), which send one prepared
body over and over: the same finite values perf_analyzer sends, as a REST JSON body, a
REST body with the binary tensor extension, or a length-prefixed gRPC
``ModelInferRequest`` with raw contents.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["grpc_body", "rest_body", "values"]


def values(load: Any) -> np.ndarray:
    """The FP32 tensor x of ``load`` ([1, elements], finite)."""
    if load.input_data != "zero" and load.elements <= (1 << 20):
        with open(load.input_data) as f:
            content = json.load(f)["data"][0]["x"]["content"]
        return np.asarray(content, dtype=np.float32).reshape(1, -1)
    return np.zeros((1, load.elements), dtype=np.float32)


def rest_body(load: Any) -> Tuple[bytes, Dict[str, str]]:
    """(body, headers) of a REST infer request for ``load``."""
    x = values(load)
    if load.rest_format == "binary":
        raw = x.tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        ).encode()
        return header + raw, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def grpc_body(load: Any) -> bytes:
    """A gRPC message frame holding a ModelInferRequest with raw_input_contents."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from v2d.grpc.generated.descriptors import FILE_DESCRIPTOR_SET

    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET).file:
        pool.Add(proto)
    request_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelInferRequest"))
    x = values(load)
    request = request_class(model_name=load.model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", "FP32"
    tensor.shape.extend(x.shape)
    request.raw_input_contents.append(x.tobytes())
    payload = request.SerializeToString()
    return struct.pack(">?I", False, len(payload)) + payload
