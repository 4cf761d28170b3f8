"""
What a client can make the daemon hold, and for how long, through a real
``twistd v2d`` on loopback: memory that follows the bytes received (headers that
announce 256 MiB cost nothing), the bound of the bodies in flight (503 with
Retry-After), freed memory held to ``--retain-memory`` after concurrent big uploads
over REST and gRPC (RSS read from /proc), and the request read timeout against slow
clients (408).
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import write_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS is read from /proc"),
]

MiB = 1024 * 1024

SIZE = """
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Size(MLModel):
    def predict(self, payload):
        data = payload.inputs[0].data
        n = len(data) if hasattr(data, "__len__") else 0
        return InferenceResponse(
            model_name=self.name, outputs=[ResponseOutput(name="n", shape=[1], datatype="INT64", data=[n])]
        )
"""

HOLDS = """
import asyncio
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Holds(MLModel):
    async def predict(self, payload):
        await asyncio.sleep(float(getattr(payload.parameters, "seconds", 0) or 0))
        return InferenceResponse(
            model_name=self.name, outputs=[ResponseOutput(name="n", shape=[1], datatype="INT64", data=[1])]
        )
"""

SMALL = {"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [1]}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_model(root, "size", "models.Size", SIZE)
    write_model(root, "holds", "models.Holds", HOLDS)
    return str(root)


def rss(daemon: Daemon) -> int:
    """The daemon's resident size in bytes."""
    assert daemon.process is not None
    with open(f"/proc/{daemon.process.pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def connect(daemon: Daemon, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.http_port), timeout=timeout)


def binary_head(size: int) -> bytes:
    """Request line and headers of a UINT8 tensor of ``size`` bytes sent as binary data."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [size], "datatype": "UINT8", "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return (
        b"POST /v2/models/size/infer HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: %d\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(header), len(header) + size, header)
    )


def send_zeros(s: socket.socket, count: int) -> None:
    block = bytes(MiB)
    while count > 0:
        s.sendall(block[: min(count, MiB)])
        count -= MiB


def read_reply(s: socket.socket) -> Tuple[int, bytes, Dict[str, str]]:
    """(status, body, headers) of the next reply on a connection."""
    reply = http.client.HTTPResponse(s)
    reply.begin()
    return reply.status, reply.read(), dict(reply.getheaders())


def settled_rss(daemon: Daemon, bound: int, seconds: float) -> int:
    """The daemon's RSS once at most ``bound``, or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while rss(daemon) > bound and time.monotonic() < deadline:
        time.sleep(0.2)
    return rss(daemon)


def timed_health(daemon: Daemon) -> float:
    start = time.monotonic()
    status, _, _ = daemon.get("/v2/health/live", timeout=10)
    assert status == 200
    return time.monotonic() - start


def test_headers_announcing_huge_bodies_cost_no_memory(models):
    with Daemon(models, grpc=False) as daemon:
        base = rss(daemon)
        sockets = [connect(daemon) for _ in range(8)]
        try:
            for s in sockets:
                s.sendall(
                    b"POST /v2/models/size/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n"
                )
            time.sleep(0.5)
            assert timed_health(daemon) < 0.5
            grown = rss(daemon) - base
            assert grown < 32 * MiB, f"8 bodies of 256 MiB announced, none sent: RSS grew {grown >> 20} MiB"
            for s in sockets:
                s.sendall(b"x" * MiB)
            time.sleep(0.3)
            assert rss(daemon) - base < 8 * MiB + 32 * MiB, "memory follows the bytes received"
            assert daemon.post("/v2/models/size/infer", SMALL)[0] == 200
        finally:
            for s in sockets:
                s.close()


def test_bodies_beyond_max_bodies_in_flight_get_503_with_retry_after(models):
    with Daemon(models, "--max-bodies-in-flight", str(16 * MiB), grpc=False) as daemon:
        holder = connect(daemon)
        try:
            holder.sendall(binary_head(32 * MiB))
            send_zeros(holder, 17 * MiB)  # past half: its 32 MiB buffer is held
            time.sleep(0.3)
            status, body, headers = daemon.post("/v2/models/size/infer", SMALL)
            assert status == 503
            assert "max_bodies_in_flight" in body["error"]
            assert headers.get("Retry-After") == "1"
            # a chunked body (no length announced) is refused once it outgrows the room
            with connect(daemon) as s:
                s.sendall(
                    b"POST /v2/models/size/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                piece = bytes(MiB)
                for _ in range(4):
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                s.sendall(b"0\r\n\r\n")
                assert read_reply(s)[0] == 503
            send_zeros(holder, 15 * MiB)
            status, body, _ = read_reply(holder)
            assert status == 200, body
            assert json.loads(body)["outputs"][0]["data"] == [32 * MiB]
        finally:
            holder.close()
        assert daemon.post("/v2/models/size/infer", SMALL)[0] == 200, "the room came back"


def test_retain_memory_holds_after_concurrent_big_uploads(models):
    retain, size, count = 64 * MiB, 32 * MiB, 20  # 672 MiB in flight: within the default bound
    with Daemon(models, "--retain-memory", str(retain), grpc=False) as daemon:
        assert daemon.post("/v2/models/size/infer", SMALL)[0] == 200
        base = rss(daemon)
        uploads = [connect(daemon, timeout=120) for _ in range(count)]
        holder = connect(daemon, timeout=120)
        try:
            for s in uploads:  # each past half: every buffer allocated
                s.sendall(binary_head(size))
                send_zeros(s, size // 2 + MiB)
            holder.sendall(binary_head(size))  # one more, still in flight above them all
            send_zeros(holder, size // 2 + MiB)
            replies: List[Optional[int]] = [None] * count

            def finish(i: int) -> None:
                send_zeros(uploads[i], size // 2 - MiB)
                replies[i] = read_reply(uploads[i])[0]

            threads = [threading.Thread(target=finish, args=(i,)) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert replies == [200] * count
            bound = base + size + retain + 32 * MiB  # the holder's body, what is kept, slack
            held = settled_rss(daemon, bound, 10)
            assert held <= bound, (
                f"{count} uploads of {size >> 20} MiB done, one in flight: RSS {held >> 20} MiB, "
                f"more than {bound >> 20} MiB ({base >> 20} at rest + {size >> 20} in flight + "
                f"{retain >> 20} retained + 32)"
            )
            send_zeros(holder, size // 2 - MiB)
            assert read_reply(holder)[0] == 200
        finally:
            for s in uploads + [holder]:
                s.close()


def test_retain_memory_holds_after_concurrent_big_grpc_messages(models):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    retain, size, count = 64 * MiB, 32 * MiB, 20
    args = ["--retain-memory", str(retain), "--grpc-max-message-size", str(128 * MiB)]
    with Daemon(models, *args) as daemon:

        def call(seconds: float = 0) -> None:
            client = grpcclient.InferenceServerClient(daemon.grpc_address)
            x = grpcclient.InferInput("x", [size], "UINT8")
            x.set_data_from_numpy(np.zeros(size, np.uint8))
            client.infer("holds", [x], parameters={"seconds": seconds} if seconds else None)
            client.close()

        call()  # grpc's own threads and arenas exist before the baseline is taken
        base = rss(daemon)
        threads = [threading.Thread(target=call) for _ in range(count)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        holder = threading.Thread(target=call, args=(15,))  # one more, still in flight above them
        holder.start()
        for t in threads:
            t.join(120)
        # the holder's message and grpc's copy of it, what is kept, and grpc's own threads and buffers
        bound = base + 2 * size + retain + 64 * MiB
        held = settled_rss(daemon, bound, 10)
        assert held <= bound, (
            f"{count} gRPC messages of {size >> 20} MiB done, one in flight: RSS {held >> 20} MiB, more "
            f"than {bound >> 20} MiB ({base >> 20} at rest + {2 * size >> 20} in flight + "
            f"{retain >> 20} retained + 64)"
        )
        holder.join(120)


def test_slow_clients_get_408_at_the_request_read_timeout(models):
    with Daemon(models, "--request-read-timeout", "2", grpc=False) as daemon:
        # headers a byte at a time: each byte resets the idle timeout, not this one
        with connect(daemon) as s:
            start = time.monotonic()
            s.settimeout(0.2)
            reply = b""
            for byte in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                try:
                    s.sendall(bytes([byte]))
                    reply += s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if reply:
                    break
            took = time.monotonic() - start
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            assert b"request_read_timeout" in reply
            assert 1.8 < took < 4, took
        # a body a little at a time
        with connect(daemon) as s:
            s.sendall(b"POST /v2/models/size/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            start = time.monotonic()
            s.settimeout(0.3)
            reply = b""
            while not reply and time.monotonic() - start < 6:
                try:
                    s.sendall(b"{")
                    reply = s.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    break
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            s.settimeout(5)
            try:
                while s.recv(65536):
                    pass  # the rest of the 408, then the end: the connection is closed
            except ConnectionResetError:
                pass
        # a keep-alive connection idle longer than the read timeout still serves
        with connect(daemon) as s:
            for _ in range(2):
                s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_reply(s)[0] == 200
                time.sleep(2.5)
        assert timed_health(daemon) < 0.5
