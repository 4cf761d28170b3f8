"""
How v2d-build reads a runtime folder, and the errors it gives for one it cannot build.
"""

from __future__ import annotations

import json
import os

import pytest

from v2d.build import RuntimeFolderError, scan_runtime
from v2d.build._runtime import grpc_port, strports_tcp_port


def write(path, content) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


def model(folder, name=None, **extra) -> None:
    settings = {"implementation": "models.M", **extra}
    if name:
        settings["name"] = name
    write(os.path.join(str(folder), "model-settings.json"), settings)
    write(os.path.join(str(folder), "models.py"), "")


def test_models_below_the_folder(tmp_path):
    model(tmp_path / "a", "alpha")
    model(tmp_path / "nested" / "b")
    write(tmp_path / "requirements.txt", "humanize\n")
    write(tmp_path / "conda.yaml", "dependencies: []\n")
    runtime = scan_runtime(str(tmp_path))
    assert runtime.model_files == ("a/model-settings.json", "nested/b/model-settings.json")
    assert runtime.model_names == ("alpha", "b")
    assert not runtime.is_model_folder
    assert runtime.requirements == "requirements.txt"
    assert runtime.conda_file == "conda.yaml"
    assert runtime.image_models_path == "/opt/v2d/models"
    assert runtime.settings == {}


def test_the_folder_is_a_model(tmp_path):
    model(tmp_path / "greeter")
    runtime = scan_runtime(str(tmp_path / "greeter"))
    assert runtime.is_model_folder
    assert runtime.model_names == ("greeter",)
    assert runtime.image_models_path == "/opt/v2d/models/greeter"


def test_hidden_folders_and_environments_are_not_searched(tmp_path):
    model(tmp_path / "real")
    model(tmp_path / ".git" / "x")
    model(tmp_path / ".v2d-build" / "y")
    write(tmp_path / "real" / "env" / "pyvenv.cfg", "home = /usr/bin\n")
    model(tmp_path / "real" / "env" / "lib" / "z")
    assert scan_runtime(str(tmp_path)).model_names == ("real",)


def test_environment_tarballs_are_found(tmp_path):
    model(tmp_path / "m", parameters={"environment_tarball": "./environment.tar.gz"})
    write(tmp_path / "m" / "environment.tar.gz", "")
    assert scan_runtime(str(tmp_path)).environment_tarballs == ("m/environment.tar.gz",)


def test_missing_folder(tmp_path):
    with pytest.raises(RuntimeFolderError, match="no such folder"):
        scan_runtime(str(tmp_path / "nope"))


def test_no_runtime(tmp_path):
    write(tmp_path / "requirements.txt", "numpy\n")
    write(tmp_path / "models.py", "")
    with pytest.raises(RuntimeFolderError, match="no runtime found: no model-settings.json"):
        scan_runtime(str(tmp_path))


@pytest.mark.parametrize(
    "settings, message",
    [
        ("{not json", "invalid JSON"),
        ({"name": "x"}, "'implementation' is missing"),
        ({"implementation": "m.M", "inputs": [{"name": "x", "datatype": "F", "shape": [1]}]}, "datatype"),
    ],
)
def test_bad_model_settings(tmp_path, settings, message):
    write(tmp_path / "m" / "model-settings.json", settings)
    with pytest.raises(RuntimeFolderError, match=message) as info:
        scan_runtime(str(tmp_path))
    assert "m/model-settings.json" in str(info.value)


def test_same_model_twice(tmp_path):
    model(tmp_path / "a", "dup")
    model(tmp_path / "b", "dup")
    with pytest.raises(RuntimeFolderError, match=r"model 'dup' \(no version\) is also defined in a/"):
        scan_runtime(str(tmp_path))


def test_versions_of_one_model_are_fine(tmp_path):
    model(tmp_path / "v1", "m", versions=["1"])
    model(tmp_path / "v2", "m", versions=["2"])
    assert scan_runtime(str(tmp_path)).model_names == ("m",)


def test_missing_or_outside_tarball(tmp_path):
    model(tmp_path / "rt" / "m", parameters={"environment_tarball": "./env.tar.gz"})
    with pytest.raises(RuntimeFolderError, match="env.tar.gz not found"):
        scan_runtime(str(tmp_path / "rt"))
    write(tmp_path / "outside.tar.gz", "")
    model(tmp_path / "rt" / "m", parameters={"environment_tarball": "../../outside.tar.gz"})
    with pytest.raises(RuntimeFolderError, match="outside"):
        scan_runtime(str(tmp_path / "rt"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ("[1]", "must hold a JSON object"),
        ("{", "invalid JSON"),
        ({"server_nme": "x"}, "unknown field.*server_nme"),
        ({"workers": "many"}, "workers"),
    ],
)
def test_bad_settings_json(tmp_path, settings, message):
    model(tmp_path / "m")
    write(tmp_path / "settings.json", settings)
    with pytest.raises(RuntimeFolderError, match=message):
        scan_runtime(str(tmp_path))


@pytest.mark.parametrize(
    "description, port",
    [
        ("tcp:8080", 8080),
        ("tcp:port=9000:interface=127.0.0.1", 9000),
        ("tcp6:8081:interface=\\:\\:1", 8081),
        ("ssl:8443:privateKey=k.pem", 8443),
        ("8082", 8082),
        ("unix:/run/v2d.sock", None),
        ("systemd:domain=INET:index=0", None),
    ],
)
def test_strports_ports(description, port):
    assert strports_tcp_port(description) == port


@pytest.mark.parametrize(
    "address, port", [("0.0.0.0:8081", 8081), ("[::]:9000", 9000), ("none", None), (None, None), ("x", None)]
)
def test_grpc_ports(address, port):
    assert grpc_port(address) == port
