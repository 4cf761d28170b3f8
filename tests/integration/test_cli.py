"""
The ``v2d`` command through real processes: ``v2d init`` writes a folder that a real
``twistd v2d`` serves, and ``v2d infer`` calls it; errors are one line, exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.daemon import Daemon, package_root

pytestmark = pytest.mark.integration


def v2d(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=package_root())
    return subprocess.run([sys.executable, "-m", "v2d", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)


def test_init_then_serve_then_infer(tmp_path):
    models = tmp_path / "models"
    done = v2d("init", str(models / "adder"))
    assert done.returncode == 0, done.stderr
    written = sorted(os.listdir(models / "adder"))
    assert written == ["README.md", "model-settings.json", "models.py", "request.json"]
    with Daemon(str(models), grpc=False) as d:
        done = v2d("infer", "adder", "--input", str(models / "adder" / "request.json"), "--url", d.url)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["model_name"] == "adder"
        assert answer["outputs"][0]["name"] == "y" and answer["outputs"][0]["data"] == [6.0, 15.0]
        one = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]}
        done = v2d("infer", "adder", "-i", "-", "-u", d.url, stdin=json.dumps(one))
        assert json.loads(done.stdout)["outputs"][0]["data"] == [2.0]
        wrong = {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}
        bad = v2d("infer", "adder", "-i", "-", "-u", d.url, stdin=json.dumps(wrong))
        assert bad.returncode == 1 and bad.stderr.startswith("v2d infer: 400 from ") and "nope" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
        missing = v2d("infer", "nobody", "-i", str(models / "adder" / "request.json"), "-u", d.url)
        assert missing.returncode == 1 and "404" in missing.stderr


def test_errors_are_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "models.py").write_text("")
    again = v2d("init", str(tmp_path / "m"))
    assert again.returncode == 1 and again.stderr.strip() == (
        f"v2d init: {tmp_path / 'm'} already has models.py; nothing written"
    )
    (tmp_path / "r.json").write_text("{")
    bad = v2d("infer", "m", "-i", str(tmp_path / "r.json"))
    assert bad.returncode == 1 and bad.stderr.startswith(f"v2d infer: {tmp_path / 'r.json'} is not JSON")
    down = v2d("infer", "m", "-i", "-", "-u", "http://127.0.0.1:9", stdin='{"inputs": []}')
    assert down.returncode == 1 and down.stderr.startswith("v2d infer: cannot reach http://127.0.0.1:9")
    assert v2d("--version").stdout.startswith("v2d ")
    assert "init" in v2d("--help").stdout and "infer" in v2d("--help").stdout
