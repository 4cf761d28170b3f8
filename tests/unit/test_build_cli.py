"""
The ``v2d-build`` command line: options and the errors a user sees. No image is built
here (tests/docker/ does that); "no engine" is real: DOCKER_HOST names a socket that
does not exist.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from v2d.build import cli
from v2d.build._engine import BuildFailed, _failed_step


def run(argv, monkeypatch=None, env=None):
    if monkeypatch is not None:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def model_dir(tmp_path) -> str:
    folder = tmp_path / "greeter"
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps({"implementation": "models.Greeter"}))
    (folder / "models.py").write_text("")
    return str(folder)


def test_dockerfile_only(model_dir):
    code, out, err = run([model_dir, "--dockerfile-only", "--base-image", "base:1", "--build-arg", "A=1"])
    assert code == 0, err
    assert f"wrote {os.path.join(model_dir, 'Dockerfile')}" in out
    with open(os.path.join(model_dir, "Dockerfile")) as f:
        dockerfile = f.read()
    assert "ARG BASE_IMAGE=base:1" in dockerfile and "\nARG A\n" in dockerfile
    assert "/opt/v2d/models/greeter/" in dockerfile


def test_tag_is_required_to_build(model_dir, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([model_dir])
    assert info.value.code == 2
    assert "-t/--tag is required" in capsys.readouterr().err


def test_no_runtime(tmp_path):
    code, _, err = run([str(tmp_path), "-t", "x:1"])
    assert code == 1
    assert "v2d-build: error:" in err and "no runtime found" in err


def test_bad_build_arg(model_dir):
    code, _, err = run([model_dir, "--dockerfile-only", "--build-arg", "NOVALUE"])
    assert code == 1 and "expected KEY=VALUE" in err


def test_no_engine_reachable(model_dir, tmp_path, monkeypatch):
    socket_path = str(tmp_path / "no-such-docker.sock")
    code, _, err = run([model_dir, "-t", "x:1"], monkeypatch, {"DOCKER_HOST": "unix://" + socket_path})
    assert code == 1
    assert f"cannot reach a Docker engine at unix://{socket_path}" in err
    assert "set DOCKER_HOST" in err
    assert "Traceback" not in err


def test_failed_build_message_shows_step_and_tail():
    error = BuildFailed("the image build failed: pip said no\nfailing step: RUN pip install", ["a", "b"])
    text = str(error)
    assert text.splitlines()[-2:] == ["  | a", "  | b"]
    assert "failing step: RUN pip install" in text


@pytest.mark.parametrize(
    "lines, step",
    [
        (["Step 1/3 : FROM x", "Step 2/3 : RUN false", " ---> Running in 1"], "Step 2/3 : RUN false"),
        (["#5 [build 2/8] RUN python3 -m venv /v", "#5 ERROR: exit code: 1"], "RUN python3 -m venv /v"),
        (["nothing"], None),
    ],
)
def test_failed_step_from_either_builder_log(lines, step):
    assert _failed_step(lines) == step


def test_build_log_lines_lose_colour_codes_and_blanks():
    from v2d.build._engine import _log_lines

    assert _log_lines("\x1b[91mERROR: no\n\x1b[0m\n\n ---> x\n") == ["ERROR: no", " ---> x"]
