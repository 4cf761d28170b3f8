"""
Worker processes end to end: a real ``twistd v2d`` whose models run in child
processes, called over real HTTP and gRPC on loopback.

Checked here: requests spread over the workers; errors, headers, ``decode_args`` and
streaming behave as in-process; SIGKILL of a worker mid-request fails that request at
once with a clear 503 and the worker comes back; SIGTERM to the daemon leaves no
child; SIGKILL of the daemon leaves no child either (children see their input close).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration

ECHO = """
import asyncio
import os
import numpy as np
from v2d import MLModel
from v2d.errors import InferenceError
from v2d.types import InferenceResponse, Parameters, ResponseOutput

class Echo(MLModel):
    async def predict(self, payload):
        params = payload.parameters
        if params is not None and params.get("sleep"):
            await asyncio.sleep(float(params.get("sleep")))
        if params is not None and params.get("fail") == "runtime":
            raise ValueError("asked to fail")
        if params is not None and params.get("fail") == "inference":
            raise InferenceError("bad input, as asked")
        x = payload.inputs[0].data
        headers = (params.headers if params is not None else None) or {}
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="y", shape=list(x.shape), datatype="FP32", data=np.asarray(x, "f4") * 2),
                ResponseOutput(name="pid", shape=[1], datatype="INT64", data=np.array([os.getpid()])),
            ],
            parameters=Parameters(headers={"X-Echo-Tenant": headers.get("X-Tenant", "-")}),
        )
"""

DECODE_ARGS = """
from typing import List
import numpy as np
from v2d import MLModel
from v2d.codecs import decode_args

class Joiner(MLModel):
    @decode_args
    async def predict(self, words: List[str], counts: np.ndarray) -> List[str]:
        return [w * int(c) for w, c in zip(words, counts.ravel())]
"""

COUNTER = """
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Counter(MLModel):
    def predict(self, payload):
        raise NotImplementedError("stream only")

    async def predict_stream(self, payloads):
        total = 0
        async for payload in payloads:
            total += int(np.asarray(payload.inputs[0].data).sum())
            yield InferenceResponse(
                model_name=self.name,
                outputs=[ResponseOutput(name="total", shape=[1], datatype="INT64", data=np.array([total]))],
            )
"""


def write_model(root: str, name: str, implementation: str, source: str, **settings) -> None:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model-settings.json"), "w") as f:
        json.dump({"name": name, "implementation": implementation, **settings}, f)
    with open(os.path.join(path, "models.py"), "w") as f:
        f.write(textwrap.dedent(source))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("worker-models"))
    write_model(root, "echo", "models.Echo", ECHO, parallel_workers=2)
    write_model(root, "slow", "models.Echo", ECHO, parallel_workers=1)
    write_model(root, "joiner", "models.Joiner", DECODE_ARGS)
    write_model(root, "counter", "models.Counter", COUNTER)
    return root


@pytest.fixture(scope="module")
def daemon(models, tmp_path_factory):
    envs = str(tmp_path_factory.mktemp("envs"))
    with Daemon(models, "--workers", "1", "--envs-dir", envs) as d:
        yield wait_ready(d)


def one_worker_daemon(models: str, tmp_path, grpc: bool = True) -> Daemon:
    """A daemon (not started) serving ``models`` with one worker process each."""
    return Daemon(models, "--workers", "1", "--envs-dir", str(tmp_path / "envs"), grpc=grpc)


def wait_ready(d: Daemon, timeout: float = 60.0) -> Daemon:
    """Wait until every model is READY (the harness may return before loading began)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, index, _ = d.post("/v2/repository/index", {})
        if status == 200 and index and all(e.get("state") == "READY" for e in index):
            return d
        time.sleep(0.1)
    raise AssertionError(f"models not ready: {index}\n{d.log()}")


def infer(d: Daemon, model: str, data: List[float], parameters=None, headers=None, timeout=30.0):
    body = {"inputs": [{"name": "x", "shape": [len(data)], "datatype": "FP32", "data": data}]}
    if parameters:
        body["parameters"] = parameters
    return d.post(f"/v2/models/{model}/infer", body, headers=headers, timeout=timeout)


def worker_pids(d: Daemon) -> List[int]:
    """The daemon's child processes (its workers)."""
    assert d.process is not None
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == d.process.pid:
            out.append(int(name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: List[int], timeout: float = 15.0) -> List[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_requests_are_served_by_worker_processes(daemon):
    pids = set()
    for _ in range(6):
        status, body, _ = infer(daemon, "echo", [1, 2, 3])
        assert status == 200, body
        assert body["outputs"][0]["data"] == [2.0, 4.0, 6.0]
        pids.add(body["outputs"][1]["data"][0])
    assert daemon.process is not None
    assert daemon.process.pid not in pids
    assert len(pids) == 2, "parallel_workers=2 and idle workers: requests alternate between both"
    assert pids <= set(worker_pids(daemon))


def test_least_busy_worker_gets_the_next_request(daemon):
    results: "queue.Queue" = queue.Queue()
    slow = threading.Thread(target=lambda: results.put(infer(daemon, "echo", [1], {"sleep": 1.5})))
    slow.start()
    time.sleep(0.5)
    status, quick, _ = infer(daemon, "echo", [1])
    assert status == 200
    slow.join()
    status, slow_body, _ = results.get()
    assert status == 200
    assert quick["outputs"][1]["data"] != slow_body["outputs"][1]["data"]


def test_errors_keep_their_kind_and_message(daemon):
    status, body, _ = infer(daemon, "echo", [1], {"fail": "inference"})
    assert (status, body["error"]) == (400, "bad input, as asked")
    status, body, _ = infer(daemon, "echo", [1], {"fail": "runtime"})
    assert status == 500
    assert body["error"] == "ValueError: asked to fail"


def test_headers_flow_both_ways(daemon):
    status, body, headers = infer(daemon, "echo", [1], headers={"X-Tenant": "acme"})
    assert status == 200, body
    assert headers.get("X-Echo-Tenant") == "acme"


def test_decode_args_runtime_in_a_worker(daemon):
    body = {
        "inputs": [
            {"name": "words", "shape": [2], "datatype": "BYTES", "data": ["ab", "c"]},
            {"name": "counts", "shape": [2], "datatype": "INT64", "data": [2, 3]},
        ]
    }
    status, out, _ = daemon.post("/v2/models/joiner/infer", body)
    assert status == 200, out
    assert out["outputs"][0]["data"] == ["abab", "ccc"]


def test_metadata_comes_from_the_worker(daemon):
    status, body, _ = daemon.get("/v2/models/echo")
    assert status == 200
    assert body["name"] == "echo"


def test_streaming_through_a_worker(daemon):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    client = grpcclient.InferenceServerClient(daemon.grpc_address)
    got: "queue.Queue" = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        for value in (1, 2, 3):
            x = grpcclient.InferInput("x", [1], "INT64")
            x.set_data_from_numpy(np.array([value], dtype=np.int64))
            client.async_stream_infer(model_name="counter", inputs=[x])
        totals = []
        for _ in range(3):
            result, error = got.get(timeout=30)
            assert error is None, error
            totals.append(int(result.as_numpy("total")[0]))
    finally:
        client.stop_stream()
        client.close()
    assert totals == [1, 3, 6]


def test_sigkill_of_a_worker_mid_request(daemon):
    status, body, _ = infer(daemon, "slow", [1])
    assert status == 200
    victim = body["outputs"][1]["data"][0]
    results: "queue.Queue" = queue.Queue()
    pending = threading.Thread(target=lambda: results.put(infer(daemon, "slow", [1], {"sleep": 30})))
    started = time.monotonic()
    pending.start()
    time.sleep(1.0)
    os.kill(victim, signal.SIGKILL)
    pending.join(20)
    status, body, _ = results.get(timeout=1)
    assert time.monotonic() - started < 10, "the request failed at once, not after its sleep"
    assert status == 503
    assert "killed by signal 9 (SIGKILL)" in body["error"]
    assert "worker 0 of model 'slow'" in body["error"]
    deadline = time.monotonic() + 20
    while True:
        status, body, _ = infer(daemon, "slow", [2])
        if status == 200 or time.monotonic() > deadline:
            break
        assert status == 503
        time.sleep(0.2)
    assert status == 200, body
    assert body["outputs"][1]["data"][0] != victim
    for _ in range(3):
        assert infer(daemon, "slow", [3])[0] == 200


def test_sigterm_leaves_no_child(models, tmp_path):
    d = one_worker_daemon(models, tmp_path, grpc=False)
    with d:
        wait_ready(d)
        assert infer(d, "echo", [1])[0] == 200
        children = worker_pids(d)
        assert len(children) == 5  # echo x2, slow, joiner, counter
        # twistd ends by re-raising the signal it stopped on, after a clean shutdown
        assert d.stop() in (0, -signal.SIGTERM)
        assert wait_gone(children, timeout=1) == []
        log = d.log()
    assert "stopping worker processes" in log
    assert "exited with code 0" in log, "children ended on their own once their model was unloaded"
    assert "sending KILL" not in log


def test_sigkill_of_the_daemon_leaves_no_child(models, tmp_path):
    d = one_worker_daemon(models, tmp_path, grpc=False)
    with d:
        wait_ready(d)
        children = worker_pids(d)
        assert len(children) == 5
        assert d.process is not None
        d.process.send_signal(signal.SIGKILL)
        d.process.wait(10)
        assert wait_gone(children, timeout=15) == [], "children exit when the server's end of the wire closes"


def shm_files(pid: int) -> List[str]:
    """The shared-memory segments of a server process and its workers."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"v2d-{pid}-"))


def infer_big(d: Daemon, model: str, x):
    """One gRPC request with ``x`` as raw contents (tritonclient), the output ``y`` back."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(d.grpc_address) as client:
        inp = grpcclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("y")])
        return result.as_numpy("y")


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm on this machine")
def test_big_tensors_cross_through_reused_shared_memory_and_leave_nothing(models, tmp_path):
    import numpy as np

    x = np.random.default_rng(1).random(3 << 18, dtype=np.float32)  # 3 MiB: through /dev/shm
    d = one_worker_daemon(models, tmp_path)
    with d:
        wait_ready(d)
        assert d.process is not None
        pid = d.process.pid
        np.testing.assert_array_equal(infer_big(d, "slow", x), x * 2)
        np.testing.assert_array_equal(infer_big(d, "slow", x + 1), (x + 1) * 2)
        segments = shm_files(pid)
        assert segments, "3 MiB tensors go through shared memory"
        for i in range(8):
            np.testing.assert_array_equal(infer_big(d, "slow", x + i), (x + i) * 2)
        assert shm_files(pid) == segments, "the same segments serve every request"

        # concurrent requests each get a segment of their own, and correct answers
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: (i, infer_big(d, "echo", x + i)), range(16)))
        for i, y in outs:
            np.testing.assert_array_equal(y, (x + i) * 2)
        assert d.stop() in (0, -signal.SIGTERM)
    assert shm_files(pid) == [], "a clean stop leaves no shared memory behind"


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no writable /dev/shm on this machine")
def test_shared_memory_of_a_killed_server_is_swept_by_the_next(models, tmp_path):
    import numpy as np

    x = np.ones(3 << 18, dtype=np.float32)
    first = one_worker_daemon(models, tmp_path)
    with first:
        wait_ready(first)
        assert first.process is not None
        pid = first.process.pid
        np.testing.assert_array_equal(infer_big(first, "slow", x), x * 2)
        assert shm_files(pid)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    assert shm_files(pid), "nothing could clean up after SIGKILL"
    with one_worker_daemon(models, tmp_path, grpc=False) as second:
        wait_ready(second)
        assert shm_files(pid) == [], "the next server removed them"


MIRROR = """
import numpy as np
from v2d import MLModel
from v2d.errors import InferenceError
from v2d.types import InferenceResponse, Parameters, ResponseOutput

class Mirror(MLModel):
    def predict(self, payload):
        params = payload.parameters
        if params is not None and params.get("fail") == "inference":
            raise InferenceError("bad input, as asked")
        if params is not None and params.get("fail") == "runtime":
            raise ValueError("asked to fail")
        if params is not None and params.get("fail") == "type":
            return {"not": "a response"}
        headers = (params.headers if params is not None else None) or {}
        x = np.asarray(payload.inputs[0].data, "f4")
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="y", shape=list(x.shape), datatype="FP32", data=x * 2)],
            parameters=Parameters(headers={"X-Mirror-Tenant": headers.get("x-tenant", "-")}, note="kept"),
        )

class AsyncMirror(Mirror):
    async def predict(self, payload):
        return Mirror.predict(self, payload)
"""


def _grpc_infer(address: str, message, metadata=()):
    """One ModelInfer over a plain grpc channel: (status, response or details, initial metadata)."""
    import grpc

    from v2d.grpc._messages import pb

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        try:
            response, info = call.with_call(message, metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            return e.code(), e.details(), {}
        return grpc.StatusCode.OK, response, dict(info.initial_metadata())


def test_worker_answers_small_grpc_requests_exactly_as_the_server_does(tmp_path):
    """
    Small gRPC requests to a worker model are decoded and encoded in the worker; the
    answers (responses, metadata, errors) must be those of the in-process server.
    """
    import numpy as np

    from v2d.grpc._messages import pb

    root = str(tmp_path / "models")
    write_model(root, "mirror", "models.Mirror", MIRROR)
    write_model(root, "amirror", "models.AsyncMirror", MIRROR)

    def requests():
        typed = pb.ModelInferRequest(model_name="mirror", id="req-1")
        t = typed.inputs.add(name="x", datatype="FP32", shape=[2, 2])
        t.contents.fp32_contents.extend([1, 2, 3, 4])
        raw = pb.ModelInferRequest(model_name="amirror", id="req-2")
        raw.inputs.add(name="x", datatype="FP32", shape=[3])
        raw.raw_input_contents.append(np.array([1.5, 2.5, 3.5], "f4").tobytes())
        yield "typed", typed, (("x-tenant", "acme"),)
        yield "raw, async", raw, ()
        for fail in ("inference", "runtime", "type"):
            m = pb.ModelInferRequest()
            m.CopyFrom(typed)
            m.parameters["fail"].string_param = fail
            yield f"fail {fail}", m, ()
        bad = pb.ModelInferRequest(model_name="mirror")
        bad.inputs.add(name="x", datatype="FP99", shape=[1])
        yield "unknown datatype", bad, ()
        short = pb.ModelInferRequest(model_name="mirror")
        short.inputs.add(name="x", datatype="FP32", shape=[4])
        short.raw_input_contents.append(b"\0" * 8)
        yield "raw contents too short", short, ()
        yield "unknown model", pb.ModelInferRequest(model_name="nobody"), ()

    answers = {}
    for workers in ("0", "1"):
        with Daemon(root, "--workers", workers, "--envs-dir", str(tmp_path / "envs")) as d:
            wait_ready(d)
            for label, message, metadata in requests():
                answers.setdefault(label, []).append(_grpc_infer(d.grpc_address, message, metadata))
            if workers == "1":
                assert len(worker_pids(d)) == 2
                log = d.log()
                assert log.count("it decodes and encodes small grpc requests itself") == 2, log

    for label, (in_process, in_worker) in answers.items():
        assert in_worker == in_process, label
    status, response, metadata = answers["typed"][1]
    assert status.name == "OK"
    assert list(response.outputs[0].contents.fp32_contents) == [2, 4, 6, 8]
    assert response.id == "req-1" and response.model_name == "mirror"
    assert metadata.get("x-mirror-tenant") == "acme"
    assert response.parameters["note"].string_param == "kept"
    status, response, _ = answers["raw, async"][1]
    assert np.frombuffer(response.raw_output_contents[0], "f4").tolist() == [3, 5, 7]
    assert answers["fail inference"][1][:2] == (status.INVALID_ARGUMENT, "bad input, as asked")
    assert answers["fail runtime"][1][:2] == (status.INTERNAL, "ValueError: asked to fail")
    assert "predict() returned dict" in answers["fail type"][1][1]
    assert answers["unknown datatype"][1][0] == status.INVALID_ARGUMENT
    assert "inputs[0]" in answers["unknown datatype"][1][1]
    assert answers["unknown model"][1][0] == status.NOT_FOUND
