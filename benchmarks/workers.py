"""
What a worker process costs: round trip of a tiny request, throughput of big tensors.

Two measurements:

``wire`` (always): in this process, on Twisted's asyncio reactor, one model served
in-process (``LocalModel``) and the same model in one worker process (``WorkerModel``),
called back to back through the ``IModel`` interface, no HTTP in the way. The model
echoes its input, so a tensor crosses the wire twice per call. Big buffers go through
shared memory (``/dev/shm``, 1 MiB and up) or, with it turned off, through the pipe.

``servers`` (with ``--mlserver-python``, the interpreter of a venv holding MLServer
1.7.1, see ``benchmarks/mlserver/requirements.txt``): v2d and MLServer each started
twice, with 0 and 1 worker processes, called over gRPC (raw tensor contents) one
request at a time; the difference between the two runs of a server is its worker
path's cost.

Run::

    python benchmarks/workers.py [--repeat 200] [--mlserver-python PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from tests.support.model_folder import ECHO  # noqa: E402

MIB = 1 << 20
SIZES = {"tiny (16 x FP32)": 16 * 4, "1 MiB": MIB, "64 MiB": 64 * MIB}


def _repeats(size: int, repeat: int) -> int:
    return max(5, repeat // 10) if size >= 64 * MIB else (max(20, repeat // 2) if size >= MIB else repeat)


def _report(label: str, size: int, times: List[float]) -> Dict[str, Any]:
    median = statistics.median(times)
    p90 = sorted(times)[int(len(times) * 0.9)]
    row = {"path": label, "size": size, "median_ms": median * 1000, "p90_ms": p90 * 1000}
    row["mib_per_s"] = (2 * size / MIB) / median if size >= MIB and label != "in-process" else None
    return row


def wire_benchmark(repeat: int) -> List[Dict[str, Any]]:
    """In-process vs worker (shared memory on, off), through IModel.predict."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred

    from v2d.settings import ModelSettings, Settings
    from v2d.types import InferenceRequest, RequestInput
    from v2d.workers import WorkerPool
    from v2d.wrappers import LocalModelFactory

    tmp = tempfile.mkdtemp(prefix="v2d-bench-workers-")
    folder = os.path.join(tmp, "echo")
    os.makedirs(folder)
    with open(os.path.join(folder, "models.py"), "w") as f:
        f.write(ECHO)
    settings = ModelSettings(name="echo", implementation="models.Echo", folder=folder)
    rows: List[Dict[str, Any]] = []

    async def measure(label: str, model: Any) -> None:
        await model.load()
        for size in SIZES.values():
            data = np.zeros(size // 4, dtype="<f4")
            tensor = RequestInput(name="x", shape=[data.size], datatype="FP32", data=data)
            request = InferenceRequest(inputs=[tensor])
            for _ in range(3):
                await model.predict(request)
            times = []
            for _ in range(_repeats(size, repeat)):
                started = time.perf_counter()
                response = await model.predict(request)
                times.append(time.perf_counter() - started)
            assert response.outputs[0].data.nbytes == size
            rows.append(_report(label, size, times))
            print(_format(rows[-1]), flush=True)
        await model.unload()

    async def main(_: Any) -> None:
        local = await LocalModelFactory().create(settings)
        await measure("in-process", local)
        for label, threshold in (("worker, shared memory", MIB), ("worker, pipe only", 0)):
            pool = WorkerPool(
                reactor=reactor,
                settings=Settings(envs_dir=os.path.join(tmp, "envs")),
                shm_threshold=threshold,
            )
            model = await pool.model_factory(settings, 1).create(settings)
            await measure(label, model)
            await pool.stop()

    task.react(lambda r: ensureDeferred(main(r)))  # exits the process when done
    return rows


def _format(row: Dict[str, Any]) -> str:
    rate = f"{row['mib_per_s']:8.0f} MiB/s" if row.get("mib_per_s") else " " * 14
    return (
        f"{row['path']:<26} {row['size'] / MIB:>9.5f} MiB  median {row['median_ms']:9.3f} ms  "
        f"p90 {row['p90_ms']:9.3f} ms  {rate}"
    )


def servers_benchmark(mlserver_python: str, repeat: int) -> None:
    """v2d and MLServer, 0 and 1 workers each, over gRPC one request at a time."""
    import tritonclient.grpc as grpcclient

    from benchmarks.repository import write_repository
    from benchmarks.servers import MLServerPeer, V2dServer

    tmp = tempfile.mkdtemp(prefix="v2d-bench-servers-")
    for kind in ("v2d", "mlserver"):
        models = write_repository(os.path.join(tmp, kind), kind)
        for workers in (0, 1):
            label = f"{kind}, {workers} worker(s)"
            server: Any
            if kind == "v2d":
                server = V2dServer(label, models, workers=workers)
            else:
                server = MLServerPeer(label, mlserver_python, models, parallel_workers=workers, debug=False)
            server.start()
            try:
                client = grpcclient.InferenceServerClient(server.grpc_address)
                for size in SIZES.values():
                    model = "add-one" if size < MIB else "echo"
                    data = np.zeros((1, size // 4), dtype=np.float32)
                    x = grpcclient.InferInput("x", list(data.shape), "FP32")
                    x.set_data_from_numpy(data)
                    for _ in range(3):
                        client.infer(model, [x])
                    times = []
                    for _ in range(_repeats(size, repeat)):
                        started = time.perf_counter()
                        client.infer(model, [x])
                        times.append(time.perf_counter() - started)
                    print(_format(_report(label, size, times)), flush=True)
                client.close()
            finally:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=200, help="calls per tiny measurement")
    parser.add_argument("--mlserver-python", help="interpreter of a venv with MLServer 1.7.1")
    parser.add_argument("--only", choices=["wire", "servers"], help="run one of the two measurements")
    args = parser.parse_args()
    if args.only != "wire" and args.mlserver_python:
        print("== servers: gRPC round trip, one request at a time ==", flush=True)
        servers_benchmark(args.mlserver_python, args.repeat)
    if args.only != "servers":
        print("== wire: IModel.predict, echo model (tensor crosses twice) ==", flush=True)
        wire_benchmark(args.repeat)


if __name__ == "__main__":
    main()
