"""
The servers the benchmark measures, each started on free loopback ports and stopped
again: v2d (through ``tests.support.daemon.Daemon``, a real ``twistd -n v2d``), the
peer MLServer 1.7.1 (from its own venv, through ``benchmarks/mlserver/serve.py``) and
the bare twisted.web ceiling (``benchmarks/ceiling.py``).

``RSSSampler`` reads the resident memory of a server's whole process tree (the server
and its worker processes) from /proc while a measurement runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence

from tests.support.daemon import Daemon, free_port

HERE = os.path.dirname(os.path.abspath(__file__))

__all__ = [
    "CeilingServer",
    "KServePeer",
    "MLServerPeer",
    "RSSSampler",
    "Server",
    "V2dServer",
    "process_tree_cpu",
    "process_tree_rss",
]


def _children(pid: int) -> List[int]:
    kids: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            continue
    return kids


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces: count from its closing ")"
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(pid: int) -> List[int]:
    """``pid`` and all its descendants."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, summed."""
    return sum(_rss_bytes(p) for p in process_tree(pid))


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and all its live descendants."""
    return sum(_cpu_seconds(p) for p in process_tree(pid))


class RSSSampler:
    """Samples a process tree's summed RSS in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, process_tree_rss(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self.peak = process_tree_rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_tree_rss(self.pid))


def _wait_http(url: str, deadline: float, process: subprocess.Popen, what: str, log: str) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not get ready ({url}):\n{_tail(log)}")


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class Server:
    """One server under test: a label, a REST port, maybe a gRPC address, a pid."""

    label = "server"
    kind = "server"  # "v2d", "mlserver", "kserve" or "ceiling"
    http_port: int
    grpc_address: Optional[str] = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def log(self) -> str:
        return ""


class V2dServer(Server):
    """``twistd -n v2d`` on a generated model repository (``command``: another interpreter's twistd)."""

    kind = "v2d"

    def __init__(
        self,
        label: str,
        models: str,
        workers: int = 0,
        command: Optional[List[str]] = None,
        options: Sequence[str] = (),
    ) -> None:
        self.label = label
        self.workers = workers
        self.daemon = Daemon(models, "--workers", str(workers), *options, grpc=True, command=command)
        self.http_port = self.daemon.http_port
        self.grpc_address = self.daemon.grpc_address

    def start(self) -> None:
        self.daemon.start(timeout=120)

    def stop(self) -> None:
        try:
            self.daemon.stop()
        finally:
            if self.daemon.logfile and os.path.exists(self.daemon.logfile):
                os.unlink(self.daemon.logfile)

    @property
    def pid(self) -> int:
        assert self.daemon.process is not None
        return self.daemon.process.pid

    def log(self) -> str:
        return self.daemon.log()


class PeerProcess(Server):
    """A peer server run by another interpreter (its own venv): one process group,
    logged to a file in a work folder of its own, ready once ``ready_paths`` answer 200."""

    kind = "peer"
    prefix = "v2d-bench-peer-"

    def __init__(self, label: str, python: str) -> None:
        self.label = label
        self.python = python
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.process: Optional[subprocess.Popen] = None
        self.workdir = ""
        self.logfile = ""

    def command(self) -> List[str]:
        raise NotImplementedError

    def environment(self) -> Dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

    def ready_paths(self) -> List[str]:
        return ["/v2/health/ready"]

    def start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix=self.prefix)
        self.logfile = os.path.join(self.workdir, "server.log")
        with open(self.logfile, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        for path in self.ready_paths():
            url = f"http://127.0.0.1:{self.http_port}{path}"
            _wait_http(url, deadline, self.process, self.label, self.logfile)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.workdir:
            subprocess.run(["rm", "-rf", self.workdir], check=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return _tail(self.logfile, 200)


class MLServerPeer(PeerProcess):
    """MLServer 1.7.1 from its venv, configured through MLSERVER_* variables."""

    kind = "mlserver"
    prefix = "v2d-bench-mlserver-"

    def __init__(self, label: str, python: str, models: str, parallel_workers: int, debug: bool) -> None:
        super().__init__(label, python)
        self.models = models
        self.parallel_workers = parallel_workers
        self.debug = debug
        self.metrics_port = free_port()

    def command(self) -> List[str]:
        return [self.python, os.path.join(HERE, "mlserver", "serve.py"), self.models]

    def environment(self) -> Dict[str, str]:
        env = {k: v for k, v in super().environment().items() if not k.startswith("MLSERVER_")}
        env.update(
            {
                "MLSERVER_HOST": "127.0.0.1",
                "MLSERVER_HTTP_PORT": str(self.http_port),
                "MLSERVER_GRPC_PORT": str(self.grpc_port),
                "MLSERVER_METRICS_PORT": str(self.metrics_port),
                "MLSERVER_PARALLEL_WORKERS": str(self.parallel_workers),
                "MLSERVER_DEBUG": "true" if self.debug else "false",
                # gRPC's default 4 MiB message limit would refuse the 64 MiB tensors.
                "MLSERVER_GRPC_MAX_MESSAGE_LENGTH": str(1 << 30),
                "MLSERVER_METRICS_DIR": os.path.join(self.workdir, "metrics"),
                "MLSERVER_ENVIRONMENTS_DIR": os.path.join(self.workdir, "envs"),
            }
        )
        return env

    def ready_paths(self) -> List[str]:
        # every model folder must be loaded, not only the server up
        names = _model_names(self.models)
        return super().ready_paths() + [f"/v2/models/{name}/ready" for name in names]


class KServePeer(PeerProcess):
    """KServe 0.21's model server from its venv (``benchmarks/kserve/serve.py``), its defaults
    (one uvicorn worker, grpc.aio with 4 threads, a latency log line per request) except
    the gRPC message limits, raised to 1 GiB for the 64 MiB tensors (its default is 8 MiB)."""

    kind = "kserve"
    prefix = "v2d-bench-kserve-"
    #: the models ``benchmarks/models/kserve_runtimes.py`` serves
    models = ("add-one", "echo", "slow-add-one")

    def command(self) -> List[str]:
        limit = str(1 << 30)
        return [
            self.python,
            os.path.join(HERE, "kserve", "serve.py"),
            "--http_port",
            str(self.http_port),
            "--grpc_port",
            str(self.grpc_port),
            "--grpc_max_send_message_length",
            limit,
            "--grpc_max_receive_message_length",
            limit,
        ]

    def ready_paths(self) -> List[str]:
        return super().ready_paths() + [f"/v2/models/{name}/ready" for name in self.models]


class CeilingServer(Server):
    """The bare twisted.web resource of ``benchmarks/ceiling.py``, on the asyncio reactor."""

    kind = "ceiling"

    def __init__(self, label: str = "twisted.web ceiling") -> None:
        self.label = label
        self.http_port = free_port()
        self.process: Optional[subprocess.Popen] = None
        self.logfile = ""

    def start(self) -> None:
        fd, self.logfile = tempfile.mkstemp(prefix="v2d-bench-ceiling-", suffix=".log")
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "ceiling.py"), "--port", str(self.http_port)],
            stdout=fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(fd)
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        _wait_http(url, time.monotonic() + 60, self.process, self.label, self.logfile)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.logfile and os.path.exists(self.logfile):
            os.unlink(self.logfile)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return _tail(self.logfile)


def _model_names(models: str) -> List[str]:
    names = []
    for entry in sorted(os.listdir(models)):
        path = os.path.join(models, entry, "model-settings.json")
        if os.path.isfile(path):
            with open(path) as f:
                names.append(json.load(f).get("name", entry))
    return names
