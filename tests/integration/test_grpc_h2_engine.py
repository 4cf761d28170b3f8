"""
The h2 gRPC engine (the default, ``--grpc-engine h2``) against real clients: grpcio
stubs, tritonclient and the h2 library on a real ``twistd v2d``. What the shared gRPC
suites do not reach is here:
deadlines, compressed requests, big messages through flow control, message limits,
unknown methods, HTTP/2 requests that are not gRPC, a client that sends garbage,
cancellation, and a shutdown with a call in flight. (The other gRPC suites run on the
grpcio engine too: ``test_grpc_engines_alike`` runs them again with
``V2D_GRPC_ENGINE=grpcio``.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from h2 import events
from h2.config import H2Configuration
from h2.connection import H2Connection

from tests.support.daemon import Daemon, package_root
from tests.support.model_folder import ECHO, write_model
from v2d.grpc._messages import pb

pytestmark = pytest.mark.integration

SLOW = """
import asyncio
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Slow(MLModel):
    async def predict(self, payload):
        await asyncio.sleep(float(payload.inputs[0].data[0]))
        x = payload.inputs[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="y", shape=x.shape, datatype=x.datatype, data=x.data)],
        )
"""

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_model(root, "echo", "models.Echo", ECHO)
    write_model(root, "slow", "models.Slow", SLOW)
    daemon = Daemon(str(root), "--grpc-engine", "h2", "--grpc-max-message-size", str(16 * 1024 * 1024))
    with daemon:
        yield daemon


def _request(model: str, array: np.ndarray) -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=list(array.shape))
    message.raw_input_contents.append(array.astype(np.float32).tobytes())
    return message.SerializeToString()


def _http2_status(host: str, port: int, method: bytes, content_type: bytes) -> bytes:
    """The ``:status`` a plain HTTP/2 request gets (the h2 library as the client)."""
    conn = H2Connection(config=H2Configuration(client_side=True, header_encoding=None))
    with socket.create_connection((host, port), timeout=10) as s:
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (b":method", method),
                (b":path", b"/x"),
                (b":scheme", b"http"),
                (b":authority", b"v2d"),
                (b"content-type", content_type),
            ],
            end_stream=True,
        )
        s.sendall(conn.data_to_send())
        while True:
            data = s.recv(65536)
            assert data, "the server closed the connection without an answer"
            for event in conn.receive_data(data):
                if isinstance(event, events.ResponseReceived):
                    return dict(event.headers)[b":status"]
            s.sendall(conn.data_to_send())


def _infer(channel: grpc.Channel):
    return channel.unary_unary(
        INFER, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
    )


def _y(response) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32)


def test_serves_and_says_it_is_h2(server):
    assert "(h2)" in server.log()
    with grpc.insecure_channel(server.grpc_address) as channel:
        data = np.arange(16, dtype=np.float32)
        response, call = _infer(channel).with_call(_request("echo", data), metadata=[("x-trace", "abc")])
        assert np.array_equal(_y(response), data)
        assert call.code() == grpc.StatusCode.OK


def test_deadline_exceeded(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            _infer(channel)(_request("slow", np.array([5.0])), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3
        # the server is fine afterwards
        response = _infer(channel)(_request("echo", np.ones(4)))
        assert np.array_equal(_y(response), np.ones(4, np.float32))


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests(server, compression):
    with grpc.insecure_channel(server.grpc_address, compression=compression) as channel:
        data = np.zeros(100_000, dtype=np.float32)  # compresses well
        response = _infer(channel)(_request("echo", data))
        assert np.array_equal(_y(response), data)


def test_big_messages_pass_flow_control(server):
    data = np.random.default_rng(1).random(3 * 1024 * 1024, dtype=np.float32)  # 12 MiB each way
    with grpc.insecure_channel(
        server.grpc_address,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        for _ in range(2):
            response = _infer(channel)(_request("echo", data))
            assert np.array_equal(_y(response), data)


def test_message_limit(server):
    data = np.zeros(5 * 1024 * 1024, dtype=np.float32)  # 20 MiB > 16 MiB
    with grpc.insecure_channel(
        server.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _infer(channel)(_request("echo", data))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in caught.value.details()


def test_a_client_pinging_often_keeps_its_connection(server):
    # keepalive pings every 100 ms, with and without calls: each is answered
    options = [
        ("grpc.keepalive_time_ms", 100),
        ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with grpc.insecure_channel(server.grpc_address, options=options) as channel:
        states: list = []
        channel.subscribe(states.append, try_to_connect=True)
        for _ in range(5):
            response = _infer(channel)(_request("echo", np.ones(3)))
            assert np.array_equal(_y(response), np.ones(3, np.float32))
            time.sleep(0.3)
        channel.unsubscribe(states.append)
        ready = states.index(grpc.ChannelConnectivity.READY)
        assert set(states[ready:]) == {grpc.ChannelConnectivity.READY}, states  # never dropped


def test_metadata_over_the_limit_fails_its_call_only(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _infer(channel)(_request("echo", np.ones(2)), metadata=[("x-big", "b" * 20_000)])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        response = _infer(channel)(_request("echo", np.ones(2)), metadata=[("x-small", "s")])
        assert np.array_equal(_y(response), np.ones(2, np.float32))


def test_unknown_method_and_errors(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/inference.GRPCInferenceService/Nope")(b"")
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as caught:
            _infer(channel)(_request("missing", np.ones(2)))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "model 'missing' not found"
        with pytest.raises(grpc.RpcError) as caught:
            _infer(channel)(b"\xff\xff\xff")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_watch_and_reflection(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(service="echo")).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(answers).list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        assert "grpc.health.v1.Health" in names


def test_cancelled_call_leaves_server_serving(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        future = _infer(channel).future(_request("slow", np.array([5.0])))
        time.sleep(0.3)
        future.cancel()
        assert future.cancelled()
        time.sleep(0.3)
        assert "request to model 'slow' cancelled" in server.log() or "cancelled" in server.log()
        response = _infer(channel)(_request("echo", np.ones(3)))
        assert np.array_equal(_y(response), np.ones(3, np.float32))


def test_garbage_and_plain_http2_are_refused(server):
    host, port = server.grpc_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 100)
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    # a GET over HTTP/2 (not gRPC), and a POST that is not gRPC: HTTP statuses, not hangs
    assert _http2_status(host, int(port), b"GET", b"text/plain") == b"405"
    assert _http2_status(host, int(port), b"POST", b"application/json") == b"415"
    with grpc.insecure_channel(server.grpc_address) as channel:
        response = _infer(channel)(_request("echo", np.ones(2)))
        assert np.array_equal(_y(response), np.ones(2, np.float32))


def test_tritonclient_streams_on_h2(server):
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    client = tritonclient_grpc.InferenceServerClient(server.grpc_address)
    assert client.is_server_ready()
    assert client.get_model_metadata("echo").name == "echo"
    x = tritonclient_grpc.InferInput("x", [2, 3], "FP32")
    x.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    result = client.infer("echo", [x], headers={"x-v2d-test": "1"})
    assert np.array_equal(result.as_numpy("y"), np.arange(6, dtype=np.float32).reshape(2, 3))
    client.close()


def test_shutdown_lets_a_call_in_flight_finish(tmp_path):
    write_model(tmp_path, "slow", "models.Slow", SLOW)
    daemon = Daemon(str(tmp_path), "--grpc-engine", "h2", "--shutdown-timeout", "10")
    daemon.start()
    try:
        answers: list = []
        with grpc.insecure_channel(daemon.grpc_address) as channel:
            call = threading.Thread(
                target=lambda: answers.append(_infer(channel)(_request("slow", np.array([1.0])), timeout=20))
            )
            call.start()
            time.sleep(0.4)
            daemon.process.terminate()  # type: ignore[union-attr]
            call.join(20)
        assert answers and np.array_equal(_y(answers[0]), np.array([1.0], np.float32))
        daemon.process.wait(20)  # type: ignore[union-attr]  # twistd ends by its signal: -15
        assert "the server is shutting down" not in daemon.log()
    finally:
        daemon.stop()


#: The suites whose gRPC cases run again on the grpcio engine.
ALIKE = [
    "tests/integration/test_clients.py",
    "tests/integration/test_cancel.py",
    "tests/integration/test_bad_input_battery.py",
    "tests/integration/test_restricted_tls.py",
    "tests/integration/test_shared_memory.py",
    "tests/integration/test_workers.py",
    "tests/integration/test_startup_errors.py",
]


def test_grpc_engines_alike():
    """The gRPC suites above, run again with the grpcio engine (``V2D_GRPC_ENGINE=grpcio``)."""
    env = dict(os.environ, V2D_GRPC_ENGINE="grpcio")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "grpc or Grpc or GRPC",
            *ALIKE,
        ],
        cwd=package_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
