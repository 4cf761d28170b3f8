"""
The gRPC floor: an empty grpc.aio generic handler, on the same Twisted asyncio reactor
and loop as v2d (uvloop where installed), that answers ``ModelInfer`` with canned
bytes (no parsing, no model). Its CPU per request is what grpc.aio alone costs on this
machine; v2d's gRPC path is measured against it.

``measure`` runs h2load against one or more servers in turn (the floor and v2d, both
started here, and any other server given as ``LABEL=PID@HOST:PORT``) with a prepared
``ModelInferRequest`` for ``add-one`` (x FP32 [1, 16], raw contents), and prints each
server's requests/s and its process tree's CPU seconds per 1,000 requests (utime +
stime from /proc over the measured window). CPU per request is the figure that holds
on a shared machine; rates move with whatever else runs. Run from the repository root::

    python benchmarks/grpc_ceiling.py serve --port 8091
    python benchmarks/grpc_ceiling.py measure [-c 1 -c 16] [-D 10] [--rounds 2]
        [--servers floor,v2d,v2d-w1] [--target kserve=PID@127.0.0.1:8081]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICE = "inference.GRPCInferenceService"
NAME = "add-one"
SMALL = 16


def _messages() -> Any:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from v2d.grpc._messages import pb

    return pb


def canned_response() -> bytes:
    """A serialized ``ModelInferResponse`` for add-one: y FP32 [1, 16], raw contents."""
    import numpy as np

    pb = _messages()
    message = pb.ModelInferResponse(model_name=NAME, model_version="1")
    message.outputs.add(name="y", datatype="FP32", shape=[1, SMALL])
    message.raw_output_contents.append(np.ones(SMALL, dtype=np.float32).tobytes())
    return message.SerializeToString()


def request_frame(model: str = NAME, elements: int = SMALL) -> bytes:
    """A length-prefixed gRPC frame holding a ``ModelInferRequest`` of x FP32 [1, elements]."""
    import numpy as np

    pb = _messages()
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[1, elements])
    message.raw_input_contents.append(np.linspace(0, 1, elements, dtype=np.float32).tobytes())
    payload = message.SerializeToString()
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def floor_handler(body: bytes) -> Any:
    """A generic handler answering every ``ModelInfer`` with ``body`` (bytes in, bytes out)."""
    import grpc

    async def infer(request: bytes, context: Any) -> bytes:
        return body

    handler = grpc.unary_unary_rpc_method_handler(infer)  # no (de)serializers: bytes pass
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler})


def serve(port: int, interface: str) -> None:
    """Serve the floor until SIGTERM/SIGINT, on the asyncio reactor over v2d's loop."""
    from twisted.internet import asyncioreactor

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from v2d.tap import new_event_loop

    loop = new_event_loop()  # the loop v2d runs on by default, so that the two compare
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    import grpc
    from twisted.internet import reactor

    servers = []  # held: a grpc.aio server that is collected stops

    async def start() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((floor_handler(canned_response()),))
        if not server.add_insecure_port(f"{interface}:{port}"):
            raise SystemExit(f"cannot listen on {interface}:{port}")
        await server.start()
        servers.append(server)
        sys.stdout.write(f"gRPC floor listening on {interface}:{port}\n")
        sys.stdout.flush()

    reactor.callWhenRunning(lambda: asyncio.ensure_future(start()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# -- measuring ---------------------------------------------------------------------


def _tree(pid: int) -> List[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(k) for k in f.read().split())
        except OSError:
            continue
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in seconds."""
    ticks = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def h2load(address: str, frame_path: str, concurrency: int, duration: int) -> Tuple[float, int, str]:
    """(requests/s, requests done, output) of one h2load run of ModelInfer."""
    cmd = [
        shutil.which("h2load") or "h2load",
        "-D", str(duration), "-c", str(concurrency), "-m", "1", "-t", "1",
        "-d", frame_path,
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{address}/{SERVICE}/ModelInfer",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    output = proc.stdout + proc.stderr
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", output)
    if not rate or not done:
        raise RuntimeError(f"h2load failed: {output.strip()[-300:]}")
    return float(rate.group(1)), int(done.group(2)), output


def check(address: str, frame: bytes) -> None:
    """One ModelInfer call through grpcio (h2load counts an HTTP 200 carrying a gRPC error as success)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        channel.unary_unary(f"/{SERVICE}/ModelInfer")(frame[5:], timeout=30)


def measure_one(pid: int, address: str, frame_path: str, concurrency: int, duration: int) -> Dict[str, float]:
    before, t0 = cpu_seconds(pid), time.monotonic()
    rate, done, _ = h2load(address, frame_path, concurrency, duration)
    cpu = cpu_seconds(pid) - before
    return {
        "rps": rate,
        "requests": done,
        "cpu_per_1000": 1000.0 * cpu / done if done else float("nan"),
        "wall": time.monotonic() - t0,
    }


class _Floor:
    def __init__(self) -> None:
        sys.path.insert(0, ROOT)
        from tests.support.daemon import free_port

        self.address = f"127.0.0.1:{free_port()}"
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        port = self.address.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "serve", "--port", port],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)


def _v2d(workers: int, models: str) -> Any:
    sys.path.insert(0, ROOT)
    from benchmarks.servers import V2dServer

    server = V2dServer(f"v2d --workers {workers}", models, workers=workers)
    server.address = server.grpc_address
    return server


def main_measure(args: argparse.Namespace) -> None:
    sys.path.insert(0, ROOT)
    from benchmarks.repository import write_repository

    work = tempfile.mkdtemp(prefix="v2d-grpc-floor-")
    frame = request_frame()
    frame_path = os.path.join(work, "frame")
    with open(frame_path, "wb") as f:
        f.write(frame)
    factories: Dict[str, Callable[[], Any]] = {
        "floor": _Floor,
        "v2d": lambda: _v2d(0, write_repository(os.path.join(work, "models"), "v2d")),
        "v2d-w1": lambda: _v2d(1, write_repository(os.path.join(work, "models-w1"), "v2d")),
    }
    servers: List[Tuple[str, Any]] = []
    try:
        for key in [s for s in args.servers.split(",") if s]:
            server = factories[key]()
            server.start()
            servers.append((key, server))
        for target in args.target:
            label, rest = target.split("=", 1)
            pid, address = rest.split("@", 1)
            servers.append((label, type("External", (), {"pid": int(pid), "address": address})()))
        for _, server in servers:
            check(server.address, frame)
            for _ in range(3):  # warm up: connections, caches, the allocator
                h2load(server.address, frame_path, 4, 1)
        print(f"{'server':<12} {'c':>3} {'req/s':>9} {'CPU s/1000 req':>15}")
        for concurrency in args.concurrency:
            for label, server in servers:
                best: Optional[Dict[str, float]] = None
                for _ in range(args.rounds):
                    result = measure_one(server.pid, server.address, frame_path, concurrency, args.duration)
                    if best is None or result["cpu_per_1000"] < best["cpu_per_1000"]:
                        best = result
                assert best is not None
                print(f"{label:<12} {concurrency:>3} {best['rps']:>9.0f} {best['cpu_per_1000']:>15.3f}")
                sys.stdout.flush()
    finally:
        for _, server in servers:
            if hasattr(server, "stop"):
                server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the floor")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--interface", default="127.0.0.1")
    m = sub.add_parser("measure", help="measure servers with h2load, CPU per request from /proc")
    m.add_argument("-c", "--concurrency", type=int, action="append")
    m.add_argument("-D", "--duration", type=int, default=10)
    m.add_argument("--rounds", type=int, default=2, help="each measurement N times, least CPU kept")
    m.add_argument("--servers", default="floor,v2d", help="started here: floor, v2d, v2d-w1")
    m.add_argument("--target", action="append", default=[], help="LABEL=PID@HOST:PORT, already running")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.interface)
    else:
        args.concurrency = args.concurrency or [1, 16]
        main_measure(args)


if __name__ == "__main__":
    main()
