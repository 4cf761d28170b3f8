"""
The image's health check, against real HTTP servers on loopback and a unix socket
(standard-library servers in a thread; no reactor).
"""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
from typing import Iterator, Tuple

import pytest

from v2d.build import healthcheck


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=[200, 503])
def tcp_server(request) -> Iterator[Tuple[int, int]]:
    handler = type("Handler", (_Handler,), {"status": request.param})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    for _ in _serve(server):
        yield server.server_address[1], request.param


def test_tcp(tcp_server):
    port, status = tcp_server
    ready, message = healthcheck.check([f"tcp:{port}:interface=127.0.0.1"])
    assert ready is (status == 200)
    assert f"answered {status}" in message


def test_first_checkable_endpoint_wins(tcp_server):
    port, status = tcp_server
    ready, _ = healthcheck.check(["systemd:domain=INET:index=0", f"tcp:port={port}"])
    assert ready is (status == 200)


def test_nothing_listening():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready, message = healthcheck.check([f"tcp:{port}"])
    assert not ready and f"tcp:{port}" in message


def test_unix_socket(tmp_path):
    path = str(tmp_path / "v2d.sock")

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    class Handler(_Handler):
        def address_string(self) -> str:
            return "unix"

    server = Server(path, Handler)
    for _ in _serve(server):
        assert healthcheck.check([f"unix:{path}"]) == (True, f"unix:{path}: /v2/health/ready answered 200")


def test_no_checkable_endpoint_is_healthy():
    ready, message = healthcheck.check(["systemd:domain=INET:index=0"])
    assert ready and "no REST endpoint" in message


def test_main_reads_settings_like_the_server(tcp_server, tmp_path, monkeypatch, capsys):
    port, status = tcp_server
    config = tmp_path / "settings.json"
    config.write_text('{"rest": ["tcp:1"]}')
    monkeypatch.setenv("V2D_CONFIG", str(config))
    monkeypatch.setenv("V2D_REST", f"tcp:{port}")  # the variable beats settings.json
    for key in [k for k in os.environ if k.startswith("V2D_") and k not in ("V2D_CONFIG", "V2D_REST")]:
        monkeypatch.delenv(key)
    assert healthcheck.main() == (0 if status == 200 else 1)
    captured = capsys.readouterr()
    assert f"tcp:{port}" in captured.out + captured.err


def test_main_with_broken_settings(monkeypatch, capsys):
    monkeypatch.setenv("V2D_WORKERS", "lots")
    assert healthcheck.main() == 1
    assert "unhealthy" in capsys.readouterr().err
