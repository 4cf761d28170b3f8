"""
MLServer's settings.json through a real ``twistd v2d``: started in a folder that holds
settings.json and a model (as ``mlserver start .``), it serves on the ports the file
names, with a separate metrics listener, CORS and root_path; ``MLSERVER_*`` variables;
a file with fields v2d cannot honour ends the command with exactly v2d's lines.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from tests.support.daemon import Daemon, free_port, http_json, twistd_command

pytestmark = pytest.mark.integration

RUNTIME = """
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Double(MLModel):
    def predict(self, payload):
        inp = payload.inputs[0]
        data = [2 * x for x in inp.data]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="y", shape=inp.shape, datatype=inp.datatype, data=data)],
        )
"""

INFER = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}


def model_folder(root, name="double"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model-settings.json").write_text(json.dumps({"name": name, "implementation": "models.Double"}))
    (folder / "models.py").write_text(textwrap.dedent(RUNTIME))
    return folder


def twistd_v2d(*args):
    return twistd_command() + ["-n", "--pidfile=", "--logfile=-", "v2d", *args]


def run_v2d(folder, *args):
    """``twistd -n v2d ARGS`` run to its end in ``folder``: the completed process, output kept apart."""
    env = Daemon(str(folder)).env
    return subprocess.run(
        twistd_v2d(*args), cwd=str(folder), capture_output=True, text=True, timeout=120, env=env
    )


def mlserver_daemon(folder, settings, env=None, *args):
    """A daemon started in ``folder`` with no --models: it reads ``folder/settings.json``."""
    (folder / "settings.json").write_text(json.dumps(settings))
    daemon = Daemon(str(folder), cwd=str(folder), argv=twistd_v2d(*args), env=env)
    daemon.http_port = settings.get("http_port", daemon.http_port)
    return daemon


def test_mlserver_settings_in_the_working_directory(tmp_path):
    model_folder(tmp_path)
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    settings = {
        # the fields of MLServer's documented and tested settings.json files
        "debug": True,
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc_port,
        "metrics_port": metrics,
        "parallel_workers": 0,
        "gzip_enabled": False,
        "server_name": "mlserver",
        "server_version": "1.7.1",
        "extensions": [],
        "root_path": "/ml",
        "cors_settings": {"allow_origins": ["https://app.example"], "allow_methods": ["GET", "POST"]},
    }
    with mlserver_daemon(tmp_path, settings) as daemon:
        assert daemon.get("/v2")[:2] == (200, {"name": "mlserver", "version": "1.7.1", "extensions": []})
        # the model under "." (the repository search is recursive)
        for prefix in ("", "/ml"):
            status, body, _ = daemon.post(prefix + "/v2/models/double/infer", INFER)
            assert status == 200 and body["outputs"][0]["data"] == [2, 4], prefix

        # gRPC on grpc_port, with the same server metadata
        import grpc

        from v2d.grpc._messages import SERVICE_NAME, pb

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            meta = channel.unary_unary(
                f"/{SERVICE_NAME}/ServerMetadata",
                request_serializer=pb.ServerMetadataRequest.SerializeToString,
                response_deserializer=pb.ServerMetadataResponse.FromString,
            )(pb.ServerMetadataRequest(), timeout=30)
        assert (meta.name, meta.version, list(meta.extensions)) == ("mlserver", "1.7.1", [])

        # metrics on their own port, as MLServer; not on the REST one
        status, body, headers = http_json("GET", f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b'model_infer_request_success_total{model="double",version=""} 2.0' in body
        assert daemon.get("/metrics")[0] == 404

        # CORS: a preflight, then the request itself
        status, body, headers = http_json(
            "OPTIONS",
            daemon.url + "/v2/models/double/infer",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert (status, body) == (200, b"OK")
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert headers["Access-Control-Allow-Methods"] == "GET, POST"
        assert headers["Access-Control-Max-Age"] == "600"
        status, body, headers = http_json(
            "OPTIONS",
            daemon.url + "/v2/models/double/infer",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"},
        )
        assert (status, body) == (400, b"Disallowed CORS origin, method")
        status, _, headers = daemon.post(
            "/v2/models/double/infer", INFER, headers={"Origin": "https://app.example"}
        )
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert headers["Vary"] == "Origin"

        log = daemon.log()
        assert "as mlserver start would" in log
        assert '"POST /v2/models/double/infer HTTP/1.1" 200' in log  # debug: every request is logged


def test_models_not_loaded_at_startup_and_mlserver_variables(tmp_path):
    root = tmp_path / "repo"
    model_folder(root)
    http = free_port()
    env = {
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_GRPC_PORT": str(free_port()),
    }
    settings = {"load_models_at_startup": False, "model_repository_root": "repo", "http_port": 1}
    daemon = mlserver_daemon(tmp_path, settings, env)
    daemon.http_port = http  # the variable wins over the file
    with daemon:
        assert daemon.get("/v2/health/ready")[0] == 200  # as MLServer: every loaded model (none) is ready
        assert daemon.post("/v2/repository/index", {})[1] == [
            {"name": "double", "state": "UNAVAILABLE", "reason": "not loaded"}
        ]
        assert daemon.post("/v2/models/double/infer", INFER)[0] == 404
        assert daemon.post("/v2/repository/models/double/load", {})[0] == 200
        status, body, _ = daemon.post("/v2/models/double/infer", INFER)
        assert status == 200 and body["outputs"][0]["data"] == [2, 4]


def test_metrics_option_and_metrics_off(tmp_path):
    model_folder(tmp_path / "models")
    metrics = free_port()
    with Daemon(
        str(tmp_path / "models"), "--metrics", f"tcp:{metrics}:interface=127.0.0.1", grpc=False
    ) as daemon:
        assert http_json("GET", f"http://127.0.0.1:{metrics}/metrics")[0] == 200
        assert http_json("GET", f"http://127.0.0.1:{metrics}/v2/health/live")[0] == 404
        assert daemon.get("/metrics")[0] == 404
    with Daemon(str(tmp_path / "models"), "--metrics-path", "none", grpc=False) as daemon:
        assert daemon.get("/metrics")[0] == 404
        assert daemon.post("/v2/models/double/infer", INFER)[0] == 200


def test_unsupported_fields_end_with_exact_lines(tmp_path):
    (tmp_path / "settings.json").write_text(
        json.dumps(
            {
                "http_port": 8080,
                "kafka_enabled": True,
                "tracing_server": "collector:4317",
                "cache_enabled": True,
                "model_repository_implementation": "my.Repository",
                "cache_size": 10,
                "metrics_dir": "/tmp/anything",
                "gzip_enabled": True,
                "htpp_port": 8080,
            }
        )
    )
    done = run_v2d(tmp_path, "--config", "settings.json")
    assert (done.returncode, done.stdout) == (1, "")
    field = "v2d: settings.json: field"
    assert done.stderr.splitlines() == [
        f"{field} 'kafka_enabled' = true is not supported: v2d has no Kafka server; send requests over REST "
        "or gRPC (e.g. a consumer that posts to /v2/models/{name}/infer), and remove the field",
        f"{field} 'tracing_server' = \"collector:4317\" is not supported: v2d does not export OpenTelemetry "
        "traces; remove the field (request counts and latencies are on /metrics)",
        f"{field} 'cache_enabled' = true is not supported: v2d has no response cache; remove the field "
        "(or cache in front of the server)",
        f"{field} 'model_repository_implementation' = \"my.Repository\" is not supported: v2d finds models "
        "itself (every folder holding model-settings.json under models); put each model in such a folder "
        "and remove the field",
        "v2d: settings.json: unknown field 'htpp_port': neither a v2d nor an MLServer setting (did you mean "
        "'http_port'?); remove it",
    ]


def test_bad_option_ends_without_usage_text(tmp_path):
    done = run_v2d(tmp_path, "--workers", "many")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        "v2d: --workers must be a whole number, 0 or more, got 'many' (twistd v2d --help lists the options)"
    ]
