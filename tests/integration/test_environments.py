"""
Models in their own Python environments, end to end, with a real ``twistd v2d``.

One environment is built per test run, during the run: a venv of a Python other than
the server's (found under pyenv, or as ``python3.X`` on PATH) holding numpy and
``inflection``, a small pure-Python package the server does not have, packed with
venv-pack. A model whose ``environment_tarball`` is that archive serves requests
(from the other Python, without seeing the server's site-packages); the archive is
unpacked once and reused by the next server; an environment without numpy fails the
model's load with a message naming both sides and what to install.

Outside CI the tests skip when no other Python exists; under CI (``CI=true``) they
fail instead.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import textwrap
import time
from typing import List

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration


PLURAL = """
import importlib.util
import sys

import inflection
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Plural(MLModel):
    def predict(self, payload):
        words = [w.decode() if isinstance(w, bytes) else w for w in payload.inputs[0].data]
        plural = [inflection.pluralize(w) for w in words]
        seen = ["twisted" if importlib.util.find_spec("twisted") else "-",
                "klein" if importlib.util.find_spec("klein") else "-"]
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="plural", shape=[len(plural)], datatype="BYTES", data=plural),
                ResponseOutput(name="python", shape=[1], datatype="BYTES", data=[platform_version()]),
                ResponseOutput(name="server_packages", shape=[2], datatype="BYTES", data=seen),
                ResponseOutput(name="numpy", shape=[1], datatype="BYTES", data=[np.__version__]),
            ],
        )

def platform_version():
    return "%d.%d.%d" % sys.version_info[:3]
"""


def write_model(root: str, name: str, settings: dict, source: str) -> str:
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model-settings.json"), "w") as f:
        json.dump({"name": name, **settings}, f)
    with open(os.path.join(path, "models.py"), "w") as f:
        f.write(textwrap.dedent(source))
    return path


def wait_settled(d: Daemon, names: List[str], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    states: dict = {}
    while time.monotonic() < deadline:
        status, index, _ = d.post("/v2/repository/index", {})
        if status == 200:
            states = {e["name"]: e for e in index}
            if all(states.get(n, {}).get("state") in ("READY", "UNAVAILABLE") and
                   states[n].get("reason") != "not loaded" for n in names):
                return states
        time.sleep(0.2)
    raise AssertionError(f"models did not settle: {states}\n{d.log()}")


def test_server_lacks_the_package():
    import importlib.util

    assert importlib.util.find_spec("inflection") is None, "the test needs a package the server does not have"


def test_tarball_environment_serves_and_is_reused(env_tarball, other_python, tmp_path):
    _, version = other_python
    models = str(tmp_path / "models")
    folder = write_model(
        models,
        "plural",
        {"implementation": "models.Plural", "parameters": {"environment_tarball": "env.tar.gz"}},
        PLURAL,
    )
    shutil.copy(env_tarball, os.path.join(folder, "env.tar.gz"))
    envs = str(tmp_path / "envs")
    body = {"inputs": [{"name": "words", "shape": [2], "datatype": "BYTES", "data": ["cat", "mouse"]}]}

    with Daemon(models, "--envs-dir", envs, grpc=False) as d:
        states = wait_settled(d, ["plural"])
        assert states["plural"]["state"] == "READY", states
        status, out, _ = d.post("/v2/models/plural/infer", body)
        assert status == 200, out
        outputs = {o["name"]: o["data"] for o in out["outputs"]}
        assert outputs["plural"] == ["cats", "mice"]
        assert tuple(int(p) for p in outputs["python"][0].split(".")[:2]) == version
        assert outputs["server_packages"] == ["-", "-"], "the child must not see the server's site-packages"

    unpacked = [e for e in os.listdir(envs) if not e.startswith(".")]
    assert len(unpacked) == 1
    first = os.stat(os.path.join(envs, unpacked[0]))

    with Daemon(models, "--envs-dir", envs) as d:
        assert wait_settled(d, ["plural"])["plural"]["state"] == "READY"
        status, out, _ = d.post("/v2/models/plural/infer", body)
        assert status == 200, out
        # no protobuf in this environment: the server decodes gRPC requests for it
        import numpy as np
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(d.grpc_address) as client:
            words = grpcclient.InferInput("words", [2], "BYTES")
            words.set_data_from_numpy(np.array([b"cat", b"mouse"], dtype=object))
            result = client.infer("plural", [words])
        assert [w.decode() for w in result.as_numpy("plural")] == ["cats", "mice"]
        assert "the server decodes its requests (no usable protobuf" in d.log()
    again = os.stat(os.path.join(envs, unpacked[0]))
    same = (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert same, "unpacked once, then reused"
    assert [e for e in os.listdir(envs) if e.startswith(".tmp")] == []


def test_environment_without_numpy_fails_with_a_clear_message(other_python, tmp_path):
    python, version = other_python
    env = str(tmp_path / "bare-env")
    subprocess.run([python, "-m", "venv", "--without-pip", env], check=True, timeout=300)
    models = str(tmp_path / "models")
    settings = {"implementation": "models.Plural", "parameters": {"environment_path": env}}
    write_model(models, "bare", settings, PLURAL)
    with Daemon(models, "--envs-dir", str(tmp_path / "envs"), grpc=False) as d:
        states = wait_settled(d, ["bare"])
        reason = states["bare"]["reason"]
        assert states["bare"]["state"] == "UNAVAILABLE"
        assert "numpy is not installed in the environment" in reason, reason
        assert "install numpy>=" in reason
        assert f"Python {version[0]}.{version[1]}" in reason, "names the environment's Python"
        assert f"Python {platform.python_version()}" in reason, "names the server's Python"
        status, out, _ = d.post("/v2/models/bare/infer", {"inputs": []})
        assert status == 503


def test_missing_base_python_of_a_venv_pack_archive_is_reported(env_tarball, tmp_path):
    """A venv-pack archive links to its base Python; if that is absent here, the error says so."""
    import tarfile

    broken = str(tmp_path / "moved.tar.gz")
    with tarfile.open(env_tarball) as src, tarfile.open(broken, "w:gz") as dst:
        for member in src.getmembers():
            if member.issym() and member.linkname.startswith("/"):
                member.linkname = "/nonexistent/python/bin/python3"
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    models = str(tmp_path / "models")
    folder = write_model(
        models,
        "moved",
        {"implementation": "models.Plural", "parameters": {"environment_tarball": "env.tgz"}},
        PLURAL,
    )
    shutil.move(broken, os.path.join(folder, "env.tgz"))
    with Daemon(models, "--envs-dir", str(tmp_path / "envs"), grpc=False) as d:
        states = wait_settled(d, ["moved"])
        reason = states["moved"]["reason"]
        assert states["moved"]["state"] == "UNAVAILABLE"
        assert "/nonexistent/python/bin/python3" in reason
        assert "conda-pack" in reason
