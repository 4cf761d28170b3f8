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
        [--servers floor,v2d,v2d-w1,v2d-grpcio] [--target kserve=PID@127.0.0.1:8081]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bodies import grpc_body  # noqa: E402
from benchmarks.loadgen import CPUMeter, H2load, Load  # noqa: E402
from benchmarks.servers import process_tree_cpu as cpu_seconds  # noqa: E402, F401 - a server's CPU so far

SERVICE = "inference.GRPCInferenceService"
NAME = "add-one"
SMALL = 16


def _messages() -> Any:
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


def _load(concurrency: int, model: str = NAME, elements: int = SMALL) -> Load:
    return Load(model=model, transport="grpc", concurrency=concurrency, elements=elements)


def request_frame(model: str = NAME, elements: int = SMALL) -> bytes:
    """A length-prefixed gRPC frame holding a ``ModelInferRequest`` of x FP32 [1, elements]."""
    return grpc_body(_load(1, model, elements))


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


def measure_one(pid: int, address: str, concurrency: int, duration: int) -> Dict[str, float]:
    """One h2load run of add-one against ``address``: rate, requests, server CPU per 1,000."""
    m = H2load(duration).run(_load(concurrency), address, CPUMeter(pid))
    if m.error:
        raise RuntimeError(m.error)
    per_1k = m.server_cpu_per_1k
    return {
        "rps": m.throughput,
        "requests": m.requests,
        "cpu_per_1000": per_1k if per_1k is not None else float("nan"),
        "wall": m.window_s,
    }


class _Floor:
    def __init__(self) -> None:
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


def _v2d(workers: int, models: str, *options: str) -> Any:
    from benchmarks.servers import V2dServer

    server = V2dServer(f"v2d --workers {workers}", models, workers=workers, options=options)
    server.address = server.grpc_address
    return server


def main_measure(args: argparse.Namespace) -> None:
    from benchmarks.repository import write_repository

    work = tempfile.mkdtemp(prefix="v2d-grpc-floor-")
    factories: Dict[str, Callable[[], Any]] = {
        "floor": _Floor,
        "v2d": lambda: _v2d(0, write_repository(os.path.join(work, "models"), "v2d")),
        "v2d-w1": lambda: _v2d(1, write_repository(os.path.join(work, "models-w1"), "v2d")),
        "v2d-grpcio": lambda: _v2d(
            0, write_repository(os.path.join(work, "models-grpcio"), "v2d"), "--grpc-engine", "grpcio"
        ),
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
            for _ in range(3):  # checked with grpcio, then warmed up: connections, caches, the allocator
                warm = H2load(1).run(_load(4), server.address)
                if warm.error:
                    raise SystemExit(f"{server.address}: {warm.error}")
        print(f"{'server':<12} {'c':>3} {'req/s':>9} {'CPU s/1000 req':>15}")
        for concurrency in args.concurrency:
            for label, server in servers:
                best: Optional[Dict[str, float]] = None
                for _ in range(args.rounds):
                    result = measure_one(server.pid, server.address, concurrency, args.duration)
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
    m.add_argument("--servers", default="floor,v2d", help="started here: floor, v2d, v2d-w1, v2d-grpcio")
    m.add_argument("--target", action="append", default=[], help="LABEL=PID@HOST:PORT, already running")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.interface)
    else:
        args.concurrency = args.concurrency or [1, 16]
        main_measure(args)


if __name__ == "__main__":
    main()
