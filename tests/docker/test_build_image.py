"""
``v2d-build`` against a real Docker engine: build an image of a small runtime whose
``requirements.txt`` names a package the base image lacks, run it as an arbitrary UID
in group 0 (OpenShift style), call it over REST, override embedded settings with
environment variables, watch its health check and stop it with SIGTERM.

The engine and the local base image come from tests/support/docker_engine.py (Docker
Hub is not reachable, so the base is a debootstrapped bookworm). Containers publish
their ports on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from typing import Any, Dict, Iterator

import pytest

from tests.docker.images import Container, build_args, ready_containers, v2d_build
from tests.support.daemon import http_json
from tests.support.docker_engine import base_image, docker_client, docker_host

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

#: A small pure-Python package that neither the base image nor v2d brings.
EXTRA_PACKAGE = "humanize"

MODEL_CODE = '''
"""A greeter that formats numbers with a package from requirements.txt."""

import humanize

from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput


class Greeter(MLModel):
    async def load(self):
        self.greeting = self.settings.parameters.extra.get("greeting", "?")
        self.ready = True
        return True

    async def predict(self, payload):
        numbers = payload.inputs[0].data
        if hasattr(numbers, "tolist"):
            numbers = numbers.tolist()
        texts = [f"{self.greeting} {humanize.intcomma(int(n))}" for n in numbers]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="text", shape=[len(texts)], datatype="BYTES", data=texts)],
        )
'''

MODEL_SETTINGS = {
    "name": "greeter",
    "implementation": "models.Greeter",
    "inputs": [{"name": "n", "datatype": "INT64", "shape": [-1]}],
    "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "parameters": {"extra": {"greeting": "hello"}},
}

INFER_BODY = {"inputs": [{"name": "n", "shape": [2], "datatype": "INT64", "data": [1234567, 42]}]}


def write_runtime(folder: str, requirements: str = EXTRA_PACKAGE + "\n") -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump(MODEL_SETTINGS, f)
    with open(os.path.join(folder, "models.py"), "w") as f:
        f.write(MODEL_CODE)
    with open(os.path.join(folder, "requirements.txt"), "w") as f:
        f.write(requirements)
    with open(os.path.join(folder, "settings.json"), "w") as f:
        json.dump({"server_name": "embedded-name", "workers": 0}, f)
    return folder


@pytest.fixture(scope="module")
def engine() -> Any:
    return docker_client()


@pytest.fixture(scope="module")
def base(engine) -> str:
    return base_image(engine)


@pytest.fixture(scope="module")
def image(engine, base, tmp_path_factory) -> Iterator[str]:
    folder = write_runtime(str(tmp_path_factory.mktemp("build") / "greeter"))
    tag = f"v2d-test-greeter:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = v2d_build([folder, "-t", tag, *build_args(base)], docker_host())
    assert result.returncode == 0, f"v2d-build failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    print(f"built {tag} in {time.monotonic() - started:.1f}s; {result.stderr.splitlines()[0]}")
    assert f"built {tag}" in result.stdout
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture
def container(engine, image) -> Iterator[Any]:
    yield from ready_containers(engine, image)


def test_the_base_image_lacks_the_extra_package(engine, base):
    import docker

    with pytest.raises(docker.errors.ContainerError):
        engine.containers.run(base, ["python3", "-c", f"import {EXTRA_PACKAGE}"], remove=True)


def test_inference_as_an_arbitrary_uid(container):
    c = container()
    status, body, _ = http_json("POST", c.url + "/v2/models/greeter/infer", INFER_BODY)
    assert status == 200, body
    assert body["outputs"][0]["data"] == ["hello 1,234,567", "hello 42"]
    status, meta, _ = http_json("GET", c.url + "/v2")
    assert status == 200 and meta["name"] == "embedded-name"
    code, out = c.container.exec_run(["sh", "-c", "id -u; id -g; touch /opt/v2d/envs/probe && echo writable"])
    assert code == 0 and out.decode().split() == ["12345", "0", "writable"]
    # twistd runs in the foreground as PID 1 and logs to stdout
    code, out = c.container.exec_run(["cat", "/proc/1/cmdline"])
    argv = out.split(b"\0")
    assert b"/opt/v2d/venv/bin/twistd" in argv[:2] and b"v2d" in argv, argv
    assert "model greeter ready" in c.container.logs(stdout=True, stderr=False).decode()


def test_grpc_port_serves(container):
    grpc_client = pytest.importorskip("tritonclient.grpc")
    c = container()
    client = grpc_client.InferenceServerClient(c.grpc_address)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("greeter")
        assert client.get_server_metadata().name == "embedded-name"
    finally:
        client.close()


def test_environment_variables_override_embedded_settings(container):
    c = container(
        {
            "V2D_SERVER_NAME": "from-the-environment",
            "V2D_MODEL_PARAMETERS": '{"extra": {"greeting": "bonjour"}}',
        }
    )
    status, meta, _ = http_json("GET", c.url + "/v2")
    assert status == 200 and meta["name"] == "from-the-environment"
    status, body, _ = http_json("POST", c.url + "/v2/models/greeter/infer", INFER_BODY)
    assert status == 200, body
    assert body["outputs"][0]["data"][0] == "bonjour 1,234,567"


def test_health_check_and_graceful_sigterm(container):
    # The image's health check, run every second (the image itself says every 15s).
    c = container(healthcheck={"interval": 1_000_000_000, "start_period": 1_000_000_000})
    deadline = time.monotonic() + 60
    health: Dict[str, Any] = {}
    while time.monotonic() < deadline:
        c.container.reload()
        health = c.container.attrs["State"].get("Health") or {}
        if health.get("Status") == "healthy":
            break
        time.sleep(0.5)
    assert health.get("Status") == "healthy", health
    assert "answered 200" in health["Log"][-1]["Output"]
    started = time.monotonic()
    c.container.stop(timeout=30)
    took = time.monotonic() - started
    c.container.reload()
    assert c.container.attrs["State"]["ExitCode"] == 0, c.logs()
    assert took < 20, f"SIGTERM took {took:.1f}s: the server did not stop on its own"
    logs = c.logs()
    assert "Server Shut Down" in logs, logs


@pytest.mark.parametrize("builder", ["auto", "classic"])
def test_a_failing_build_step_shows_the_log_tail(engine, base, tmp_path, builder):
    folder = write_runtime(str(tmp_path / "broken"), requirements="v2d-test-no-such-package==0.0.1\n")
    tag = f"v2d-test-broken:{uuid.uuid4().hex[:8]}"
    result = v2d_build([folder, "-t", tag, "--builder", builder, *build_args(base)], docker_host())
    assert result.returncode == 1
    assert "v2d-build: error: the image build failed" in result.stderr
    error = result.stderr[result.stderr.index("v2d-build: error:") :]
    assert "failing step:" in error and "pip install" in error
    assert "last lines of the build log:" in error
    assert "v2d-test-no-such-package" in error
    assert "Traceback" not in result.stderr


def test_dockerfile_only_builds_with_the_classic_builder(engine, base, tmp_path):
    folder = write_runtime(str(tmp_path / "greeter"))
    result = v2d_build([folder, "--dockerfile-only", *build_args(base)], docker_host())
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(os.path.join(folder, "Dockerfile"))
    tag = f"v2d-test-dockerfile-only:{uuid.uuid4().hex[:8]}"
    # docker's own client-side context (honouring the written .dockerignore), classic builder
    engine.images.build(path=folder, tag=tag, rm=True, forcerm=True)
    try:
        c = Container(engine, tag)
        try:
            c.wait_ready()
            status, body, _ = http_json("POST", c.url + "/v2/models/greeter/infer", INFER_BODY)
            assert status == 200 and body["outputs"][0]["data"][1] == "hello 42"
            code, out = c.container.exec_run(["ls", "-A", "/opt/v2d/models/greeter"])
            listing = out.decode().split()
            assert ".v2d-build" not in listing and "Dockerfile" not in listing
            assert "models.py" in listing
        finally:
            c.remove()
    finally:
        engine.images.remove(tag, force=True)
        shutil.rmtree(folder, ignore_errors=True)
