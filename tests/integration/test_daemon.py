"""
The daemon end to end: a real ``twistd v2d`` on loopback, called over real HTTP.

The runtimes here use only the public API (README): the advanced interface, decode_args,
headers, two models with the same module names, a broken model beside working ones,
unload/load through the repository API (picking up changed code), and a battery of
bad requests after which the server still serves.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.daemon import Daemon, free_port, http_json, twistd_command

pytestmark = pytest.mark.integration

ADVANCED = """
import numpy as np
from v2d import MLModel
from v2d.types import InferenceRequest, InferenceResponse, ResponseOutput

class Scale(MLModel):
    async def load(self):
        self.factor = float(self.settings.parameters.extra.get("factor", 2))
        return True

    def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = self.decode(payload.inputs[0], default_codec=None)
        x = np.asarray(payload.inputs[0].data)
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="y", shape=list(x.shape), datatype="FP64", data=x * self.factor)],
        )
"""

DECODE_ARGS = """
from typing import List, Optional
import numpy as np
from v2d import MLModel
from v2d.codecs import decode_args

class Joiner(MLModel):
    @decode_args
    async def predict(
        self, words: List[str], counts: np.ndarray, suffix: Optional[List[str]] = None
    ) -> List[str]:
        end = suffix[0] if suffix else ""
        return [w * int(c) + end for w, c in zip(words, counts.ravel())]
"""

HEADERS = """
from v2d import MLModel
from v2d.types import InferenceResponse, Parameters, ResponseOutput

class Headers(MLModel):
    def predict(self, payload):
        h = payload.parameters.headers
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="seen", shape=[1], datatype="BYTES", data=[h.get("X-Tenant", "")])],
            parameters=Parameters(headers={"X-Model-Says": "hello", "X-Echo-Tenant": h["x-tenant"],
                                           "Content-Type": "text/html", "Connection": "upgrade"}),
        )
"""

SAME_NAMES = """
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput
import helpers

class Which(MLModel):
    def predict(self, payload):
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="who", shape=[1], datatype="BYTES", data=[helpers.WHO])],
        )
"""

FAILING_PREDICT = """
from v2d import MLModel

class Fails(MLModel):
    def predict(self, payload):
        raise ValueError("the model cannot do that")
"""


def write_model(root, folder, settings, files):
    path = os.path.join(root, folder)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model-settings.json"), "w") as f:
        json.dump(settings, f)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("models"))
    write_model(
        root,
        "scale",
        {
            "name": "scale",
            "implementation": "models.Scale",
            "versions": ["1"],
            "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1]}],
            "parameters": {"version": "1", "extra": {"factor": 3}},
        },
        {"models.py": ADVANCED},
    )
    write_model(
        root, "joiner", {"name": "joiner", "implementation": "models.Joiner"}, {"models.py": DECODE_ARGS}
    )
    write_model(
        root, "headers", {"name": "headers", "implementation": "models.Headers"}, {"models.py": HEADERS}
    )
    write_model(
        root,
        "group/first",
        {"name": "first", "implementation": "models.Which"},
        {"models.py": SAME_NAMES, "helpers.py": "WHO = 'first'\n"},
    )
    write_model(
        root,
        "group/second",
        {"name": "second", "implementation": "models.Which"},
        {"models.py": SAME_NAMES, "helpers.py": "WHO = 'second'\n"},
    )
    write_model(
        root,
        "broken",
        {"name": "broken", "implementation": "models.Broken"},
        {"models.py": "raise ImportError('no module named missing_dependency')\n"},
    )
    write_model(
        root, "fails", {"name": "fails", "implementation": "models.Fails"}, {"models.py": FAILING_PREDICT}
    )
    os.makedirs(os.path.join(root, "invalid"))
    with open(os.path.join(root, "invalid", "model-settings.json"), "w") as f:
        f.write('{"name": "invalid", "max_batch_size": "lots"}')
    return root


@pytest.fixture(scope="module")
def daemon(models):
    with Daemon(models, "--max-body-size", str(1024 * 1024), grpc=False) as d:
        yield d


def infer(daemon, model, inputs, **kwargs):
    return daemon.post(f"/v2/models/{model}/infer", {"inputs": inputs, **kwargs})


def test_health_and_server_metadata(daemon):
    assert daemon.get("/v2/health/live")[0] == 200
    # A broken model keeps the server from being ready (strict readiness), but it serves.
    assert daemon.get("/v2/health/ready")[0] == 503
    status, meta, _ = daemon.get("/v2")
    assert status == 200
    assert meta["name"] == "v2d" and meta["version"]
    assert "model_repository" in meta["extensions"]


def test_model_metadata_and_readiness(daemon):
    status, meta, _ = daemon.get("/v2/models/scale")
    assert status == 200
    assert meta["name"] == "scale"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1]}]
    assert daemon.get("/v2/models/scale/versions/1")[0] == 200
    assert daemon.get("/v2/models/scale/versions/7")[0] == 404
    assert daemon.get("/v2/models/scale/ready")[1] == {"name": "scale", "ready": True}
    assert daemon.get("/v2/models/scale/versions/1/ready")[0] == 200
    assert daemon.get("/v2/models/nope/ready")[0] == 404


def test_advanced_interface(daemon):
    status, body, _ = infer(
        daemon, "scale", [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2.5, -1]}], id="req-1"
    )
    assert status == 200, body
    assert body["model_name"] == "scale"
    assert body["model_version"] == "1"
    assert body["id"] == "req-1"
    assert body["outputs"] == [{"name": "y", "shape": [3], "datatype": "FP64", "data": [3.0, 7.5, -3.0]}]
    status, body, _ = daemon.post(
        "/v2/models/scale/versions/1/infer",
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [2]}]},
    )
    assert status == 200 and body["outputs"][0]["data"] == [6.0]


def test_decode_args(daemon):
    inputs = [
        {"name": "words", "shape": [2], "datatype": "BYTES", "data": ["ab", "c"]},
        {"name": "counts", "shape": [2], "datatype": "INT32", "data": [2, 3]},
    ]
    status, body, _ = infer(daemon, "joiner", inputs)
    assert status == 200, body
    assert body["outputs"][0]["data"] == ["abab", "ccc"]
    inputs.append({"name": "suffix", "shape": [1], "datatype": "BYTES", "data": ["!"]})
    status, body, _ = infer(daemon, "joiner", inputs, outputs=[{"name": "joined"}])
    assert status == 200, body
    assert body["outputs"][0]["name"] == "joined"
    assert body["outputs"][0]["data"] == ["abab!", "ccc!"]
    status, body, _ = infer(daemon, "joiner", inputs[:1])
    assert status == 400 and "counts" in body["error"]


def test_headers_both_ways(daemon):
    status, body, headers = daemon.post(
        "/v2/models/headers/infer",
        {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["."]}]},
        headers={"X-Tenant": "acme", "Content-Type": "application/json"},
    )
    assert status == 200, body
    assert body["outputs"][0]["data"] == ["acme"]
    assert headers["X-Model-Says"] == "hello"
    assert headers["X-Echo-Tenant"] == "acme"
    # The server frames the body: a model cannot change its type or the connection.
    assert headers["Content-Type"] == "application/json"
    assert headers.get("Connection") != "upgrade"
    assert "parameters" not in body or "headers" not in body.get("parameters", {})


def test_two_models_with_the_same_module_names(daemon):
    for name in ("first", "second"):
        status, body, _ = infer(
            daemon, name, [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["."]}]
        )
        assert status == 200, body
        assert body["outputs"][0]["data"] == [name]


def test_broken_models_are_reported_and_others_serve(daemon):
    status, index, _ = daemon.post("/v2/repository/index", {})
    assert status == 200
    by_name = {e["name"]: e for e in index}
    assert by_name["broken"]["state"] == "UNAVAILABLE"
    assert "missing_dependency" in by_name["broken"]["reason"]
    assert by_name["invalid"]["state"] == "UNAVAILABLE"
    assert "max_batch_size" in by_name["invalid"]["reason"]
    assert by_name["scale"]["state"] == "READY"
    status, body, _ = infer(daemon, "broken", [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}])
    assert status == 503 and "missing_dependency" in body["error"]
    assert daemon.get("/v2/models/broken/ready")[1]["ready"] is False
    status, ready_only, _ = daemon.post("/v2/repository/index", {"ready": True})
    assert {e["name"] for e in ready_only} >= {"scale", "joiner", "first", "second"}
    assert "broken" not in {e["name"] for e in ready_only}


def test_runtime_failure_is_500_with_the_message(daemon):
    status, body, _ = infer(daemon, "fails", [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}])
    assert status == 500
    assert "the model cannot do that" in body["error"]


BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    (b"", 400, "empty"),
    (b'{"inputs": "x"}', 400, "inputs"),
    (b"{}", 400, "inputs is required"),
    (b'{"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]}', 400, "inputs[0].name"),
    (b'{"inputs": [{"name": "x", "datatype": "FP64", "data": [1]}]}', 400, "shape"),
    (b'{"inputs": [{"name": "x", "shape": [1], "data": [1]}]}', 400, "datatype"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}', 400, "FP128"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64"}]}', 400, "data"),
    (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2]}]}', 400, "shape [3]"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, "a"]}]}', 400, "non-numeric"),
    (
        b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [[1], [2, 3]]}]}',
        400,
        "input 'x'",
    ),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}', 400, "out of range"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}', 400, "integers"),
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP64", "data": [1]}]}', 400, "shape"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}', 400, "strings"),
    (b'{"id": 5, "inputs": []}', 400, "id"),
    (b'{"inputs": [], "parameters": []}', 400, "parameters"),
]


@pytest.mark.parametrize("body,status,fragment", BAD_REQUESTS)
def test_bad_requests_get_clear_errors(daemon, body, status, fragment):
    got, answer, headers = daemon.post(
        "/v2/models/scale/infer", body, headers={"Content-Type": "application/json"}
    )
    assert got == status, answer
    assert headers["Content-Type"] == "application/json"
    assert fragment in answer["error"]


def test_unknown_model_and_endpoint(daemon):
    status, body, _ = infer(daemon, "nope", [])
    assert status == 404 and "nope" in body["error"]
    status, body, _ = daemon.get("/v2/nothing/here")
    assert status == 404 and "error" in body
    status, body, _ = daemon.get("/v2/models/scale/infer")
    assert status == 405 and "error" in body


def test_oversized_body_is_refused_and_server_keeps_serving(daemon):
    big = (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [' + b"1," * 600_000 + b"1]}]}"
    )
    status, body, _ = daemon.post("/v2/models/scale/infer", big)
    assert status == 413
    assert "max_body_size" in body["error"]
    # Chunked bodies (no Content-Length) over the limit are refused too.
    with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=10) as s:
        s.sendall(b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        for _ in range(40):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        s.sendall(b"0\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    status, body, _ = infer(daemon, "scale", [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}])
    assert status == 200


def test_server_survives_a_burst_of_garbage(daemon):
    for payload in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00\xff" * 100,
        b'POST /v2/models/scale/infer HTTP/1.1\r\nContent-Length: 5\r\n\r\n{"in',
    ):
        with socket.create_connection(("127.0.0.1", daemon.http_port), timeout=5) as s:
            s.sendall(payload)
            try:
                s.recv(1024)
            except OSError:
                pass
    assert daemon.get("/v2/health/live")[0] == 200


def test_unload_then_load_picks_up_changed_code(models, daemon):
    folder = os.path.join(models, "group", "first")
    assert daemon.post("/v2/repository/models/first/unload", {})[0] == 200
    status, body, _ = infer(
        daemon, "first", [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["."]}]
    )
    assert status == 503
    index = {e["name"]: e for e in daemon.post("/v2/repository/index", {})[1]}
    assert index["first"]["state"] == "UNAVAILABLE"
    with open(os.path.join(folder, "helpers.py"), "w") as f:
        f.write("WHO = 'first, changed'\n")
    status, body, _ = daemon.post("/v2/repository/models/first/load", {})
    assert status == 200, body
    status, body, _ = infer(
        daemon, "first", [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["."]}]
    )
    assert body["outputs"][0]["data"] == ["first, changed"]
    # The other model with the same module names is untouched.
    status, body, _ = infer(
        daemon, "second", [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["."]}]
    )
    assert body["outputs"][0]["data"] == ["second"]
    # Loading while serving (a reload) swaps in the new code.
    with open(os.path.join(folder, "helpers.py"), "w") as f:
        f.write("WHO = 'first, again'\n")
    assert daemon.post("/v2/repository/models/first/load", {})[0] == 200
    status, body, _ = infer(
        daemon, "first", [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["."]}]
    )
    assert body["outputs"][0]["data"] == ["first, again"]


def test_repository_errors(daemon):
    status, body, _ = daemon.post("/v2/repository/models/nope/load", {})
    assert status == 404 and "nope" in body["error"]
    status, body, _ = daemon.post("/v2/repository/models/nope/unload", {})
    assert status == 404
    status, body, _ = daemon.post("/v2/repository/models/broken/load", {})
    assert status == 400 and "missing_dependency" in body["error"]


def test_settings_precedence_and_python_m_twisted(tmp_path, models):
    """settings.json < V2D_* < command line, and ``python -m twisted v2d`` works."""
    port_file, port_cli = free_port(), free_port()
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps(
            {
                "rest": [f"tcp:{port_file}:interface=127.0.0.1"],
                "grpc": "none",
                "server_name": "from-file",
                "models": str(models),
            }
        )
    )
    env = {"V2D_SERVER_NAME": "from-env", "V2D_CONFIG": str(config)}
    # `python -m twisted` takes no twistd options (-n, --pidfile, --logfile).
    argv = [
        sys.executable,
        "-m",
        "twisted",
        "v2d",
        "--config",
        str(config),
        "--rest",
        f"tcp:{port_cli}:interface=127.0.0.1",
    ]
    with Daemon(models, env=env, grpc=False, argv=argv) as d:
        assert d.http_port == port_cli
        status, meta, _ = d.get("/v2")
        assert status == 200
        assert meta["name"] == "from-env"
        # The command line's --rest wins over settings.json's.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port_file), timeout=2).close()


def test_bad_options_fail_clearly(tmp_path):
    bad = subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "v2d", "--workers", "-3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "workers" in (bad.stdout + bad.stderr)
    config = tmp_path / "settings.json"
    config.write_text('{"workers": "many"}')
    bad = subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "v2d", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "workers" in (bad.stdout + bad.stderr)
    assert "Traceback" not in (bad.stdout + bad.stderr)


def test_sigterm_stops_cleanly(models):
    d = Daemon(models, grpc=False).start()
    started = time.monotonic()
    # twistd ends by re-raising the signal it stopped on, after a clean shutdown.
    assert d.stop() in (0, -15)
    assert time.monotonic() - started < 30
    assert "stopped" in d.log()
    os.unlink(d.logfile)


def test_reactor_conflict_is_a_clear_error(models):
    out = subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "--reactor=poll", "v2d", "--models", models],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "asyncio reactor" in (out.stdout + out.stderr)


def test_json_http_helper_sanity():
    assert http_json  # the helper module is importable for other suites


def test_metrics(daemon):
    infer(daemon, "scale", [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}])
    infer(daemon, "fails", [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}])
    status, text, headers = daemon.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = text.decode()
    assert 'model_infer_request_success_total{model="scale",version="1"}' in text
    assert 'model_infer_request_failure_total{kind="INTERNAL",model="fails",version=""}' in text
    assert "model_infer_request_duration_seconds_bucket" in text
    assert "v2d_requests_in_flight" in text


def test_a_daemon_that_cannot_listen_exits_non_zero(models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            twistd_command()
            + [
                "-n",
                "--pidfile=",
                "v2d",
                "--models",
                models,
                "--grpc",
                "none",
                "--rest",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert "failed to start" in out.stdout + out.stderr
