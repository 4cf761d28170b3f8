"""
Runtimes that speak Twisted, served by worker processes through a real ``twistd v2d``.

A ``predict`` that returns ``deferLater(reactor, ...)`` or a Deferred fired by
``reactor.callLater`` answers from a worker as it does in-process (the child runs
Twisted's asyncio reactor on its loop). In an environment without Twisted, a runtime
that imports it fails its load with one line saying what to install.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import pytest

from tests.integration.test_environments import wait_settled
from tests.integration.test_workers import infer, wait_ready, write_model
from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration

TWISTED_RUNTIMES = """
import os
import time

import numpy as np
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput


def respond(name, x, started):
    waited = np.array([time.monotonic() - started])
    return InferenceResponse(
        model_name=name,
        outputs=[
            ResponseOutput(name="y", shape=list(x.shape), datatype="FP32", data=np.asarray(x, "f4") + 1),
            ResponseOutput(name="waited", shape=[1], datatype="FP64", data=waited),
            ResponseOutput(name="pid", shape=[1], datatype="INT64", data=np.array([os.getpid()])),
        ],
    )


class Later(MLModel):
    def load(self):
        return deferLater(reactor, 0.01, lambda: True)

    def predict(self, payload):
        started = time.monotonic()
        return deferLater(reactor, 0.05, respond, self.name, payload.inputs[0].data, started)


class Ticking(MLModel):
    def predict(self, payload):
        started = time.monotonic()
        d = Deferred()
        reactor.callLater(0.05, lambda: d.callback(respond(self.name, payload.inputs[0].data, started)))
        return d
"""


def _outputs(body: dict) -> dict:
    return {o["name"]: o["data"] for o in body["outputs"]}


def test_deferred_and_call_later_runtimes_answer_from_a_worker(tmp_path):
    models = str(tmp_path / "models")
    write_model(models, "later", "models.Later", TWISTED_RUNTIMES)
    write_model(models, "ticking", "models.Ticking", TWISTED_RUNTIMES)
    with Daemon(models, "--workers", "1", "--envs-dir", str(tmp_path / "envs"), grpc=False) as d:
        wait_ready(d)
        for name in ("later", "ticking"):
            started = time.monotonic()
            status, body, _ = infer(d, name, [1.0, 2.0])
            assert status == 200, (name, body, d.log())
            out = _outputs(body)
            assert out["y"] == [2.0, 3.0]
            assert out["waited"][0] >= 0.045 and time.monotonic() - started >= 0.045
            assert out["pid"][0] != d.process.pid, "served by a worker process"
        assert "bad yield" not in d.log()


def _environment_without_twisted(path: str) -> str:
    """A venv of the server's Python holding numpy (linked from the server's) and nothing else."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=120)
    import numpy

    source = os.path.dirname(os.path.dirname(numpy.__file__))
    (target,) = glob.glob(os.path.join(path, "lib", "python*", "site-packages"))
    for pattern in ("numpy", "numpy-*.dist-info", "numpy.libs"):
        for found in glob.glob(os.path.join(source, pattern)):
            os.symlink(found, os.path.join(target, os.path.basename(found)))
    return os.path.join(path, "bin", "python")


def test_a_runtime_needing_twisted_in_an_environment_without_it_says_so(tmp_path):
    env = str(tmp_path / "no-twisted")
    python = _environment_without_twisted(env)
    probe = subprocess.run([python, "-I", "-c", "import twisted"], capture_output=True, timeout=60)
    assert probe.returncode != 0, "the environment must not have Twisted"
    models = str(tmp_path / "models")
    write_model(models, "later", "models.Later", TWISTED_RUNTIMES, parameters={"environment_path": env})
    with Daemon(models, "--envs-dir", str(tmp_path / "envs"), grpc=False) as d:
        states = wait_settled(d, ["later"])
        reason = states["later"]["reason"]
        assert states["later"]["state"] == "UNAVAILABLE", states
        assert "model 'later' uses Twisted" in reason and "install twisted into the environment" in reason
        assert "\n" not in reason
