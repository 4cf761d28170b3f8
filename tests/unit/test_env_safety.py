"""
Environment tarballs built to write outside the environments folder are refused, and
leave everything outside exactly as it was (content, mode, owner, mtime, entries).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from tests.unit.test_env import _add_file, _add_link, make_tarball, prefix_env
from v2d.env import EnvironmentUnusable, remove_stale_temporaries, unpack_tarball


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _chain(tar: tarfile.TarFile) -> None:
    """``c`` resolves to the folder holding the environments folder, through links that each look inside."""
    _add_link(tar, "p", ".")
    _add_link(tar, "b", "p/..")
    _add_link(tar, "c", "b/..")


def _issue_chain(tar: tarfile.TarFile) -> None:
    """The archive of the report: a link written through a link, then a hard link through the chain."""
    _add_link(tar, "a", ".")
    _add_link(tar, "a/b", "..")
    _add_link(tar, "c", "b/..")
    _hard_link(tar)


def _hard_link_chain(tar: tarfile.TarFile) -> None:
    _chain(tar)
    _hard_link(tar)


def _hard_link(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("hl")
    info.type = tarfile.LNKTYPE
    info.linkname = "c/outside/victim.txt"
    info.mode = 0o755
    info.uid = info.gid = 65534
    info.mtime = 1
    tar.addfile(info)


def _interpreter_through_link(tar: tarfile.TarFile) -> None:
    _chain(tar)
    _add_link(tar, "bin", "c/outside/binx")
    _add_link(tar, "bin/python3", os.path.realpath(sys.executable))


def _file_through_link(tar: tarfile.TarFile) -> None:
    _add_link(tar, "d", "e/..")
    _add_link(tar, "e", "f")
    _add_dir(tar, "f")
    _add_file(tar, "d/outside/new.txt", b"owned")


def _late_link_makes_a_chain(tar: tarfile.TarFile) -> None:
    """``x -> y/..`` looks inside when written; ``y -> z/..`` ... only the final tree tells."""
    _add_link(tar, "x", "y/../outside")
    _add_link(tar, "y", "w/..")
    _add_link(tar, "w", "q/..")
    _add_link(tar, "q", "x/..")


def _link_up_then_folder(tar: tarfile.TarFile) -> None:
    _chain(tar)
    _add_dir(tar, "c/outside/newdir")


def _hard_link_to_a_link(tar: tarfile.TarFile) -> None:
    _chain(tar)
    _add_link(tar, "v", "c/outside/victim.txt")
    info = tarfile.TarInfo("hl")
    info.type = tarfile.LNKTYPE
    info.linkname = "v"
    tar.addfile(info)


def _parent_escape(tar: tarfile.TarFile) -> None:
    prefix_env(tar)
    _add_link(tar, "lib/up", "../..")


def _snapshot(root: str) -> dict:
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            data = b""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    data = f.read()
            state[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, data)
    return state


@pytest.fixture
def decoy(tmp_path):
    """An ``outside`` folder beside the environments folder, holding a victim file."""
    outside = tmp_path / "outside"
    (outside / "binx").mkdir(parents=True)
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o600)
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    before = (_snapshot(str(tmp_path)), sorted(os.listdir(tmp_path)))
    yield tmp_path
    envs = str(tmp_path / "envs")
    after_snapshot = {k: v for k, v in _snapshot(str(tmp_path)).items() if not k.startswith(envs)}
    before_snapshot = {k: v for k, v in before[0].items() if not k.startswith(envs)}
    assert after_snapshot == before_snapshot
    assert sorted(os.listdir(tmp_path)) in (before[1], sorted(before[1] + ["envs"]))


MALICIOUS = [
    (_issue_chain, "member 'a/b' lies under 'a', which is a link"),
    (_hard_link_chain, "lies under 'c', which is a link"),
    (_interpreter_through_link, "link 'b' points outside the environment"),
    (_file_through_link, "lies under 'd', which is a link"),
    (_late_link_makes_a_chain, "points outside the environment"),
    (_link_up_then_folder, "lies under 'c', which is a link"),
    (_hard_link_to_a_link, "which is not a regular file"),
    (_parent_escape, "points outside"),
]


@pytest.mark.parametrize("build, words", MALICIOUS, ids=[b.__name__.strip("_") for b, _ in MALICIOUS])
def test_malicious_archives_are_refused_and_touch_nothing_outside(decoy, build, words):
    tarball = make_tarball(decoy / "evil.tar.gz", build)
    envs = decoy / "envs"
    with pytest.raises(EnvironmentUnusable) as caught:
        unpack_tarball(tarball, str(envs))
    assert words in str(caught.value)
    assert "evil.tar.gz" in str(caught.value)
    assert os.listdir(envs) == [n for n in os.listdir(envs) if n.endswith(".lock")]
    os.unlink(tarball)


def test_hard_links_and_links_inside_are_kept(tmp_path):
    def build(tar):
        prefix_env(tar)
        _add_link(tar, "lib64", "lib")
        _add_link(tar, "bin/python", "python3")
        info = tarfile.TarInfo("lib/site-packages/same.py")
        info.type = tarfile.LNKTYPE
        info.linkname = "lib/site-packages/mod.py"
        tar.addfile(info)

    env = unpack_tarball(make_tarball(tmp_path / "env.tar.gz", build), str(tmp_path / "envs"))
    same = os.path.join(env.path, "lib", "site-packages", "same.py")
    assert os.stat(same).st_ino == os.stat(os.path.join(env.path, "lib64", "site-packages", "mod.py")).st_ino
    assert os.readlink(os.path.join(env.path, "bin", "python")) == "python3"


def test_odd_but_harmless_member_names(tmp_path):
    def build(tar):
        _add_dir(tar, "./")
        _add_file(tar, "./bin//python3", b"#!/bin/sh\n", 0o755)
        _add_file(tar, "lib/./a.py", b"A = 1\n")
        info = tarfile.TarInfo("lib/b.py")
        info.type = tarfile.LNKTYPE
        info.linkname = "./lib/x/../a.py"
        tar.addfile(info)

    env = unpack_tarball(make_tarball(tmp_path / "env.tar.gz", build), str(tmp_path / "envs"))
    with open(os.path.join(env.path, "lib", "b.py")) as f:
        assert f.read() == "A = 1\n"


def test_owner_is_never_copied_from_the_archive(tmp_path):
    def build(tar):
        info = tarfile.TarInfo("bin/python3")
        data = b"#!/bin/sh\n"
        info.size, info.mode, info.uid, info.gid = len(data), 0o4755, 65534, 65534
        tar.addfile(info, io.BytesIO(data))

    env = unpack_tarball(make_tarball(tmp_path / "env.tar.gz", build), str(tmp_path / "envs"))
    st = os.stat(env.python)
    assert (st.st_uid, st.st_mode & 0o7777) == (os.getuid(), 0o755)


def test_stale_temporaries_are_removed_but_not_a_running_unpack(tmp_path):
    import fcntl

    envs = tmp_path / "envs"
    stale = envs / ".tmp-aaaa-x1"
    busy = envs / ".tmp-bbbb-x2"
    for folder in (stale, busy):
        (folder / "lib").mkdir(parents=True)
    with open(envs / ".bbbb.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        unpack_tarball(make_tarball(tmp_path / "env.tar.gz", prefix_env), str(envs))
        assert not stale.exists() and busy.exists()
    assert remove_stale_temporaries(str(envs)) == [str(busy)]


KILLED = """
import sys, time
import v2d.env as env

def slow(tar, members, root, tarball):
    open(root + "/started", "w").close()
    time.sleep(60)

env._extract = slow
env.unpack_tarball(sys.argv[1], sys.argv[2])
"""


def test_a_sigkilled_unpack_leaves_no_temporary_folder_behind(tmp_path):
    tarball = make_tarball(tmp_path / "env.tar.gz", prefix_env)
    envs = tmp_path / "envs"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, tarball, str(envs)], env={**os.environ, "PYTHONPATH": root}
    )
    try:
        deadline = time.monotonic() + 30
        while not any((envs / n / "started").exists() for n in (os.listdir(envs) if envs.exists() else [])):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [n for n in os.listdir(envs) if n.startswith(".tmp-")]
    env = unpack_tarball(tarball, str(envs))
    assert os.path.exists(env.python)
    assert [n for n in os.listdir(envs) if n.startswith(".tmp-")] == []
