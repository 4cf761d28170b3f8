"""
MLServer's own runtime packages (mlserver-sklearn, mlserver-xgboost, mlserver-lightgbm)
served by v2d.

Models are trained and saved by the test, in a venv that holds MLServer 1.7.1 and the
runtime packages (tests/support/mlserver_env.py, built once and cached), which also
records what the libraries themselves predict. Each is then served, unchanged, by:

- ``server``: ``twistd v2d`` running in that venv, in-process;
- ``server-w1``: the same with ``--workers 1``;
- ``tarball``: ``twistd v2d`` in the test venv (no MLServer), each model with an
  ``environment_tarball`` packed from that venv (so a worker runs it).

and asked over REST (JSON and the binary extension, with tritonclient) and gRPC
(tritonclient): the answers must equal the library's own ``predict``/``predict_proba``,
and an MLServer error must come back with MLServer's status.

Marked ``slow``: the first run builds the venv (about a minute from a warm pip cache,
a few more minutes from PyPI) and packs it (~180 MB); later runs reuse both.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import time
import urllib.request
from typing import Dict, Iterator, List

import numpy as np
import pytest

from tests.support.daemon import Daemon, package_root
from tests.support.mlserver_env import mlserver_env_tarball, mlserver_venv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

TRAIN = r"""
import json, os, sys
import joblib
import lightgbm as lgb
import numpy as np
import xgboost as xgb
from sklearn.linear_model import LogisticRegression

root = sys.argv[1]
rng = np.random.default_rng(7)
X = rng.random((120, 4))
labels = (X[:, 0] + X[:, 1] > 1).astype(int) + (X[:, 2] > 0.7).astype(int)
target = X @ np.array([1.5, -2.0, 0.5, 3.0]) + 0.1
queries = rng.random((5, 4))

def save(name, settings, predictions):
    folder = os.path.join(root, "models", name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump(settings, f)
    for key, values in predictions.items():
        np.save(os.path.join(root, f"{name}.{key}.npy"), values)
    return folder

sk = LogisticRegression(max_iter=500).fit(X, labels)
folder = save("sklearn", {"name": "sklearn", "implementation": "mlserver_sklearn.SKLearnModel",
                          "parameters": {"uri": "./model.joblib", "version": "v1"}},
              {"predict": sk.predict(queries), "predict_proba": sk.predict_proba(queries)})
joblib.dump(sk, os.path.join(folder, "model.joblib"))

clf = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(X, labels)
folder = save("xgboost-json", {"name": "xgboost-json", "implementation": "mlserver_xgboost.XGBoostModel",
                               "parameters": {"uri": "./model.json"}},
              {"predict": clf.predict(queries), "predict_proba": clf.predict_proba(queries)})
clf.save_model(os.path.join(folder, "model.json"))

reg = xgb.XGBRegressor(n_estimators=8, max_depth=3).fit(X, target)
# the uri is the folder: MLServer's well-known file names find model.ubj
folder = save("xgboost-ubj", {"name": "xgboost-ubj", "implementation": "mlserver_xgboost.XGBoostModel",
                              "parameters": {"uri": "."}},
              {"predict": reg.predict(queries)})
reg.save_model(os.path.join(folder, "model.ubj"))

booster = lgb.train({"objective": "multiclass", "num_class": 3, "num_leaves": 7, "verbose": -1},
                    lgb.Dataset(X, labels), num_boost_round=8)
# the uri is the folder: MLServer's well-known file name finds model.bst
folder = save("lightgbm", {"name": "lightgbm", "implementation": "mlserver_lightgbm.LightGBMModel",
                           "parameters": {"uri": "."}},
              {"predict": booster.predict(queries)})
booster.save_model(os.path.join(folder, "model.bst"))
np.save(os.path.join(root, "queries.npy"), queries)
"""

STREAMING = '''
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse, Parameters


class CountDown(MLModel):
    async def predict(self, payload):
        start = int(NumpyCodec.decode_input(payload.inputs[0]).reshape(-1)[0])
        return InferenceResponse(
            model_name=self.name,
            parameters=Parameters(headers={"x-echo": payload.parameters.headers.get("x-send", "")}),
            outputs=[NumpyCodec.encode_output("count", np.array([start], np.int32))],
        )

    async def predict_stream(self, payloads):
        async for payload in payloads:
            start = int(NumpyCodec.decode_input(payload.inputs[0]).reshape(-1)[0])
            for n in range(start, 0, -1):
                yield InferenceResponse(
                    model_name=self.name, outputs=[NumpyCodec.encode_output("count", np.array([n], np.int32))]
                )


import numpy as np  # noqa: E402
'''

MODELS = ["sklearn", "xgboost-json", "xgboost-ubj", "lightgbm"]
#: The models whose runtime also answers ``predict_proba``.
PROBA = {"sklearn", "xgboost-json"}


@pytest.fixture(scope="module")
def venv() -> str:
    return mlserver_venv()


def _python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


@pytest.fixture(scope="module")
def trained(venv, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("mlserver-models"))
    subprocess.run([_python(venv), "-c", TRAIN, root], check=True, timeout=300)
    return root


def _expected(root: str, name: str, key: str) -> np.ndarray:
    return np.load(os.path.join(root, f"{name}.{key}.npy"))


def _wait_ready(d: Daemon, names: List[str], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    states: Dict[str, dict] = {}
    while time.monotonic() < deadline:
        status, index, _ = d.post("/v2/repository/index", {})
        if status == 200:
            states = {e["name"]: e for e in index}
            if all(states.get(n, {}).get("state") == "READY" for n in names):
                return
            failed = [e for e in states.values() if e.get("state") == "UNAVAILABLE" and e.get("reason")]
            if failed and any(e.get("reason") != "not loaded" for e in failed):
                raise AssertionError(f"models failed to load: {failed}\n{d.log()}")
        time.sleep(0.25)
    raise AssertionError(f"models not ready: {states}\n{d.log()}")


def _with_tarball(trained: str, tarball: str) -> str:
    """A copy of the model folders whose settings name the environment tarball."""
    models = os.path.join(trained, "models-tarball")
    for name in MODELS:
        src = os.path.join(trained, "models", name)
        dst = os.path.join(models, name)
        os.makedirs(dst, exist_ok=True)
        for entry in os.listdir(src):
            if entry != "model-settings.json":
                os.symlink(os.path.join(src, entry), os.path.join(dst, entry))
        with open(os.path.join(src, "model-settings.json")) as f:
            settings = json.load(f)
        settings["parameters"]["environment_tarball"] = tarball
        with open(os.path.join(dst, "model-settings.json"), "w") as f:
            json.dump(settings, f)
    return models


@pytest.fixture(scope="module", params=["server", "server-w1", "tarball"])
def daemon(request, venv, trained, tmp_path_factory) -> Iterator[Daemon]:
    twistd = [_python(venv), "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
    names = list(MODELS)
    if request.param == "tarball":
        models = _with_tarball(trained, mlserver_env_tarball())
        envs = str(tmp_path_factory.mktemp("envs"))
        d = Daemon(models, "--envs-dir", envs)
    else:
        models = os.path.join(trained, "models")
        stream = os.path.join(models, "countdown")
        if not os.path.isdir(stream):
            os.makedirs(stream)
            with open(os.path.join(stream, "models.py"), "w") as f:
                f.write(STREAMING)
            with open(os.path.join(stream, "model-settings.json"), "w") as f:
                json.dump({"name": "countdown", "implementation": "models.CountDown"}, f)
        names.append("countdown")
        batched = os.path.join(models, "sklearn-batched")
        if not os.path.isdir(batched):
            os.makedirs(batched)
            os.symlink(os.path.join(models, "sklearn", "model.joblib"), os.path.join(batched, "model.joblib"))
            with open(os.path.join(batched, "model-settings.json"), "w") as f:
                settings = {"name": "sklearn-batched", "implementation": "mlserver_sklearn.SKLearnModel",
                            "max_batch_size": 5, "max_batch_time": 0.5,
                            "parameters": {"uri": "./model.joblib"}}
                json.dump(settings, f)
        names.append("sklearn-batched")
        args = ["--workers", "1"] if request.param == "server-w1" else []
        d = Daemon(models, *args, command=twistd)
    d.start(timeout=120)
    try:
        _wait_ready(d, names)
        d.names = names  # type: ignore[attr-defined]
        yield d
    finally:
        d.stop()


def test_the_test_venv_has_no_mlserver():
    import importlib.util

    assert importlib.util.find_spec("mlserver") is None, "the tarball case needs a server without MLServer"


def _json_infer(d: Daemon, name: str, queries: np.ndarray, outputs=None):
    body: dict = {"inputs": [{"name": "x", "shape": list(queries.shape), "datatype": "FP64",
                              "data": queries.reshape(-1).tolist()}]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return d.post(f"/v2/models/{name}/infer", body)


@pytest.mark.parametrize("name", MODELS)
def test_rest_json_predictions_equal_the_library(daemon, trained, name):
    queries = np.load(os.path.join(trained, "queries.npy"))
    status, answer, _ = _json_infer(daemon, name, queries)
    assert status == 200, answer
    [out] = answer["outputs"]
    assert out["name"] == "predict" and out["parameters"] == {"content_type": "np"}
    expected = _expected(trained, name, "predict")
    assert np.allclose(np.array(out["data"]).reshape(-1), expected.reshape(-1), rtol=1e-6)
    assert answer["model_name"] == name and answer["id"], "MLServer's dataplane gives every response an id"
    if name in PROBA:
        status, answer, _ = _json_infer(daemon, name, queries, outputs=["predict_proba"])
        assert status == 200, answer
        proba = np.array(answer["outputs"][0]["data"]).reshape(answer["outputs"][0]["shape"])
        assert np.allclose(proba, _expected(trained, name, "predict_proba"), rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_rest_binary_and_grpc_predictions_equal_the_library(daemon, trained, name):
    queries = np.load(os.path.join(trained, "queries.npy"))
    expected = _expected(trained, name, "predict").reshape(-1)
    wanted = ["predict", "predict_proba"] if name in PROBA else ["predict"]

    http = tritonclient_http.InferenceServerClient(daemon.url.replace("http://", ""))
    tensor = tritonclient_http.InferInput("x", list(queries.shape), "FP64")
    tensor.set_data_from_numpy(queries, binary_data=True)
    result = http.infer(
        name, [tensor], outputs=[tritonclient_http.InferRequestedOutput(o, binary_data=True) for o in wanted]
    )
    assert np.allclose(result.as_numpy("predict").reshape(-1), expected, rtol=1e-6)
    if "predict_proba" in wanted:
        proba = result.as_numpy("predict_proba")
        assert np.allclose(proba, _expected(trained, name, "predict_proba"), rtol=1e-6)

    with tritonclient_grpc.InferenceServerClient(daemon.grpc_address) as grpc_client:
        tensor = tritonclient_grpc.InferInput("x", list(queries.shape), "FP64")
        tensor.set_data_from_numpy(queries)
        result = grpc_client.infer(
            name, [tensor], outputs=[tritonclient_grpc.InferRequestedOutput(o) for o in wanted]
        )
        assert np.allclose(result.as_numpy("predict").reshape(-1), expected, rtol=1e-6)
        if "predict_proba" in wanted:
            proba = result.as_numpy("predict_proba")
            assert np.allclose(proba, _expected(trained, name, "predict_proba"), rtol=1e-6)


def test_mlserver_errors_keep_mlservers_status(daemon, trained):
    queries = np.load(os.path.join(trained, "queries.npy"))
    status, answer, _ = _json_infer(daemon, "sklearn", queries, outputs=["decision_path"])
    message = (
        "SKLearnModel only supports 'predict', 'predict_proba' and 'transform' as outputs "
        "(decision_path was received)"
    )
    assert (status, answer) == (400, {"error": message}), "MLServer's InferenceError is a 400"
    status, answer, _ = _json_infer(daemon, "xgboost-ubj", queries, outputs=["predict_proba"])
    assert (status, answer) == (400, {"error": "XGBRegressor models do not support 'predict_proba"})
    with tritonclient_grpc.InferenceServerClient(daemon.grpc_address) as grpc_client:
        tensor = tritonclient_grpc.InferInput("x", list(queries.shape), "FP64")
        tensor.set_data_from_numpy(queries)
        with pytest.raises(tritonclient_grpc.InferenceServerException) as info:
            wanted = [tritonclient_grpc.InferRequestedOutput("decision_path")]
            grpc_client.infer("sklearn", [tensor], outputs=wanted)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == message


def test_metadata_comes_from_the_mlserver_model(daemon):
    status, metadata, _ = daemon.get("/v2/models/sklearn")
    assert status == 200
    # MLServer's metadata(): versions are model-settings.json's "versions" (none here)
    assert metadata == {"name": "sklearn", "versions": [], "platform": "", "inputs": [], "outputs": []}


def test_a_folder_runtime_on_the_real_mlmodel_streams(daemon):
    if "countdown" not in daemon.names:  # type: ignore[attr-defined]
        pytest.skip("the streaming model is served from the server's venv only")
    client = tritonclient_grpc.InferenceServerClient(daemon.grpc_address)
    results: "queue.Queue" = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        tensor = tritonclient_grpc.InferInput("start", [1], "INT32")
        tensor.set_data_from_numpy(np.array([3], np.int32))
        client.async_stream_infer("countdown", [tensor])
        counts = []
        for _ in range(3):
            result, error = results.get(timeout=30)
            assert error is None, error
            counts.append(int(result.as_numpy("count").reshape(-1)[0]))
    finally:
        client.stop_stream()
    assert counts == [3, 2, 1]

    start = {"name": "start", "datatype": "INT32", "shape": [1], "data": [2]}
    body = json.dumps({"inputs": [start]}).encode()
    url = daemon.url + "/v2/models/countdown/infer_stream"
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [line for line in response.read().decode().split("\n") if line.startswith("data: ")]
    assert [json.loads(e[len("data: ") :])["outputs"][0]["data"] for e in events] == [[2], [1]]


def test_an_mlserver_runtimes_response_headers_become_http_headers(daemon):
    if "countdown" not in daemon.names:  # type: ignore[attr-defined]
        pytest.skip("the folder runtime is served from the server's venv only")
    body = {"inputs": [{"name": "start", "datatype": "INT32", "shape": [1], "data": [5]}]}
    status, answer, headers = daemon.post("/v2/models/countdown/infer", body, headers={"X-Send": "hello"})
    assert status == 200, answer
    assert answer["outputs"][0]["data"] == [5]
    assert headers.get("x-echo") == "hello" or headers.get("X-Echo") == "hello", headers
    assert "parameters" not in answer or "headers" not in answer["parameters"]


def test_adaptive_batching_of_an_mlserver_runtime(daemon, trained):
    if "sklearn-batched" not in daemon.names:  # type: ignore[attr-defined]
        pytest.skip("the batched model is served from the server's venv only")
    from concurrent.futures import ThreadPoolExecutor

    queries = np.load(os.path.join(trained, "queries.npy"))
    expected = _expected(trained, "sklearn", "predict").reshape(-1)

    def one(i):
        return _json_infer(daemon, "sklearn-batched", queries[i : i + 1])

    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(pool.map(one, range(len(queries))))
    for i, (status, answer, _) in enumerate(answers):
        assert status == 200, answer
        assert answer["outputs"][0]["shape"] == [1, 1]
        assert answer["outputs"][0]["data"] == [int(expected[i])]


def test_adapter_unit_tests_pass_where_mlserver_is_installed(venv):
    """tests/unit/test_mlserver_adapter.py, skipped in the test venv, run in the MLServer venv."""
    env = dict(os.environ, PYTHONPATH=package_root())
    result = subprocess.run(
        [_python(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         os.path.join(package_root(), "tests", "unit", "test_mlserver_adapter.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=package_root(),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]

