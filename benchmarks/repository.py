"""
The model repositories and input data the benchmark serves and sends.

Both servers get the same model folders (same names, same declared tensors, same
batching settings); only the runtime file differs (``models/v2d_runtimes.py`` or
``models/mlserver_runtimes.py``, copied in as ``models.py``):

- ``add-one``: x FP32 [1, 16] -> y = x + 1.
- ``echo``: x FP32 [1, -1] -> y = x (sent at 1 MiB and 64 MiB).
- ``slow-add-one``: add-one with a fixed cost per predict call, no batching.
- ``slow-add-one-batched``: the same with adaptive batching (``max_batch_size`` 16,
  ``max_batch_time`` 2 ms).

The scikit-learn case has a folder of its own, ``sklearn`` (``write_sklearn_model``):
MLServer's ``mlserver_sklearn.SKLearnModel`` (``models/mlserver_sklearn_runtime.py``,
the same file for both servers) on a logistic regression of x FP32 [1, 16] into three
classes, trained and saved with joblib by an interpreter that has scikit-learn.

Input data is finite (MLServer fails on NaN, which perf_analyzer's random bytes can
hold): a JSON file of seeded random values in [0, 1) for the small and 1 MiB tensors,
zeros for 64 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

__all__ = [
    "BATCH_SIZE",
    "BATCH_TIME",
    "MIB_1",
    "MIB_64",
    "SMALL",
    "write_input_data",
    "write_repository",
    "write_sklearn_model",
]

#: Element counts of the FP32 tensors sent.
SMALL = 16
MIB_1 = (1 << 20) // 4
MIB_64 = (64 << 20) // 4

#: Adaptive batching settings of slow-add-one-batched.
BATCH_SIZE = 16
BATCH_TIME = 0.002


def _tensor(name: str, shape: List[int]) -> Dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": shape}


def _models(server: str) -> List[Dict[str, Any]]:
    mlserver = server == "mlserver"
    # v2d reports a batching model's first dimension as the batch dimension (Triton's
    # rule), so its declared shape starts with -1; the peer's configuration endpoint
    # reports max_batch_size 0 and the full shape, so it declares what is sent.
    batched_shape = [1, SMALL] if mlserver else [-1, SMALL]
    return [
        {
            "name": "add-one",
            "implementation": "models.AddOne",
            "inputs": [_tensor("x", [1, SMALL])],
            "outputs": [_tensor("y", [1, SMALL])],
        },
        {
            "name": "echo",
            "implementation": "models.Echo",
            "inputs": [_tensor("x", [1, -1])],
            "outputs": [_tensor("y", [1, -1])],
        },
        {
            "name": "slow-add-one",
            "implementation": "models.SlowAddOne",
            "inputs": [_tensor("x", [1, SMALL])],
            "outputs": [_tensor("y", [1, SMALL])],
        },
        {
            "name": "slow-add-one-batched",
            "implementation": "models.SlowAddOneBatched" if mlserver else "models.SlowAddOne",
            "inputs": [_tensor("x", batched_shape)],
            "outputs": [_tensor("y", batched_shape)],
            "max_batch_size": BATCH_SIZE,
            "max_batch_time": BATCH_TIME,
        },
    ]


def write_repository(root: str, server: str) -> str:
    """Write the model folders for ``server`` ("v2d" or "mlserver") under ``root``."""
    runtime = os.path.join(HERE, "models", f"{server}_runtimes.py")
    os.makedirs(root, exist_ok=True)
    for settings in _models(server):
        folder = os.path.join(root, settings["name"])
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(runtime, os.path.join(folder, "models.py"))
        with open(os.path.join(folder, "model-settings.json"), "w") as f:
            json.dump(settings, f, indent=2)
    return root


_TRAIN = (
    """
import sys
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(16)
X = rng.random((600, %d), dtype=np.float32)
y = (X[:, :4].sum(axis=1) > 2).astype(int) + (X[:, 4] > 0.6).astype(int)
joblib.dump(LogisticRegression(max_iter=1000).fit(X, y), sys.argv[1])
"""
    % SMALL
)


def write_sklearn_model(
    root: str, python: str, environment_path: Optional[str] = None, model_file: Optional[str] = None
) -> str:
    """
    Write the ``sklearn`` folder under ``root``: the model is trained with ``python``
    (which has scikit-learn), or copied from ``model_file``; ``environment_path`` goes
    into its parameters. Returns the saved model's path.
    """
    folder = os.path.join(root, "sklearn")
    os.makedirs(folder, exist_ok=True)
    runtime = os.path.join(HERE, "models", "mlserver_sklearn_runtime.py")
    shutil.copyfile(runtime, os.path.join(folder, "models.py"))
    model = os.path.join(folder, "model.joblib")
    if model_file:
        shutil.copyfile(model_file, model)
    else:
        subprocess.run([python, "-c", _TRAIN, model], check=True, stdin=subprocess.DEVNULL)
    parameters: Dict[str, Any] = {"uri": "./model.joblib"}
    if environment_path:
        parameters["environment_path"] = environment_path
    settings = {
        "name": "sklearn",
        "implementation": "models.BenchSKLearnModel",
        "inputs": [_tensor("x", [1, SMALL])],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1, 1]}],
        "parameters": parameters,
    }
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump(settings, f, indent=2)
    return model


def write_input_data(root: str) -> Dict[str, str]:
    """perf_analyzer ``--input-data`` files: {"small": path, "1mib": path}."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(6)
    paths = {}
    for key, count, shape in (("small", SMALL, None), ("1mib", MIB_1, [1, MIB_1])):
        values = rng.random(count, dtype=np.float32)
        entry: Dict[str, Any] = {"content": [float(v) for v in values]}
        if shape is not None:
            entry["shape"] = shape
        path = os.path.join(root, f"input-{key}.json")
        with open(path, "w") as f:
            json.dump({"data": [{"x": entry}]}, f)
        paths[key] = path
    return paths
