"""
``v2d-build --generic`` against a real Docker engine: an image with no model baked in,
run as KServe runs it. The model folder is mounted read-only at /mnt/models, the
container runs as an arbitrary UID in group 0 on a read-only root file system with a
tmpfs /tmp (as the Kubernetes manifests ask), and gets the ServingRuntime's own args
and env from packaging/kubernetes/servingruntime.yaml ({{.Name}} filled in as KServe
does). It is called over REST and gRPC on ports published on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import pytest

from tests.docker.images import Container, build_args, ready_containers, v2d_build
from tests.support.daemon import http_json
from tests.support.docker_engine import base_image, docker_client, docker_host

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_MODEL = ROOT / "examples" / "models" / "numpy-add"
MANIFESTS = ROOT / "packaging" / "kubernetes"
#: What KServe puts in place of {{.Name}}: the InferenceService's name.
ISVC_NAME = "my-model"
INFER_BODY = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}


def readable_copy(source: Path, target: Path, settings: Dict[str, Any] = None) -> Path:
    """A copy of a model folder that any UID may read (the container's is not root)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    if settings:
        path = target / "model-settings.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **settings}))
    for folder, _, files in os.walk(target):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    return target


def manifest_container(name: str) -> Tuple[List[str], Dict[str, str], List[str]]:
    """
    A manifest's container: its args and env, templated as KServe does, and the paths
    where it mounts emptyDirs (tmpfs in the test).
    """
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((MANIFESTS / name).read_text())
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    container = spec["containers"][0]
    args = [a.replace("{{.Name}}", ISVC_NAME) for a in container.get("args", [])]
    env = {e["name"]: e["value"].replace("{{.Name}}", ISVC_NAME) for e in container.get("env", [])}
    empty = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    scratch = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty]
    return args, env, scratch


@pytest.fixture(scope="module")
def engine() -> Any:
    return docker_client()


@pytest.fixture(scope="module")
def image(engine, tmp_path_factory) -> Iterator[str]:
    base = base_image(engine)
    tag = f"v2d-test-generic:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = v2d_build(["--generic", "-t", tag, *build_args(base)], docker_host())
    assert result.returncode == 0, f"v2d-build failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    print(f"built {tag} in {time.monotonic() - started:.1f}s; {result.stderr.splitlines()[0]}")
    assert "serving what is mounted at /mnt/models" in result.stderr.splitlines()[0]
    yield tag
    engine.images.remove(tag, force=True)


@pytest.fixture
def run(engine, image) -> Iterator[Any]:
    """Start a container as KServe would: ``run(models folder, args, env, **ports)``."""
    containers = ready_containers(engine, image)
    start = next(containers)

    def run_mounted(
        models: Path, args: List[str], env: Dict[str, str], scratch: Sequence[str] = ("/tmp",), **ports: int
    ) -> Container:
        return start(
            env,
            command=args,
            volumes={str(models): {"bind": "/mnt/models", "mode": "ro"}},
            read_only=True,
            tmpfs={path: "rw,mode=1777" for path in scratch},
            **ports,
        )

    yield run_mounted
    next(containers, None)


def test_no_model_is_baked_in(engine, image):
    labels = engine.images.get(image).labels
    assert labels["io.v2d.models-dir"] == "/mnt/models" and "io.v2d.models" not in labels
    out = engine.containers.run(
        image, entrypoint=["ls", "-A", "/opt/v2d/models"], user="12345:0", remove=True
    )
    assert out.decode().split() == []


def test_served_as_the_serving_runtime_says(run, tmp_path):
    args, env, _ = manifest_container("servingruntime.yaml")
    assert any(a.startswith("--model_name") for a in args), args
    model = readable_copy(EXAMPLE_MODEL, tmp_path / "numpy-add")
    c = run(model, args, env)
    status, body, _ = http_json("POST", f"{c.url}/v2/models/{ISVC_NAME}/infer", INFER_BODY)
    assert status == 200, body
    assert body["model_name"] == ISVC_NAME
    assert body["outputs"][0]["data"] == [2.0, 3.0, 4.0]
    assert http_json("GET", f"{c.url}/v2/models/numpy-add/ready")[0] == 404
    grpc_client = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    client = grpc_client.InferenceServerClient(c.grpc_address)
    try:
        assert client.is_model_ready(ISVC_NAME)
        x = grpc_client.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
        result = client.infer(ISVC_NAME, [x])
        assert result.as_numpy("y").tolist() == [[2.0, 3.0, 4.0]]
    finally:
        client.close()
    # the arbitrary UID, the read-only mount, twistd as PID 1 (the entrypoint exec'd it)
    code, out = c.container.exec_run(["sh", "-c", "id -u; id -g; touch /mnt/models/x 2>/dev/null || echo ro"])
    assert code == 0 and out.decode().split() == ["12345", "0", "ro"]
    code, out = c.container.exec_run(["cat", "/proc/1/cmdline"])
    argv = out.split(b"\0")
    # (the kernel runs twistd's script through its interpreter: "python twistd ...")
    assert b"/opt/v2d/venv/bin/twistd" in argv[:2] and b"v2d.build.kserve" not in argv, argv
    options = [a.decode() for a in argv[argv.index(b"v2d") + 1 :] if a]
    assert options == ["--rest", "tcp:8080", "--grpc", "0.0.0.0:8081", "--models", "/mnt/models"], argv


def test_served_as_the_deployment_says(run, tmp_path):
    args, env, scratch = manifest_container("deployment.yaml")
    model = readable_copy(EXAMPLE_MODEL, tmp_path / "numpy-add")
    c = run(model, args, env, scratch)
    status, body, _ = http_json("POST", f"{c.url}/v2/models/numpy-add/infer", INFER_BODY)
    assert status == 200, body
    assert body["outputs"][0]["data"] == [2.0, 3.0, 4.0]
    grpc_client = pytest.importorskip("tritonclient.grpc")
    client = grpc_client.InferenceServerClient(c.grpc_address)
    try:
        assert client.is_model_ready("numpy-add")
    finally:
        client.close()


def test_a_folder_of_model_folders_on_other_ports(run, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    os.chmod(models, 0o755)
    readable_copy(EXAMPLE_MODEL, models / "numpy-add")
    readable_copy(
        EXAMPLE_MODEL, models / "plus-ten", {"name": "plus-ten", "parameters": {"extra": {"offset": 10.0}}}
    )
    # KServe's flags in their space-separated form; --model_name names a single model
    # only, so with two mounted each keeps its own name.
    args = ["--model_name", ISVC_NAME, "--http_port", "9090", "--grpc_port", "9091"]
    c = run(models, args, {"HOME": "/tmp"}, rest_port=9090, grpc_port=9091)
    for name, first in (("numpy-add", 2.0), ("plus-ten", 11.0)):
        status, body, _ = http_json("POST", f"{c.url}/v2/models/{name}/infer", INFER_BODY)
        assert status == 200, body
        assert body["outputs"][0]["data"][0] == first
    grpc_client = pytest.importorskip("tritonclient.grpc")
    client = grpc_client.InferenceServerClient(c.grpc_address)
    try:
        assert client.is_model_ready("plus-ten") and client.is_model_ready("numpy-add")
    finally:
        client.close()


def test_a_bad_kserve_flag_is_one_line_and_status_1(engine, image, tmp_path):
    container = engine.containers.run(image, ["--http_port", "http"], user="12345:0", detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 1
        logs = container.logs().decode().strip()
        assert logs == "v2d: --http_port must be a port number (1-65535), got 'http'"
    finally:
        container.remove(force=True)
