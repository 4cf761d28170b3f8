"""Unit tests of model environments: filtered, atomic, once-only unpacking of tarballs."""

from __future__ import annotations

import io
import os
import sys
import tarfile

import pytest

from v2d.env import MARKER, EnvironmentUnusable, environment_python, resolve_environment, unpack_tarball
from v2d.settings import ModelSettings


def _add_file(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _python_script() -> bytes:
    return f'#!/bin/sh\nexec {sys.executable} "$@"\n'.encode()


def make_tarball(path, build) -> str:
    with tarfile.open(str(path), "w:gz") as tar:
        build(tar)
    return str(path)


def prefix_env(tar: tarfile.TarFile) -> None:
    _add_file(tar, "bin/python3", _python_script(), 0o755)
    _add_file(tar, "lib/site-packages/mod.py", b"X = 1\n")


def test_plain_prefix_is_unpacked_under_its_hash_and_reused(tmp_path):
    tarball = make_tarball(tmp_path / "env.tar.gz", prefix_env)
    envs = tmp_path / "envs"
    env = unpack_tarball(tarball, str(envs))
    assert os.path.dirname(env.path) == str(envs)
    assert env.python == os.path.join(env.path, "bin", "python3")
    assert os.path.exists(os.path.join(env.path, MARKER))
    inode = os.stat(env.path).st_ino
    again = unpack_tarball(tarball, str(envs))
    assert again == env and os.stat(env.path).st_ino == inode
    assert [n for n in os.listdir(envs) if n.startswith(".tmp")] == []


def test_an_unpack_that_died_half_way_is_done_again(tmp_path):
    tarball = make_tarball(tmp_path / "env.tar.gz", prefix_env)
    envs = tmp_path / "envs"
    env = unpack_tarball(tarball, str(envs))
    os.unlink(os.path.join(env.path, MARKER))
    os.unlink(os.path.join(env.path, "lib", "site-packages", "mod.py"))
    again = unpack_tarball(tarball, str(envs))
    assert os.path.exists(os.path.join(again.path, "lib", "site-packages", "mod.py"))


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda t: _add_file(t, "/etc/evil", b"x"), "unsafe member name"),
        (lambda t: _add_file(t, "bin/../../evil", b"x"), "unsafe member name"),
        (lambda t: _add_link(t, "lib/evil", "/etc/passwd"), "points outside"),
        (lambda t: _add_link(t, "lib/evil", "../../etc"), "points outside"),
        (lambda t: _add_link(t, "lib/evil", "../../etc/passwd", tarfile.LNKTYPE), "points outside"),
        (lambda t: _add_link(t, "dev/null", "", tarfile.CHRTYPE), "device or FIFO"),
        (lambda t: _add_link(t, "fifo", "", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_unsafe_members_are_refused(tmp_path, build, words):
    def both(tar):
        prefix_env(tar)
        build(tar)

    tarball = make_tarball(tmp_path / "env.tar.gz", both)
    envs = tmp_path / "envs"
    with pytest.raises(EnvironmentUnusable, match=words):
        unpack_tarball(tarball, str(envs))
    assert [n for n in os.listdir(envs) if not n.startswith(".") or n.startswith(".tmp")] == []
    assert not (tmp_path / "evil").exists()


def test_links_inside_the_tree_are_kept(tmp_path):
    def build(tar):
        prefix_env(tar)
        _add_link(tar, "bin/python", "python3")
        _add_link(tar, "lib64", "lib")

    env = unpack_tarball(make_tarball(tmp_path / "env.tar.gz", build), str(tmp_path / "envs"))
    assert os.readlink(os.path.join(env.path, "bin", "python")) == "python3"
    assert os.path.exists(os.path.join(env.path, "lib64", "site-packages", "mod.py"))


def test_setuid_bits_are_dropped(tmp_path):
    def build(tar):
        prefix_env(tar)
        _add_file(tar, "bin/tool", b"#!/bin/sh\n", 0o4755)

    env = unpack_tarball(make_tarball(tmp_path / "env.tar.gz", build), str(tmp_path / "envs"))
    assert os.stat(os.path.join(env.path, "bin", "tool")).st_mode & 0o7777 == 0o755


def venv_pack_env(base: str):
    def build(tar):
        _add_file(tar, "pyvenv.cfg", f"home = {os.path.dirname(base)}\nversion = 3.99.0\n".encode())
        _add_link(tar, "bin/python", base)
        _add_link(tar, "bin/python3", "python")
        _add_file(tar, "lib/python3.99/site-packages/mod.py", b"X = 1\n")

    return build


def test_venv_pack_interpreter_links_are_made_again_when_the_base_exists(tmp_path):
    base = os.path.realpath(sys.executable)
    env = unpack_tarball(make_tarball(tmp_path / "env.tar.gz", venv_pack_env(base)), str(tmp_path / "envs"))
    assert env.kind == "venv"
    assert os.readlink(os.path.join(env.path, "bin", "python")) == base
    assert os.path.realpath(env.python) == base


def test_venv_pack_without_its_base_python_says_what_is_missing(tmp_path):
    base = str(tmp_path / "gone" / "bin" / "python3.99")
    tarball = make_tarball(tmp_path / "env.tar.gz", venv_pack_env(base))
    with pytest.raises(EnvironmentUnusable) as info:
        unpack_tarball(tarball, str(tmp_path / "envs"))
    message = str(info.value)
    assert base in message and "3.99.0" in message and "conda-pack" in message
    assert [n for n in os.listdir(tmp_path / "envs") if not n.startswith(".")] == []


def test_conda_pack_fix_up_runs_once_in_place(tmp_path):
    def build(tar):
        _add_file(tar, "conda-meta/history", b"")
        _add_file(tar, "bin/python", _python_script(), 0o755)
        script = (
            b"import os, sys\nhere = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[0])))\n"
            b"open(os.path.join(here, 'unpacked-at'), 'a').write(here + '\\n')\n"
        )
        _add_file(tar, "bin/conda-unpack", script, 0o755)

    tarball = make_tarball(tmp_path / "env.tar.gz", build)
    env = unpack_tarball(tarball, str(tmp_path / "envs"))
    assert env.kind == "conda-pack"
    unpack_tarball(tarball, str(tmp_path / "envs"))
    with open(os.path.join(env.path, "unpacked-at")) as f:
        assert f.read().splitlines() == [env.path], "run once, at the final location"


def test_failed_conda_unpack_leaves_nothing_behind(tmp_path):
    def build(tar):
        _add_file(tar, "conda-meta/history", b"")
        _add_file(tar, "bin/python", _python_script(), 0o755)
        _add_file(tar, "bin/conda-unpack", b"import sys\nsys.exit('prefix rewrite failed')\n", 0o755)

    with pytest.raises(EnvironmentUnusable, match="prefix rewrite failed"):
        unpack_tarball(make_tarball(tmp_path / "env.tar.gz", build), str(tmp_path / "envs"))
    assert [n for n in os.listdir(tmp_path / "envs") if not n.startswith(".")] == []


def test_not_a_tarball(tmp_path):
    bad = tmp_path / "env.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(EnvironmentUnusable, match="cannot be unpacked"):
        unpack_tarball(str(bad), str(tmp_path / "envs"))


def test_environment_path_relative_to_the_model_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "env" / "bin").mkdir(parents=True)
    python = folder / "env" / "bin" / "python3"
    python.write_bytes(_python_script())
    python.chmod(0o755)
    settings = ModelSettings(name="m", implementation="models.M", folder=str(folder))
    settings.parameters.environment_path = "env"
    env = resolve_environment(settings, str(tmp_path / "envs"))
    assert env is not None and env.python == str(python)
    assert resolve_environment(ModelSettings(name="m", folder=str(folder)), str(tmp_path / "envs")) is None


def test_environment_without_an_interpreter(tmp_path):
    (tmp_path / "env").mkdir()
    with pytest.raises(EnvironmentUnusable, match="no bin/python3 or bin/python"):
        environment_python(str(tmp_path / "env"))
    with pytest.raises(EnvironmentUnusable, match="no such folder"):
        environment_python(str(tmp_path / "missing"))


def test_venv_whose_home_is_gone(tmp_path):
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /nonexistent/python/bin\nversion = 3.10.1\n")
    with pytest.raises(EnvironmentUnusable, match="/nonexistent/python/bin.*3.10.1"):
        environment_python(str(env))
