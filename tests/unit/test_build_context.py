"""
The build context v2d-build sends (a tar) and the files ``--dockerfile-only`` writes.
"""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from v2d.build import (
    RuntimeFolderError,
    context_tar,
    prepare_build_files,
    scan_runtime,
    write_build_files,
)


@pytest.fixture
def runtime_dir(tmp_path) -> str:
    root = tmp_path / "rt"
    (root / "m" / "__pycache__").mkdir(parents=True)
    (root / "m" / "model-settings.json").write_text(json.dumps({"name": "m", "implementation": "models.M"}))
    (root / "m" / "models.py").write_text("")
    (root / "m" / "models.py").chmod(0o640)
    (root / "m" / "__pycache__" / "models.cpython-311.pyc").write_bytes(b"")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / "data").mkdir()
    (root / "data" / "big.ckpt").write_text("x")
    (root / "settings.json").write_text(json.dumps({"server_name": "embedded"}))
    (root / ".dockerignore").write_text("**/*.ckpt\n")
    (root / "Dockerfile").write_text("FROM scratch\n")
    return str(root)


def files_for(root, **kwargs):
    return prepare_build_files(scan_runtime(root), base_image="base:1", **kwargs)


def test_context_tar_holds_the_folder_and_the_support_files(runtime_dir, tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    files = files_for(runtime_dir, pip_cert=str(cert))
    with context_tar(scan_runtime(runtime_dir), files) as f, tarfile.open(fileobj=f) as tar:
        members = {m.name: m for m in tar.getmembers()}
        dockerfile = tar.extractfile("Dockerfile").read().decode()
        settings = json.loads(tar.extractfile(".v2d-build/settings.json").read())
        assert tar.extractfile(".v2d-build/pip-cert.pem").read() == cert.read_bytes()
    assert dockerfile == files.dockerfile, "the folder's own Dockerfile is replaced"
    assert "ARG BASE_IMAGE=base:1" in dockerfile
    assert settings == {"server_name": "embedded", "models": "/opt/v2d/models", "envs_dir": "/opt/v2d/envs"}
    assert "m/models.py" in members and "m/model-settings.json" in members
    assert any(n.startswith(".v2d-build/v2d-") and n.endswith(".whl") for n in members)
    for excluded in ("m/__pycache__/models.cpython-311.pyc", ".git/HEAD", "data/big.ckpt"):
        assert excluded not in members
    for member in members.values():
        assert member.uid == 0 and member.gid == 0 and member.uname == ""
        # group rights equal the owner's, for OpenShift's arbitrary UIDs in group 0
        assert (member.mode >> 3) & 0o7 == (member.mode >> 6) & 0o7, member.name
    assert members["m/models.py"].mode & 0o777 == 0o660


def test_context_tar_without_cert(runtime_dir):
    files = files_for(runtime_dir)
    with context_tar(scan_runtime(runtime_dir), files) as f, tarfile.open(fileobj=f) as tar:
        assert ".v2d-build/pip-cert.pem" not in tar.getnames()


def test_missing_cert_is_a_clear_error(runtime_dir, tmp_path):
    with pytest.raises(RuntimeFolderError, match="--pip-cert .*nope.pem"):
        files_for(runtime_dir, pip_cert=str(tmp_path / "nope.pem"))


def test_a_given_wheel_is_used(runtime_dir, tmp_path):
    wheel = tmp_path / "v2d-9.9.9-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    files = files_for(runtime_dir, v2d_wheel=str(wheel))
    assert files.support["v2d-9.9.9-py3-none-any.whl"] == b"PK"
    assert "pip install /tmp/v2d-build/v2d-9.9.9-py3-none-any.whl" in files.dockerfile
    with pytest.raises(RuntimeFolderError, match="not a v2d wheel"):
        files_for(runtime_dir, v2d_wheel=str(tmp_path / "other.whl"))


def test_dockerfile_only_refuses_a_foreign_dockerfile(runtime_dir):
    runtime = scan_runtime(runtime_dir)
    with pytest.raises(RuntimeFolderError, match="not written by v2d-build; remove it or pass --force"):
        write_build_files(runtime, files_for(runtime_dir))
    with open(os.path.join(runtime_dir, "Dockerfile")) as f:
        assert f.read() == "FROM scratch\n"


def test_dockerfile_only_writes_and_rewrites(runtime_dir):
    runtime = scan_runtime(runtime_dir)
    written = write_build_files(runtime, files_for(runtime_dir), force=True)
    names = sorted(os.path.relpath(p, runtime_dir) for p in written)
    assert names[:2] == [".dockerignore", ".v2d-build/settings.json"]
    assert names[2].startswith(".v2d-build/v2d-") and names[3] == "Dockerfile"
    with open(os.path.join(runtime_dir, ".dockerignore")) as f:
        ignore = f.read().splitlines()
    assert ignore[-1] == "**/*.ckpt", "the folder's own patterns are kept"
    # a second run overwrites its own files without --force and keeps the user's patterns once
    stale = os.path.join(runtime_dir, ".v2d-build", "stale.txt")
    open(stale, "w").close()
    write_build_files(scan_runtime(runtime_dir), files_for(runtime_dir))
    with open(os.path.join(runtime_dir, ".dockerignore")) as f:
        assert f.read().splitlines().count("**/*.ckpt") == 1
    assert not os.path.exists(stale)
    # the written files do not make the folder look different to the next scan
    assert scan_runtime(runtime_dir).model_files == ("m/model-settings.json",)
