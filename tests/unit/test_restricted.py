"""Restricted API settings (v2d.restricted): parsing, groups of endpoints, the header check."""

from __future__ import annotations

import json

import pytest

from v2d.restricted import Restrictions, grpc_group, rest_group
from v2d.settings import Settings, SettingsError
from v2d.types import Parameters


def test_parse_groups_and_check_headers():
    r = Restrictions.parse(["model-repository,model-config:Admin-Key=s3cret", "inference:k=v"], "x")
    assert set(r.by_group) == {"model-repository", "model-config", "inference"}
    assert r.refusal("model-repository", {"admin-key": "s3cret"}) is None
    assert "model-repository" in r.refusal("model-repository", {"admin-key": "wrong"})
    assert r.refusal("model-repository", {}) is not None
    assert r.refusal("health", {}) is None
    assert r.refusal(None, {}) is None
    prefixes = ("", "triton-grpc-protocol-")
    assert r.refusal("inference", {"triton-grpc-protocol-k": "v"}, prefixes) is None
    assert r.refusal("inference", {"triton-grpc-protocol-k": "v"}) is not None


def test_comma_split_variable_reads_as_written():
    # V2D_HTTP_RESTRICTED_API=health,metadata:k=v arrives split at its commas
    r = Restrictions.parse(["health", "metadata:k=v"], "x")
    assert set(r.by_group) == {"health", "metadata"}
    assert not Restrictions.parse([], "x")


@pytest.mark.parametrize(
    "entries,fragment",
    [
        (["model-repository"], "GROUP"),
        (["nosuch:k=v"], "unknown group 'nosuch'"),
        (["model-repository:k="], "empty"),
        ([":k=v"], "names no group"),
        (["health:bad key=v"], "header name"),
        (["health:k=v", "health,metadata:k=w"], "more than one"),
    ],
)
def test_bad_restrictions_are_named(entries, fragment):
    with pytest.raises(ValueError, match="where") as info:
        Restrictions.parse(entries, "where")
    assert fragment in str(info.value)


def test_rest_and_grpc_groups():
    assert rest_group(b"/v2/repository/index") == "model-repository"
    assert rest_group(b"/v2/repository/models/m/load") == "model-repository"
    assert rest_group(b"/v2/models/m/infer") == "inference"
    assert rest_group(b"/v2/models/m/versions/1/infer_stream") == "inference"
    assert rest_group(b"/v2/models/m/config") == "model-config"
    assert rest_group(b"/v2/models/m/ready") == "health"
    assert rest_group(b"/v2/health/live") == "health"
    assert rest_group(b"/v2") == "metadata"
    assert rest_group(b"/v2/models/m/versions/2") == "metadata"
    assert rest_group(b"/metrics", b"/metrics") == "metrics"
    assert rest_group(b"/my-handler") == "custom"
    assert grpc_group("/inference.GRPCInferenceService/RepositoryModelLoad") == "model-repository"
    assert grpc_group("/inference.GRPCInferenceService/ModelStreamInfer") == "inference"
    assert grpc_group("/grpc.health.v1.Health/Check") == "health"
    assert grpc_group("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == "metadata"
    assert grpc_group("/other.Service/Method") is None


def test_settings_from_file_environment_and_errors(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"http_restricted_api": ["model-repository:k=v"]}))
    settings = Settings.load(str(config), environ={"V2D_GRPC_RESTRICTED_PROTOCOL": "health,metadata:k=v"})
    assert settings.http_restricted_api == ["model-repository:k=v"]
    assert settings.grpc_restricted_protocol == ["health", "metadata:k=v"]
    with pytest.raises(SettingsError, match="grpc_restricted_protocol"):
        Settings.load(None, environ={"V2D_GRPC_RESTRICTED_PROTOCOL": "nosuch:k=v"})
    with pytest.raises(SettingsError, match="grpc_tls_client_ca"):
        Settings.load(None, environ={"V2D_GRPC_TLS_CLIENT_CA": "ca.pem"})


def test_parameters_named_like_methods_neither_break_nor_hide():
    p = Parameters(get=1, dict=2, json=3, model_dump=4, to_dict=5, from_dict=6, content_type="np")
    assert p.get("get") == 1 and p.get("missing", "d") == "d"
    assert p.to_dict() == {
        "content_type": "np",
        "get": 1,
        "dict": 2,
        "json": 3,
        "model_dump": 4,
        "to_dict": 5,
        "from_dict": 6,
    }
    assert p.dict() == p.model_dump() == p.to_dict()
    assert json.loads(p.json())["json"] == 3
    assert "get" in p and list(p)[1] == "get"
    assert Parameters.from_dict({"a": 1}) == Parameters(a=1)
    p.get = 7
    assert p.get("get") == 7
    del p.get
    assert "get" not in p and callable(p.get)
