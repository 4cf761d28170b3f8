"""Server and model settings: precedence, environment overrides, errors naming fields."""

from __future__ import annotations

import json

import pytest

from v2d.settings import ModelSettings, Settings, SettingsError


def test_defaults():
    s = Settings.load(environ={})
    assert s.rest == ["tcp:8080"] and s.grpc == "0.0.0.0:8081" and s.workers == 0


def test_precedence_file_env_command_line(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"workers": 1, "server_name": "file", "grpc": "127.0.0.1:1"}))
    env = {"V2D_WORKERS": "2", "V2D_SERVER_NAME": "env"}
    s = Settings.load(str(config), env, {"workers": 3})
    assert (s.workers, s.server_name, s.grpc) == (3, "env", "127.0.0.1:1")
    s = Settings.load(None, {**env, "V2D_CONFIG": str(config), "V2D_GRPC": "none"})
    assert (s.workers, s.grpc) == (2, None)


def test_rest_endpoints_from_env():
    assert Settings.load(environ={"V2D_REST": "tcp:1,unix:/tmp/x"}).rest == ["tcp:1", "unix:/tmp/x"]
    assert Settings.load(environ={"V2D_REST": '["tcp:2"]'}).rest == ["tcp:2"]


@pytest.mark.parametrize(
    "doc,fragment",
    [
        ({"workers": "many"}, "'workers'"),
        ({"nope": 1}, "unknown field 'nope'"),
        ({"workers": -1}, "'workers'"),
        ({"grpc_tls_cert": "c"}, "go together"),
    ],
)
def test_settings_errors(tmp_path, doc, fragment):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(doc))
    with pytest.raises(SettingsError, match=fragment):
        Settings.load(str(config), {})


def test_model_settings(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "implementation": "models.X",
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [-1, 3], "parameters": {"content_type": "np"}}
                ],
                "parameters": {"version": "2", "uri": "./w.bin", "custom": 1},
                "warm_workers": True,
                "surprise": 1,
            }
        )
    )
    s = ModelSettings.from_file(str(folder / "model-settings.json"))
    assert s.name == "my-model" and s.version == "2"
    assert s.inputs[0].parameters.content_type == "np"
    assert s.parameters.extra == {"custom": 1}
    assert s.unknown_fields == ["surprise"]
    assert s.warm_workers is True  # MLServer's field, accepted
    assert s.parameters.uri == str(folder / "w.bin")  # a relative uri is made absolute


def test_model_settings_environment_overrides(tmp_path):
    path = tmp_path / "model-settings.json"
    path.write_text(
        json.dumps({"name": "a", "implementation": "m.X", "parameters": {"uri": "u", "version": "1"}})
    )
    env = {"V2D_MODEL_NAME": "b", "V2D_MODEL_MAX_BATCH_SIZE": "8", "V2D_MODEL_PARAMETERS": '{"version": "9"}'}
    s = ModelSettings.from_file(str(path), env)
    assert (s.name, s.max_batch_size, s.version, s.parameters.uri) == ("b", 8, "9", str(tmp_path / "u"))


@pytest.mark.parametrize(
    "doc,fragment",
    [
        ({"name": "a", "inputs": [{"name": "x", "datatype": "F", "shape": [1]}]}, "inputs[0].datatype"),
        ({"name": "a", "inputs": [{"name": "x", "datatype": "FP32"}]}, "inputs[0].shape"),
        ({"name": "a", "max_batch_size": "x"}, "'max_batch_size'"),
        ({"name": "a", "parameters": []}, "'parameters'"),
        ({"name": "a", "versions": "1"}, "'versions'"),
    ],
)
def test_model_settings_errors(doc, fragment):
    with pytest.raises(SettingsError) as info:
        ModelSettings.from_dict(doc)
    assert fragment in str(info.value)
