"""
A real ``twistd v2d`` for integration tests: started on free loopback ports, waited
for, stopped with SIGTERM, its log kept for assertions and failure reports.

Only the standard library is used, so any test (and the benchmarks) can drive it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterable, List, Optional, Tuple

import v2d

__all__ = ["Daemon", "free_port", "http_json", "package_root"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def package_root() -> str:
    """The folder that holds the v2d package under test (a checkout or site-packages)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(v2d.__file__)))


def twistd_command() -> List[str]:
    """How to run twistd with this interpreter."""
    return [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 30.0,
) -> Tuple[int, Any, Dict[str, str]]:
    """(status, parsed JSON or raw bytes, response headers) of one HTTP request."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, hdrs = resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), dict(e.headers.items())
    try:
        return status, json.loads(raw), hdrs
    except ValueError:
        return status, raw, hdrs


class Daemon:
    """One ``twistd -n v2d`` process on loopback."""

    def __init__(
        self,
        models: str,
        *args: str,
        env: Optional[Dict[str, str]] = None,
        grpc: bool = True,
        cwd: Optional[str] = None,
        command: Optional[List[str]] = None,
        argv: Optional[List[str]] = None,
    ) -> None:
        self.models = models
        self.args = list(args)
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else None
        self.env = dict(os.environ)
        self.env.pop("V2D_CONFIG", None)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in [package_root(), self.env.get("PYTHONPATH", "")] if p
        )
        self.env["PYTHONUNBUFFERED"] = "1"
        # Environments unpack under the temp dir unless a test says otherwise (a test
        # run writes nothing in the home folder).
        self.env.setdefault(
            "V2D_ENVS_DIR", os.path.join(tempfile.gettempdir(), f"v2d-tests-{os.getuid()}", "envs")
        )
        self.env.update(env or {})
        self.cwd = cwd
        self.command = command or twistd_command()
        self._argv = argv
        if argv is not None:
            for i, arg in enumerate(argv[:-1]):
                if arg == "--rest" and argv[i + 1].startswith("tcp:"):
                    self.http_port = int(argv[i + 1].split(":")[1])
        self.process: Optional[subprocess.Popen] = None
        self.logfile: Optional[str] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def argv(self) -> List[str]:
        """The command line: ``argv`` if given, else twistd on the chosen ports."""
        if self._argv is not None:
            return list(self._argv)
        grpc = self.grpc_address if self.grpc_port else "none"
        return self.command + [
            "-n",
            "--pidfile=",
            "--logfile=-",
            "v2d",
            "--models",
            self.models,
            "--rest",
            f"tcp:{self.http_port}:interface=127.0.0.1",
            "--grpc",
            grpc,
            *self.args,
        ]

    def start(self, wait: bool = True, timeout: float = 60.0) -> "Daemon":

        fd, self.logfile = tempfile.mkstemp(prefix="v2d-daemon-", suffix=".log")
        self.process = subprocess.Popen(
            self.argv(),
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        os.close(fd)
        if wait:
            self.wait_started(timeout)
        return self

    def log(self) -> str:
        """Everything the daemon printed so far."""
        if not self.logfile:
            return ""
        with open(self.logfile, encoding="utf-8", errors="replace") as f:
            return f.read()

    def get(self, path: str, **kwargs: Any) -> Tuple[int, Any, Dict[str, str]]:
        return http_json("GET", self.url + path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Tuple[int, Any, Dict[str, str]]:
        return http_json("POST", self.url + path, body, **kwargs)

    def wait_started(self, timeout: float = 60.0) -> None:
        """Wait until the daemon answers and no model is still loading."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"v2d exited with {self.process.returncode}:\n{self.log()}")
            try:
                status, index, _ = self.post("/v2/repository/index", {}, timeout=2)
                if status == 200 and not any(e.get("state") == "LOADING" for e in index):
                    status, _, _ = self.get("/v2/health/live", timeout=2)
                    ready_status, _, _ = self.get("/v2/health/ready", timeout=2)
                    if status == 200 and (ready_status == 200 or self._all_settled(index)):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"v2d did not start within {timeout}s:\n{self.log()}")

    def _all_settled(self, index: Iterable[Dict[str, Any]]) -> bool:
        # "not loaded" entries come from discovery before the start-up load has begun.
        return all(
            e.get("state") in ("READY", "UNAVAILABLE") and e.get("reason") != "not loaded" for e in index
        )

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait; returns the exit code (KILLs and raises if it hangs)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise RuntimeError(f"v2d did not stop within {timeout}s of SIGTERM:\n{self.log()}") from None

    def __enter__(self) -> "Daemon":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            if self.logfile and os.path.exists(self.logfile):
                if exc[0] is not None:
                    sys.stderr.write(f"--- v2d log ---\n{self.log()}\n")
                os.unlink(self.logfile)
