"""
Restricted APIs and TLS through a real daemon: the repository API behind a header
(REST 403, gRPC PERMISSION_DENIED without it), set by option, environment and
settings.json; gRPC with mutual TLS (real certificates, real clients with and without
a client certificate); REST over TLS with ``--rest ssl:...``.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import grpc
import pytest

from tests.support.certs import make_pki
from tests.support.daemon import Daemon, free_port, http_json
from tests.support.model_folder import ECHO, write_model

pytestmark = pytest.mark.integration


ADMIN = {"admin-key": "s3cret"}
INFER = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}


class AdminDaemon(Daemon):
    """A daemon whose own start-up checks carry the admin header."""

    def post(self, path, body=None, **kwargs):
        headers = dict(ADMIN)
        headers.update(kwargs.pop("headers", None) or {})
        return http_json("POST", self.url + path, body, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_model(root, "echo", "models.Echo", ECHO)
    return root


def _grpc(channel, method, request):
    from v2d.grpc._messages import SERVICE_NAME, pb

    call = channel.unary_unary(
        f"/{SERVICE_NAME}/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=getattr(pb, method + "Response").FromString,
    )
    return call


def _infer_message():
    from v2d.grpc._messages import pb

    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="INT64", shape=[2]).contents.int64_contents.extend([1, 2])
    return request


def _code(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def test_repository_api_restricted_on_both_transports(models):
    from v2d.grpc._messages import pb

    env = {"V2D_GRPC_RESTRICTED_PROTOCOL": "model-repository,model-config:admin-key=s3cret"}
    with AdminDaemon(str(models), "--http-restricted-api", "model-repository:admin-key=s3cret", env=env) as d:
        # REST: the repository API needs the header; inference and health do not
        status, body, _ = http_json("POST", d.url + "/v2/repository/index", {})
        assert status == 403 and "model-repository" in body["error"]
        for path in ("/v2/repository/models/echo/unload", "/v2/repository/models/echo/load"):
            status, body, _ = http_json("POST", d.url + path, {})
            assert status == 403, (path, body)
        index_url = d.url + "/v2/repository/index"
        status, body, _ = http_json("POST", index_url, {}, headers={"admin-key": "wrong"})
        assert status == 403
        status, body, _ = http_json("POST", index_url, {}, headers={"Admin-Key": "s3cret"})
        assert status == 200 and body[0]["name"] == "echo"
        assert http_json("POST", d.url + "/v2/models/echo/infer", INFER)[0] == 200
        assert http_json("GET", d.url + "/v2/health/ready")[0] == 200
        assert http_json("GET", d.url + "/v2/models/echo/config")[0] == 200  # not restricted on REST
        status, _, _ = http_json("POST", d.url + "/v2/repository/models/echo/unload", {}, headers=ADMIN)
        assert status == 200
        status, _, _ = http_json("POST", d.url + "/v2/repository/models/echo/load", {}, headers=ADMIN)
        assert status == 200

        # gRPC: repository and model-config calls need the metadata (either spelling)
        with grpc.insecure_channel(d.grpc_address) as channel:
            index = _grpc(channel, "RepositoryIndex", pb.RepositoryIndexRequest())
            code, details = _code(index, pb.RepositoryIndexRequest())
            assert code == grpc.StatusCode.PERMISSION_DENIED and "model-repository" in details
            code, _ = _code(index, pb.RepositoryIndexRequest(), metadata=(("admin-key", "nope"),))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            answer = index(pb.RepositoryIndexRequest(), metadata=(("admin-key", "s3cret"),))
            assert answer.models[0].name == "echo"
            triton_style = (("triton-grpc-protocol-admin-key", "s3cret"),)
            assert index(pb.RepositoryIndexRequest(), metadata=triton_style).models
            for method, request in (
                ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name="echo")),
                ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="echo")),
                ("ModelConfig", pb.ModelConfigRequest(name="echo")),
            ):
                code, _ = _code(_grpc(channel, method, request), request)
                assert code == grpc.StatusCode.PERMISSION_DENIED, method
            config = _grpc(channel, "ModelConfig", pb.ModelConfigRequest(name="echo"))
            assert config(pb.ModelConfigRequest(name="echo"), metadata=(("admin-key", "s3cret"),)).config.name
            infer = _grpc(channel, "ModelInfer", _infer_message())
            assert list(infer(_infer_message()).outputs[0].contents.int64_contents) == [1, 2]
            # streams are inference: open here
            stream_code = _code(
                lambda: list(
                    channel.stream_stream(
                        "/inference.GRPCInferenceService/ModelStreamInfer",
                        request_serializer=pb.ModelInferRequest.SerializeToString,
                        response_deserializer=pb.ModelStreamInferResponse.FromString,
                    )(iter([_infer_message()]))
                )
            )
            assert stream_code[0] == grpc.StatusCode.OK


def test_restrictions_from_settings_json_and_streams(tmp_path, models):
    from v2d.grpc._messages import pb

    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps(
            {
                "http_restricted_api": ["inference,model-repository:x-api-key=abc"],
                "grpc_restricted_protocol": ["inference:x-api-key=abc"],
            }
        )
    )

    class KeyDaemon(Daemon):
        def post(self, path, body=None, **kwargs):
            return http_json("POST", self.url + path, body, headers={"x-api-key": "abc"}, **kwargs)

    with KeyDaemon(str(models), "--config", str(config)) as d:
        infer_url = d.url + "/v2/models/echo/infer"
        assert http_json("POST", infer_url, INFER)[0] == 403
        assert http_json("POST", infer_url, INFER, headers={"x-api-key": "abc"})[0] == 200
        assert http_json("GET", d.url + "/v2/models/echo")[0] == 200
        with grpc.insecure_channel(d.grpc_address) as channel:
            stream = channel.stream_stream(
                "/inference.GRPCInferenceService/ModelStreamInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            code, _ = _code(lambda: list(stream(iter([_infer_message()]))))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            index = _grpc(channel, "RepositoryIndex", pb.RepositoryIndexRequest())
            assert index(pb.RepositoryIndexRequest()).models  # not restricted on gRPC here


def test_bad_restriction_settings_fail_at_start(models):
    flag = "--http-restricted-api"
    for bad in (
        ("model-repository",),
        ("nosuch:k=v",),
        ("model-repository:k=",),
        ("model-repository:bad key=v",),
        ("health:k=v", flag, "health,metadata:k=w"),
    ):
        d = Daemon(str(models), flag, *bad)
        try:
            d.start(wait=False)
            assert d.process.wait(60) != 0
            assert "http_restricted_api" in d.log(), d.log()
        finally:
            d.stop()


def test_grpc_mutual_tls(tmp_path, models):
    from v2d.grpc._messages import pb

    pki = make_pki(tmp_path / "pki")
    args = (
        "--grpc-tls-cert",
        str(pki["server"]["cert"]),
        "--grpc-tls-key",
        str(pki["server"]["key"]),
        "--grpc-tls-client-ca",
        str(pki["ca"]["cert"]),
    )
    ca = pki["ca"]["cert"].read_bytes()

    def credentials(who=None):
        if who is None:
            return grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki[who]["key"].read_bytes(),
            certificate_chain=pki[who]["cert"].read_bytes(),
        )

    with Daemon(str(models), *args) as d:
        assert "client certificates required" in d.log()
        with grpc.secure_channel(d.grpc_address, credentials("client")) as channel:
            infer = _grpc(channel, "ModelInfer", _infer_message())
            assert list(infer(_infer_message(), timeout=10).outputs[0].contents.int64_contents) == [1, 2]
        for who in (None, "stranger"):
            with grpc.secure_channel(d.grpc_address, credentials(who)) as channel:
                code, _ = _code(_grpc(channel, "ModelInfer", _infer_message()), _infer_message(), timeout=10)
                assert code == grpc.StatusCode.UNAVAILABLE, who
        with grpc.insecure_channel(d.grpc_address) as channel:
            code, _ = _code(_grpc(channel, "ModelInfer", _infer_message()), _infer_message(), timeout=10)
            assert code == grpc.StatusCode.UNAVAILABLE
        # the server is still fine for a trusted client afterwards
        with grpc.secure_channel(d.grpc_address, credentials("client")) as channel:
            ready = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerReady",
                request_serializer=pb.ServerReadyRequest.SerializeToString,
                response_deserializer=pb.ServerReadyResponse.FromString,
            )
            assert ready(pb.ServerReadyRequest(), timeout=10).ready


def test_grpc_client_ca_needs_tls(models):
    d = Daemon(str(models), "--grpc-tls-client-ca", "ca.pem")
    d.start(wait=False)
    assert d.process.wait(60) != 0
    assert "grpc_tls_client_ca" in d.log()


def test_rest_over_tls(tmp_path, models):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    endpoint = (
        f"ssl:{port}:interface=127.0.0.1:privateKey={pki['server']['key']}:certKey={pki['server']['cert']}"
    )
    with Daemon(str(models), "--rest", endpoint) as d:
        context = ssl.create_default_context(cafile=str(pki["ca"]["cert"]))
        req = urllib.request.Request(
            f"https://127.0.0.1:{port}/v2/models/echo/infer",
            data=json.dumps(INFER).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["outputs"][0]["data"] == [1, 2]
        with pytest.raises(urllib.error.URLError):  # the server's CA is not a public one
            urllib.request.urlopen(
                f"https://127.0.0.1:{port}/v2/health/live", context=ssl.create_default_context(), timeout=10
            )
        assert d.get("/v2/health/live")[0] == 200
