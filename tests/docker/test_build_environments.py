"""
A model with its own environment tarball, inside an image made by ``v2d-build``.

The environment is made the way a user targets an image: in a container of the image's
base (so its interpreter, ``/usr/bin/python3``, exists in the image too), with numpy
and ``inflection`` (which neither the base nor the server has), packed with venv-pack.
The image runs as an arbitrary UID in group 0, so unpacking into the image's
environments folder proves that folder is writable for such a user.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from typing import Any, Iterator

import pytest

from tests.docker.images import Container, build_args, host_ca_bundle, v2d_build
from tests.support.daemon import http_json
from tests.support.docker_engine import base_image, docker_client, docker_host

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

PLURAL = """
import importlib.util

import inflection
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput


class Plural(MLModel):
    def predict(self, payload):
        words = [w.decode() if isinstance(w, bytes) else w for w in payload.inputs[0].data]
        plural = [inflection.pluralize(w) for w in words]
        seen = "twisted" if importlib.util.find_spec("twisted") else "-"
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="plural", shape=[len(plural)], datatype="BYTES", data=plural),
                ResponseOutput(name="server_packages", shape=[1], datatype="BYTES", data=[seen]),
                ResponseOutput(name="numpy", shape=[1], datatype="BYTES", data=[np.__version__]),
            ],
        )
"""


@pytest.fixture(scope="module")
def engine() -> Any:
    return docker_client()


@pytest.fixture(scope="module")
def base(engine) -> str:
    return base_image(engine)


@pytest.fixture(scope="module")
def environment_tarball(engine, base, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("env-out"))
    volumes = {out: {"bind": "/out", "mode": "rw"}}
    env = {}
    cert = host_ca_bundle()
    if cert:
        volumes[cert] = {"bind": "/ca.pem", "mode": "ro"}
        env["PIP_CERT"] = "/ca.pem"
    script = (
        "set -e; python3 -m venv /env;"
        " /env/bin/pip install -q --disable-pip-version-check numpy inflection venv-pack;"
        " /env/bin/venv-pack -q -p /env -o /out/environment.tar.gz"
    )
    engine.containers.run(base, ["sh", "-c", script], volumes=volumes, environment=env, remove=True)
    path = os.path.join(out, "environment.tar.gz")
    assert os.path.getsize(path) > 1_000_000
    return path


@pytest.fixture(scope="module")
def image(engine, base, environment_tarball, tmp_path_factory) -> Iterator[str]:
    root = str(tmp_path_factory.mktemp("envs-runtime") / "models")
    folder = os.path.join(root, "plural")
    os.makedirs(folder)
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump(
            {
                "name": "plural",
                "implementation": "models.Plural",
                "parameters": {"environment_tarball": "./environment.tar.gz"},
            },
            f,
        )
    with open(os.path.join(folder, "models.py"), "w") as f:
        f.write(textwrap.dedent(PLURAL))
    os.link(environment_tarball, os.path.join(folder, "environment.tar.gz"))
    tag = f"v2d-test-envs:{uuid.uuid4().hex[:8]}"
    result = v2d_build([root, "-t", tag, *build_args(base)], docker_host())
    assert result.returncode == 0, f"v2d-build failed:\n{result.stderr[-6000:]}"
    yield tag
    engine.images.remove(tag, force=True)


def test_environment_tarball_serves_inside_the_image(engine, image):
    c = Container(engine, image)
    try:
        c.wait_ready(timeout=180)
        body = {"inputs": [{"name": "words", "shape": [2], "datatype": "BYTES", "data": ["cat", "mouse"]}]}
        status, out, _ = http_json("POST", c.url + "/v2/models/plural/infer", body, timeout=60)
        assert status == 200, f"{out}\n{c.logs()}"
        outputs = {o["name"]: o["data"] for o in out["outputs"]}
        assert outputs["plural"] == ["cats", "mice"]
        assert outputs["server_packages"] == ["-"], "the worker must not see the server's site-packages"
        code, listing = c.container.exec_run(["ls", "-A", "/opt/v2d/envs"], user="12345:0")
        assert code == 0
        unpacked = [e for e in listing.decode().split() if not e.startswith(".")]
        assert len(unpacked) == 1, listing
    finally:
        c.remove()
