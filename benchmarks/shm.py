"""
64 MiB echo over gRPC on one host: Triton's system shared memory against plain gRPC
(raw contents), in-process and with ``--workers 1``. Prints each rate and the ratio.

Usage: ``python benchmarks/shm.py [--seconds 5] [--mib 64]`` (tritonclient installed;
starts its own ``twistd v2d`` on loopback ports, removes the regions it creates).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon  # noqa: E402
from tests.support.model_folder import ECHO, write_model  # noqa: E402
from tests.support.triton_shm import shared_memory  # noqa: E402


def _rate(call: Callable[[], Any], seconds: float) -> float:
    call()  # warm-up
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        count += 1
    return count / (time.perf_counter() - started)


def measure(models: str, workers: bool, mib: int, seconds: float) -> None:
    """Print the plain and shared-memory rates of one server configuration."""
    import tritonclient.grpc as grpcclient

    shm = shared_memory()
    data = np.random.default_rng(0).random(mib * 2**20 // 4, dtype=np.float32)
    args = ["--workers", "1"] if workers else []
    with Daemon(models, *args) as daemon:
        client = grpcclient.InferenceServerClient(daemon.grpc_address)

        def plain() -> None:
            tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            result = client.infer("echo", [tensor])
            assert result.as_numpy("y").shape == data.shape

        key_in, key_out = (f"/v2d-bench-{uuid.uuid4().hex[:8]}-{side}" for side in ("in", "out"))
        region_in = shm.create_shared_memory_region("bench-in", key_in, data.nbytes)
        region_out = shm.create_shared_memory_region("bench-out", key_out, data.nbytes)
        try:
            shm.set_shared_memory_region(region_in, [data])
            client.register_system_shared_memory("bench-in", key_in, data.nbytes)
            client.register_system_shared_memory("bench-out", key_out, data.nbytes)
            tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_shared_memory("bench-in", data.nbytes)
            output = grpcclient.InferRequestedOutput("y")
            output.set_shared_memory("bench-out", data.nbytes)

            def via_regions() -> None:
                client.infer("echo", [tensor], outputs=[output])

            via_regions()
            out = shm.get_contents_as_numpy(region_out, np.float32, list(data.shape))
            assert np.array_equal(out, data)
            plain_rate = _rate(plain, seconds)
            shm_rate = _rate(via_regions, seconds)
            client.unregister_system_shared_memory()
        finally:
            shm.destroy_shared_memory_region(region_in)
            shm.destroy_shared_memory_region(region_out)
        mode = "--workers 1" if workers else "in-process"
        print(
            f"{mib} MiB echo gRPC {mode:>11}: plain {plain_rate:7.1f}/s  "
            f"shared memory {shm_rate:7.1f}/s  ratio {shm_rate / plain_rate:5.1f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mib", type=int, default=64)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as models:
        write_model(models, "echo", "models.Echo", ECHO)
        for workers in (False, True):
            measure(models, workers, options.mib, options.seconds)


if __name__ == "__main__":
    main()
