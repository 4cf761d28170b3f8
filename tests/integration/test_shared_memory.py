"""
Triton's system shared-memory extension against a real ``twistd v2d``, in-process and
with ``--workers 1``: regions made and filled by ``tritonclient.utils.shared_memory``,
registered through tritonclient's HTTP and gRPC clients, inputs read from them and
outputs written to them; the bad-region errors; perf_analyzer ``--shared-memory system``.
Every ``/dev/shm`` object a test creates is removed.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np
import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import write_model
from tests.support.perf_analyzer import find_perf_analyzer, parse_client_stats, run_perf_analyzer
from tests.support.triton_shm import shared_memory

pytestmark = [pytest.mark.integration]

RUNTIME = """
import asyncio
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput


class Echo(MLModel):
    async def predict(self, payload):
        x = payload.inputs[0].data
        delay = payload.parameters.get("delay") if payload.parameters else None
        if delay:
            await asyncio.sleep(delay)
        return InferenceResponse(model_name=self.name, outputs=[
            ResponseOutput(name="OUTPUT0", shape=list(x.shape), datatype=payload.inputs[0].datatype, data=x),
            ResponseOutput(name="KIND", shape=[1], datatype="BYTES", data=[type(x).__name__.encode()]),
        ])
"""

SETTINGS = {
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "KIND", "datatype": "BYTES", "shape": [1]},
    ],
}


@pytest.fixture(scope="module")
def shm():
    return shared_memory()


@pytest.fixture(scope="module", params=["in-process", "workers"])
def daemon(request, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    write_model(models, "echo", "models.Echo", RUNTIME, **SETTINGS)
    args = ["--workers", "1"] if request.param == "workers" else []
    with Daemon(str(models), *args) as d:
        yield d


@pytest.fixture
def regions(shm):
    """Make regions (name, size) -> handle; each test's objects are destroyed after it."""
    made = []

    def make(name: str, size: int):
        key = f"/v2d-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, size)
        made.append(handle)
        return handle, key

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _client(daemon, protocol):
    if protocol == "http":
        import tritonclient.http as module

        return module, module.InferenceServerClient(f"127.0.0.1:{daemon.http_port}")
    import tritonclient.grpc as module

    return module, module.InferenceServerClient(daemon.grpc_address)


DATA = np.arange(32, dtype=np.float32).reshape(2, 16)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_round_trip_through_regions(daemon, shm, regions, protocol):
    module, client = _client(daemon, protocol)
    in_handle, in_key = regions("in", DATA.nbytes)
    out_handle, out_key = regions("out", 4096)
    shm.set_shared_memory_region(in_handle, [DATA])
    client.unregister_system_shared_memory()
    client.register_system_shared_memory("in", in_key, DATA.nbytes)
    client.register_system_shared_memory("out", out_key, 2048, offset=1024)
    try:
        status = client.get_system_shared_memory_status()
        if protocol == "http":
            assert sorted(status, key=lambda r: r["name"]) == [
                {"name": "in", "key": in_key, "offset": 0, "byte_size": DATA.nbytes},
                {"name": "out", "key": out_key, "offset": 1024, "byte_size": 2048},
            ]
        else:
            assert status.regions["out"].key == out_key and status.regions["out"].offset == 1024
        tensor = module.InferInput("INPUT0", [2, 16], "FP32")
        tensor.set_shared_memory("in", DATA.nbytes)
        output = module.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("out", DATA.nbytes, offset=256)
        result = client.infer("echo", [tensor], outputs=[output, module.InferRequestedOutput("KIND")])
        # the model got a view of the region (in a worker: mapped there, from a reference)
        assert result.as_numpy("KIND").tolist() == [b"RegionArray"]
        written = shm.get_contents_as_numpy(out_handle, np.float32, [2, 16], offset=1024 + 256)
        np.testing.assert_array_equal(written, DATA)
        described = result.get_output("OUTPUT0")
        if protocol == "http":
            # as Triton: no data, no parameters (perf_analyzer's client requires that)
            assert described == {"name": "OUTPUT0", "shape": [2, 16], "datatype": "FP32"}
        else:
            assert list(described.shape) == [2, 16]
            assert described.parameters["shared_memory_region"].string_param == "out"
            assert not result.get_response().raw_output_contents or not any(
                result.get_response().raw_output_contents[:1]
            )
    finally:
        client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() in ([], {}) or not len(
        client.get_system_shared_memory_status().regions
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_input_from_a_region_output_as_data(daemon, shm, regions, protocol):
    module, client = _client(daemon, protocol)
    in_handle, in_key = regions("in2", 8 + DATA.nbytes)
    shm.set_shared_memory_region(in_handle, [DATA], offset=8)
    client.register_system_shared_memory("in2", in_key, 8 + DATA.nbytes)
    try:
        tensor = module.InferInput("INPUT0", [2, 16], "FP32")
        tensor.set_shared_memory("in2", DATA.nbytes, offset=8)
        result = client.infer("echo", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), DATA)
    finally:
        client.unregister_system_shared_memory("in2")


def test_rest_json_body_with_a_region(daemon, shm, regions):
    in_handle, in_key = regions("in3", DATA.nbytes)
    shm.set_shared_memory_region(in_handle, [DATA])
    status, body, _ = daemon.post(
        "/v2/systemsharedmemory/region/in3/register", {"key": in_key, "offset": 0, "byte_size": DATA.nbytes}
    )
    assert status == 200, body
    try:
        request = {
            "inputs": [
                {
                    "name": "INPUT0",
                    "shape": [2, 16],
                    "datatype": "FP32",
                    "parameters": {"shared_memory_region": "in3", "shared_memory_byte_size": DATA.nbytes},
                }
            ]
        }
        status, body, _ = daemon.post("/v2/models/echo/infer", request)
        assert status == 200, body
        assert body["outputs"][0]["data"] == DATA.ravel().tolist()
    finally:
        daemon.post("/v2/systemsharedmemory/region/in3/unregister")


def test_metadata_lists_the_extension(daemon):
    status, body, _ = daemon.get("/v2")
    assert "system_shared_memory" in body["extensions"]


def _infer_region(daemon, region, byte_size, offset=0, output=None):
    params = {"shared_memory_region": region, "shared_memory_byte_size": byte_size}
    if offset:
        params["shared_memory_offset"] = offset
    request = {"inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "FP32", "parameters": params}]}
    if output is not None:
        request["outputs"] = [{"name": "OUTPUT0", "parameters": output}]
    return daemon.post("/v2/models/echo/infer", request)


def test_bad_regions_over_rest(daemon, shm, regions):
    handle, key = regions("bad", DATA.nbytes)
    shm.set_shared_memory_region(handle, [DATA])
    assert (
        daemon.post("/v2/systemsharedmemory/region/bad/register", {"key": key, "byte_size": DATA.nbytes})[0]
        == 200
    )
    try:
        cases = [
            (_infer_region(daemon, "nope", DATA.nbytes), "no shared-memory region named 'nope'"),
            (_infer_region(daemon, "bad", DATA.nbytes, offset=64), "out of the bounds of region 'bad'"),
            (_infer_region(daemon, "bad", 64), "shared_memory_byte_size is 64, too small"),
            (
                _infer_region(daemon, "bad", DATA.nbytes, output={"shared_memory_region": "bad"}),
                "shared_memory_byte_size is required",
            ),
            (
                _infer_region(
                    daemon,
                    "bad",
                    DATA.nbytes,
                    output={"shared_memory_region": "bad", "shared_memory_byte_size": 8},
                ),
                "too small for the output's 128 bytes",
            ),
            (
                daemon.post("/v2/systemsharedmemory/region/bad/register", {"key": key, "byte_size": 8}),
                "already registered",
            ),
            (
                daemon.post(
                    "/v2/systemsharedmemory/region/x/register", {"key": "/v2d-no-such-key", "byte_size": 8}
                ),
                "does not exist",
            ),
            (
                daemon.post(
                    "/v2/systemsharedmemory/region/x/register", {"key": key, "byte_size": DATA.nbytes + 1}
                ),
                "out of the bounds",
            ),
            (
                daemon.post(
                    "/v2/systemsharedmemory/region/x/register", {"key": "../etc/passwd", "byte_size": 8}
                ),
                "is not a shared-memory key",
            ),
            (daemon.get("/v2/systemsharedmemory/region/nope/status"), "no system shared-memory region"),
            (
                daemon.post(
                    "/v2/cudasharedmemory/region/c/register", {"raw_handle": {"b64": ""}, "byte_size": 8}
                ),
                "CUDA shared memory is not supported",
            ),
        ]
        for (status, body, _), message in cases:
            assert 400 <= status < 500 and message in body["error"], (status, body, message)
    finally:
        daemon.post("/v2/systemsharedmemory/unregister")


def test_bad_regions_over_grpc(daemon):
    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(daemon.grpc_address)
    tensor = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    tensor.set_shared_memory("nope", DATA.nbytes)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("echo", [tensor])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0] ('INPUT0').parameters.shared_memory_region" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.register_system_shared_memory("x", "/v2d-no-such-key", 8)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and "key" in raised.value.message()
    assert not client.get_cuda_shared_memory_status().regions
    with pytest.raises(InferenceServerException) as raised:
        client.register_cuda_shared_memory("c", b"aGFuZGxl", 0, 8)
    assert raised.value.status() == str(grpc.StatusCode.NOT_FOUND)
    assert "not supported" in raised.value.message()


def test_unregister_while_in_use_waits_for_the_request(daemon, shm, regions):
    in_handle, in_key = regions("busy-in", DATA.nbytes)
    out_handle, out_key = regions("busy-out", DATA.nbytes)
    shm.set_shared_memory_region(in_handle, [DATA])
    daemon.post("/v2/systemsharedmemory/region/busy-in/register", {"key": in_key, "byte_size": DATA.nbytes})
    daemon.post("/v2/systemsharedmemory/region/busy-out/register", {"key": out_key, "byte_size": DATA.nbytes})
    request = {
        "parameters": {"delay": 1.0},
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [2, 16],
                "datatype": "FP32",
                "parameters": {"shared_memory_region": "busy-in", "shared_memory_byte_size": DATA.nbytes},
            }
        ],
        "outputs": [
            {
                "name": "OUTPUT0",
                "parameters": {"shared_memory_region": "busy-out", "shared_memory_byte_size": DATA.nbytes},
            }
        ],
    }
    answers = []
    slow = threading.Thread(target=lambda: answers.append(daemon.post("/v2/models/echo/infer", request)))
    slow.start()
    time.sleep(0.4)
    # Triton's rule: the names go at once; the mappings stay until the request ends
    assert daemon.post("/v2/systemsharedmemory/unregister")[0] == 200
    assert daemon.get("/v2/systemsharedmemory/status")[1] == []
    slow.join(30)
    status, body, _ = answers[0]
    assert status == 200, body
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [2, 16]), DATA)
    assert "Traceback" not in daemon.log()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_with_system_shared_memory(daemon, protocol):
    command = find_perf_analyzer()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("perf_analyzer is not set up (run .ci/setup-perf-analyzer.sh)")
        pytest.skip("perf_analyzer is not set up (run .ci/setup-perf-analyzer.sh)")
    url = daemon.grpc_address if protocol == "grpc" else f"127.0.0.1:{daemon.http_port}"
    before = set(os.listdir("/dev/shm"))
    result = run_perf_analyzer(
        command,
        "echo",
        protocol,
        url,
        "--shared-memory",
        "system",
        "--output-shared-memory-size",
        "4096",
        "--shape",
        "INPUT0:2,16",
        "--measurement-interval",
        "1000",
        "--stability-percentage",
        "100",
        "--max-trials",
        "20",
    )
    report = f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, report
    stats = parse_client_stats(result.stdout)
    assert stats.get("request_count", 0) > 0, report
    assert "error" not in result.stderr.lower(), report
    assert "Traceback" not in daemon.log()
    # perf_analyzer unregisters and removes its own regions
    assert daemon.get("/v2/systemsharedmemory/status")[1] == []
    for name in set(os.listdir("/dev/shm")) - before:
        if name.startswith("shm_") or "INPUT0" in name or "OUTPUT0" in name:
            os.unlink(os.path.join("/dev/shm", name))
