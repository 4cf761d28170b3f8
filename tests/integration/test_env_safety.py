"""
A model whose environment tarball tries to write outside the environments folder fails
to load with the reason, touches nothing outside, and the server keeps serving.
"""

from __future__ import annotations

import os
import tarfile

import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import ECHO, write_model
from tests.unit.test_env_safety import _issue_chain, _snapshot

pytestmark = pytest.mark.integration

def test_malicious_environment_tarball_fails_its_model_only(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious\n")
    os.chmod(outside / "victim.txt", 0o600)
    os.utime(outside / "victim.txt", (1_000_000_000, 1_000_000_000))
    before = _snapshot(str(outside))
    models = str(tmp_path / "models")
    write_model(models, "echo", "models.Echo", ECHO)
    tarball = {"environment_tarball": "env.tar.gz"}
    evil = str(write_model(models, "evil", "models.Echo", ECHO, parameters=tarball))
    with tarfile.open(os.path.join(evil, "env.tar.gz"), "w:gz") as tar:
        _issue_chain(tar)
    # the chain of links resolves to the folder holding the environments folder
    envs = str(tmp_path / "envs")
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}

    with Daemon(models, "--envs-dir", envs, grpc=False) as d:
        status, index, _ = d.post("/v2/repository/index", {})
        states = {e["name"]: e for e in index}
        assert states["echo"]["state"] == "READY", states
        assert states["evil"]["state"] == "UNAVAILABLE", states
        assert "member 'a/b' lies under 'a', which is a link" in states["evil"]["reason"]
        status, out, _ = d.post("/v2/models/echo/infer", body)
        assert status == 200 and out["outputs"][0]["data"] == [1, 2]
        status, out, _ = d.post("/v2/models/evil/infer", body)
        assert status in (400, 503) and "evil" in out["error"], out
        assert d.get("/v2/health/live")[0] == 200

    assert _snapshot(str(outside)) == before
    assert sorted(os.listdir(tmp_path)) == ["envs", "models", "outside"]
    assert [n for n in os.listdir(envs) if not n.endswith(".lock")] == []
