"""
Signals and readiness end to end, through a real ``twistd v2d`` with worker processes.

Checked here: SIGTERM while a worker is blocked in ``predict`` ends the daemon within
``shutdown_timeout + KILL_GRACE``, the request in flight gets a 503 and no child is
left; SIGKILL of the daemon ends a busy worker at once; SIGHUP reloads the models that
changed on disk, loads new ones, drops no request in flight and the daemon keeps
serving; a model whose only worker is dead is not ready (model, server, gRPC and the
repository index) until the worker is back.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from typing import Any, Callable

import pytest

from tests.integration.test_workers import alive, infer, wait_gone, wait_ready, worker_pids, write_model
from tests.support.daemon import Daemon
from v2d.service import KILL_GRACE

pytestmark = pytest.mark.integration

#: A runtime whose plain ``predict`` blocks its worker (a ``sleep`` parameter, in
#: seconds), whose ``async`` predict does not (``pause``), whose answer carries a
#: ``VERSION`` that a test rewrites on disk, and whose load takes ``LOAD_DELAY_FILE``'s
#: seconds once that file exists (a restart long enough to watch).
RUNTIME = """
import asyncio
import os
import time
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

VERSION = {version}

class Sleeper(MLModel):
    async def load(self):
        marker = self.settings.parameters.extra.get("load_delay_file")
        if marker and os.path.exists(marker):
            with open(marker) as f:
                await asyncio.sleep(float(f.read()))
        return True

    def predict(self, payload):
        params = payload.parameters
        if params is not None and params.get("sleep"):
            time.sleep(float(params.get("sleep")))
        return self._answer()

    def _answer(self):
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="version", shape=[1], datatype="INT64", data=np.array([VERSION])),
                ResponseOutput(name="pid", shape=[1], datatype="INT64", data=np.array([os.getpid()])),
            ],
        )

class Pauser(Sleeper):
    async def predict(self, payload):
        params = payload.parameters
        if params is not None and params.get("pause"):
            await asyncio.sleep(float(params.get("pause")))
        return self._answer()
"""


def write_runtime(root: str, name: str, implementation: str, version: int = 1, **settings: Any) -> None:
    write_model(root, name, implementation, RUNTIME.format(version=version), parallel_workers=1, **settings)


def in_background(fn: Callable[[], Any]) -> "queue.Queue":
    """Run ``fn`` in a thread; its result (or exception) arrives on the queue returned."""
    results: "queue.Queue" = queue.Queue()

    def run() -> None:
        try:
            results.put(fn())
        except Exception as e:  # noqa: BLE001 - handed to the test
            results.put(e)

    threading.Thread(target=run, daemon=True).start()
    return results


def output(body: Any, name: str) -> int:
    return next(o["data"][0] for o in body["outputs"] if o["name"] == name)


def busy_daemon(tmp_path, *args: str) -> Daemon:
    models = str(tmp_path / "models")
    write_runtime(models, "sleeper", "models.Sleeper")
    return Daemon(models, "--envs-dir", str(tmp_path / "envs"), *args, grpc=False)


def test_sigterm_with_a_worker_blocked_in_predict_is_bounded(tmp_path):
    shutdown_timeout = 2.0
    d = busy_daemon(tmp_path, "--shutdown-timeout", str(shutdown_timeout))
    with d:
        wait_ready(d)
        children = worker_pids(d)
        assert len(children) == 1
        pending = in_background(lambda: infer(d, "sleeper", [1], {"sleep": 120}, timeout=60))
        time.sleep(1.0)  # the worker is in time.sleep(120) now
        assert d.process is not None
        started = time.monotonic()
        d.process.send_signal(signal.SIGTERM)
        d.process.wait(shutdown_timeout + KILL_GRACE + 10)
        took = time.monotonic() - started
        status, body, _ = pending.get(timeout=5)
        log = d.log()
    assert took < shutdown_timeout + KILL_GRACE + 2, f"shutdown took {took:.1f}s"
    assert took >= shutdown_timeout - 0.5, "the drain waited for the request"
    assert status == 503, body
    assert "shutting down" in body["error"] and "still in flight after 2s" in body["error"]
    assert wait_gone(children, timeout=2) == []
    assert "still in flight after 2.0s; answering them 503" in log
    assert "sending TERM" in log, "the blocked worker was ended by the pool, not waited for"


def test_sigterm_with_requests_that_finish_in_time_answers_them(tmp_path):
    models = str(tmp_path / "models")
    write_runtime(models, "pauser", "models.Pauser")
    d = Daemon(models, "--envs-dir", str(tmp_path / "envs"), "--shutdown-timeout", "10", grpc=False)
    with d:
        wait_ready(d)
        children = worker_pids(d)
        pending = [in_background(lambda: infer(d, "pauser", [1], {"pause": 1.5})) for _ in range(4)]
        time.sleep(0.5)
        assert d.process is not None
        started = time.monotonic()
        d.process.send_signal(signal.SIGTERM)
        d.process.wait(30)
        took = time.monotonic() - started
        answers = [p.get(timeout=5) for p in pending]
        log = d.log()
    assert [a[0] for a in answers] == [200] * 4, answers
    assert took < 5, f"shutdown took {took:.1f}s once the requests were answered"
    assert wait_gone(children, timeout=2) == []
    assert "sending TERM" not in log and "answering them 503" not in log


def test_sigkill_of_the_daemon_ends_a_worker_blocked_in_predict(tmp_path):
    d = busy_daemon(tmp_path)
    with d:
        wait_ready(d)
        (child,) = worker_pids(d)
        in_background(lambda: infer(d, "sleeper", [1], {"sleep": 300}, timeout=10))
        time.sleep(1.0)
        assert alive(child)
        assert d.process is not None
        d.process.send_signal(signal.SIGKILL)
        d.process.wait(10)
        assert wait_gone([child], timeout=3) == [], "the busy worker outlived the server"


def test_sighup_reloads_changed_models_and_drops_no_request(tmp_path):
    models = str(tmp_path / "models")
    write_runtime(models, "pauser", "models.Pauser", version=1)
    write_runtime(models, "steady", "models.Pauser", version=1)
    d = Daemon(models, "--envs-dir", str(tmp_path / "envs"), grpc=False)
    with d:
        wait_ready(d)
        assert d.process is not None
        (steady_pid,) = [output(infer(d, "steady", [1])[1], "pid")]

        # requests in flight on both models while the daemon gets SIGHUP and the
        # changed model is swapped for its new version
        write_runtime(models, "pauser", "models.Pauser", version=2)
        write_runtime(models, "fresh", "models.Pauser", version=7)
        names = ("pauser", "steady") * 3
        pending = [in_background(lambda m=m: infer(d, m, [1], {"pause": 2})) for m in names]
        time.sleep(0.5)
        d.process.send_signal(signal.SIGHUP)
        answers = [p.get(timeout=30) for p in pending]
        assert [a[0] for a in answers] == [200] * 6, answers
        versions = {output(a[1], "version") for a in answers}
        assert versions == {1}, "requests in flight finish on the old version"

        deadline = time.monotonic() + 30
        while "SIGHUP: repository reloaded" not in d.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.process.poll() is None, "SIGHUP must not stop the daemon"
        status, body, _ = infer(d, "pauser", [1])
        assert status == 200 and output(body, "version") == 2, body
        status, body, _ = infer(d, "fresh", [1])
        assert status == 200 and output(body, "version") == 7, body
        status, body, _ = infer(d, "steady", [1])
        assert status == 200 and output(body, "pid") == steady_pid, "an unchanged model is left alone"
        assert d.get("/v2/health/ready")[0] == 200

        # a second SIGHUP, to the whole process group as a terminal hangup sends it, with
        # nothing changed: nothing is reloaded, the workers ignore it, the daemon serves on
        os.killpg(d.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while d.log().count("SIGHUP: repository reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert infer(d, "pauser", [1])[0] == 200
        assert output(infer(d, "steady", [1])[1], "pid") == steady_pid
        log = d.log()
    assert "SIGHUP: reloading the model repository" in log
    assert "SIGHUP: reloading changed model pauser" in log
    assert "SIGHUP: loading new model fresh" in log
    assert "SIGHUP: repository reloaded: 1 reloaded, 1 loaded, 0 unloaded, 1 unchanged" in log
    assert "SIGHUP: repository reloaded: 0 reloaded, 0 loaded, 0 unloaded, 3 unchanged" in log
    assert "signal 1 (SIGHUP)" not in log


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_readiness_follows_the_worker(tmp_path):
    import tritonclient.grpc as grpcclient

    models = str(tmp_path / "models")
    marker = str(tmp_path / "load-delay")
    write_runtime(models, "lonely", "models.Sleeper", parameters={"extra": {"load_delay_file": marker}})
    write_runtime(models, "other", "models.Sleeper")
    d = Daemon(models, "--envs-dir", str(tmp_path / "envs"))
    with d, grpcclient.InferenceServerClient(d.grpc_address) as client:
        wait_ready(d)
        assert d.get("/v2/models/lonely/ready")[0] == 200
        assert client.is_model_ready("lonely") and client.is_server_ready()
        victim = output(infer(d, "lonely", [1])[1], "pid")
        with open(marker, "w") as f:
            f.write("4")  # its next load (the restart) takes 4 s
        os.kill(victim, signal.SIGKILL)

        wait_for(lambda: not client.is_model_ready("lonely"), 5, "the model to be not ready")
        assert d.get("/v2/models/lonely/ready")[0] == 503
        assert d.get("/v2/health/ready")[0] == 503, "strict readiness: a model cannot serve"
        assert not client.is_server_ready()
        assert d.get("/v2/models/other/ready")[0] == 200, "the other model is not affected"
        status, index, _ = d.post("/v2/repository/index", {})
        entry = next(e for e in index if e["name"] == "lonely")
        assert entry["state"] == "UNAVAILABLE", entry
        assert "killed by signal 9 (SIGKILL)" in entry["reason"], entry
        assert infer(d, "lonely", [1])[0] == 503

        wait_for(lambda: client.is_model_ready("lonely"), 30, "the restarted worker")
        assert d.get("/v2/models/lonely/ready")[0] == 200
        assert d.get("/v2/health/ready")[0] == 200 and client.is_server_ready()
        status, index, _ = d.post("/v2/repository/index", {})
        assert next(e for e in index if e["name"] == "lonely")["state"] == "READY"
        status, body, _ = infer(d, "lonely", [1])
        assert status == 200 and output(body, "pid") != victim
