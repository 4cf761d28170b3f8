"""
Model environments: the Python a model's workers run, from a tarball or a folder.

``parameters.environment_tarball`` (a venv-pack or conda-pack archive, relative to the
model folder) is unpacked once into the environments folder, under the hash of its
content, and reused afterwards (across restarts too). Unpacking is atomic (a
temporary folder renamed into place, a marker written once fix-ups are done, a lock
against concurrent servers) and filtered: no absolute member names, no ``..``, no
devices or FIFOs, no links that leave the tree.

Extraction is v2d's own and never follows a link: every member's folder is reached
one component at a time from the root with ``O_NOFOLLOW``, so a member under a link
(``a/b`` where ``a`` is a link) is refused; files are created with ``O_EXCL``; a hard
link must name a regular file reached the same way; ownership is never copied. Once
every member is out, each link is resolved on disk and must stay inside the tree
(which also catches chains such as ``b -> ..`` then ``c -> b/..``). A temporary
folder left by an unpack that was killed is removed by the next unpack, once the lock
of its archive shows nobody is working in it.

A venv-pack archive does not carry Python: its ``bin/python`` is a link to the base
interpreter it was made from (``home`` in ``pyvenv.cfg``). v2d drops such links while
extracting and makes them again itself, only after checking the base interpreter
exists here; if it does not, the error says which Python is missing. A conda-pack
archive carries its Python; its ``bin/conda-unpack`` (which rewrites the prefixes)
is run once, in place.

``parameters.environment_path`` names an environment already unpacked.

Blocking (file I/O, hashing); the service runs it in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
from typing import Dict, Iterator, List, Optional

import attrs

from v2d.errors import FailedPrecondition
from v2d.settings import ModelSettings

__all__ = [
    "Environment",
    "EnvironmentUnusable",
    "environment_python",
    "remove_stale_temporaries",
    "resolve_environment",
    "unpack_tarball",
]

MARKER = ".v2d-environment.json"
_INTERPRETER_NAMES = ("python3", "python")


class EnvironmentUnusable(FailedPrecondition):
    """An environment cannot be used; the message says why and what to do."""


@attrs.frozen
class Environment:
    """A usable environment: its folder and the interpreter to run."""

    path: str
    python: str
    kind: str = "prefix"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_interpreter_link(name: str) -> bool:
    head, base = posixpath.split(name)
    return head == "bin" and (base == "python" or base.startswith("python3"))


def _inside(name: str) -> bool:
    norm = posixpath.normpath(name)
    return not (norm.startswith("/") or norm == ".." or norm.startswith("../"))


def _outside(tarball: str, name: str, target: str) -> str:
    return f"environment tarball {tarball}: link {name!r} points outside the environment ({target})"


def _filter_members(tar: tarfile.TarFile, tarball: str) -> tuple:
    """(members to extract, interpreter links to make again {name: target})."""
    keep: List[tarfile.TarInfo] = []
    relinks: Dict[str, str] = {}
    for member in tar.getmembers():
        name = member.name
        while name.startswith("./"):
            name = name[2:]
        if not name or name == ".":
            continue
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise EnvironmentUnusable(f"environment tarball {tarball}: unsafe member name {member.name!r}")
        if member.isdev() or member.isfifo():
            raise EnvironmentUnusable(
                f"environment tarball {tarball}: member {member.name!r} is a device or FIFO"
            )
        name = "/".join(p for p in parts if p not in ("", "."))
        if not name:
            continue
        member.name = name
        if member.issym():
            target = member.linkname
            if target.startswith("/"):
                if _is_interpreter_link(name):
                    relinks[name] = target
                    continue
                raise EnvironmentUnusable(_outside(tarball, member.name, target))
            if not _inside(posixpath.join(posixpath.dirname(name), target)):
                raise EnvironmentUnusable(_outside(tarball, member.name, target))
        elif member.islnk():
            if not _inside(member.linkname) or member.linkname.startswith("/"):
                raise EnvironmentUnusable(
                    f"environment tarball {tarball}: hard link {member.name!r} points outside the environment"
                )
            member.linkname = posixpath.normpath(member.linkname)
        member.mode &= 0o777  # no setuid, setgid or sticky bits
        keep.append(member)
    return keep, relinks


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class _Tree:
    """A folder being filled from an archive; nothing under it is reached through a link."""

    def __init__(self, root: str, tarball: str) -> None:
        self.root = root
        self.tarball = tarball
        self.links: List[str] = []
        self.dirs: Dict[str, int] = {}

    def _refuse(self, name: str, why: str) -> EnvironmentUnusable:
        return EnvironmentUnusable(f"environment tarball {self.tarball}: member {name!r} {why}")

    def open_folder(self, parts: List[str], name: str, create: bool = True) -> int:
        """A descriptor of the folder ``parts`` under the root, made if need be; never through a link."""
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise self._refuse(name, f"names {part!r}, which is not in the archive") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        why = f"lies under {part!r}, which is a link or not a folder"
                        raise self._refuse(name, why) from None
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _clear(self, fd: int, base: str, name: str) -> None:
        """Make room for a member: an earlier file or link of that name goes, a folder is refused."""
        try:
            st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise self._refuse(name, "would replace a folder")
        os.unlink(base, dir_fd=fd)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Extract one (already filtered) member."""
        parts = member.name.rstrip("/").split("/")
        fd = self.open_folder(parts[:-1], member.name)
        base = parts[-1]
        try:
            if member.isdir():
                try:
                    os.mkdir(base, 0o700, dir_fd=fd)
                except FileExistsError:
                    st = os.stat(base, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        why = "is a folder where a file or link already is"
                        raise self._refuse(member.name, why) from None
                self.dirs[member.name.rstrip("/")] = (member.mode & 0o777) | 0o700
            elif member.issym():
                self._clear(fd, base, member.name)
                os.symlink(member.linkname, base, dir_fd=fd)
                self.links.append(member.name)
            elif member.islnk():
                self._hard_link(fd, base, member)
            elif member.isreg():
                self._clear(fd, base, member.name)
                out = os.open(
                    base,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                    0o600,
                    dir_fd=fd,
                )
                with os.fdopen(out, "wb") as f:
                    source = tar.extractfile(member)
                    if source is not None:
                        shutil.copyfileobj(source, f, 1 << 20)
                    os.fchmod(f.fileno(), member.mode & 0o777)
                    os.utime(f.fileno(), (member.mtime, member.mtime))
            else:
                raise self._refuse(member.name, "is not a file, folder or link")
        finally:
            os.close(fd)

    def _hard_link(self, fd: int, base: str, member: tarfile.TarInfo) -> None:
        source = member.linkname  # normalised, never above the root (_filter_members)
        parts = source.split("/")
        src_fd = self.open_folder(parts[:-1], member.name, create=False)
        try:
            try:
                st = os.stat(parts[-1], dir_fd=src_fd, follow_symlinks=False)
            except FileNotFoundError:
                why = f"is a hard link to {source!r}, which is not in the archive"
                raise self._refuse(member.name, why) from None
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(member.name, f"is a hard link to {source!r}, which is not a regular file")
            self._clear(fd, base, member.name)
            os.link(parts[-1], base, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(src_fd)

    def finish(self) -> None:
        """Check that every link resolves inside the tree; give folders their modes."""
        real_root = os.path.realpath(self.root)
        for name in self.links:
            resolved = os.path.realpath(os.path.join(real_root, *name.split("/")))
            if os.path.commonpath([real_root, resolved]) != real_root:
                link = os.path.join(self.root, *name.split("/"))
                raise EnvironmentUnusable(_outside(self.tarball, name, os.readlink(link)))
        for name, mode in sorted(self.dirs.items(), key=lambda item: -item[0].count("/")):
            fd = self.open_folder(name.split("/"), name, create=False)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)

    def symlink(self, name: str, target: str) -> None:
        """Make (again) the link ``name`` -> ``target``, through no link."""
        parts = name.split("/")
        fd = self.open_folder(parts[:-1], name)
        try:
            self._clear(fd, parts[-1], name)
            os.symlink(target, parts[-1], dir_fd=fd)
        finally:
            os.close(fd)


def _extract(tar: tarfile.TarFile, members: List[tarfile.TarInfo], root: str, tarball: str) -> None:
    """Extract ``members`` into ``root`` without following any link (see the module docstring)."""
    tree = _Tree(root, tarball)
    for member in members:
        tree.add(tar, member)
    tree.finish()


def _stale_temporaries(envs_dir: str) -> Iterator[tuple]:
    """(key, path) of every ``.tmp-<key>-*`` folder in ``envs_dir``."""
    try:
        names = os.listdir(envs_dir)
    except OSError:
        return
    for name in names:
        if name.startswith(".tmp-"):
            key = name[len(".tmp-") :].partition("-")[0]
            yield key, os.path.join(envs_dir, name)


def remove_stale_temporaries(envs_dir: str, held: Optional[str] = None) -> List[str]:
    """
    Remove the temporary folders of unpacks that died (SIGKILL, power loss).

    A temporary folder belongs to the unpack holding its archive's lock; one whose
    lock can be taken at once is stale. ``held`` is a key whose lock the caller holds.
    Returns the folders removed.
    """
    removed = []
    for key, path in sorted(_stale_temporaries(envs_dir)):
        if key == held:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            continue
        try:
            lock = open(os.path.join(envs_dir, f".{key}.lock"), "a")
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # an unpack is running in it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _read_pyvenv(path: str) -> Dict[str, str]:
    values: Dict[str, str] = {}
    try:
        with open(os.path.join(path, "pyvenv.cfg"), encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip()] = value.strip()
    except OSError:
        pass
    return values


def _relink_interpreters(path: str, relinks: Dict[str, str], source: str) -> None:
    """Make again the venv's links to its base interpreter, once that is known to exist."""
    cfg = _read_pyvenv(path)
    for name, target in sorted(relinks.items()):
        if not (os.path.isfile(target) and os.access(target, os.X_OK)):
            home = cfg.get("home", "?")
            version = cfg.get("version") or cfg.get("version_info") or "?"
            raise EnvironmentUnusable(
                f"environment {source} is a venv (venv-pack) whose Python is a link to {target} "
                f"(pyvenv.cfg home = {home}, Python {version}), and there is no such interpreter on this "
                f"machine. A venv-pack environment needs the same base Python at the same path: install "
                f"Python {version} at {home}, or pack the environment with conda-pack, which carries "
                "its Python."
            )
        _Tree(path, source).symlink(name, target)


def _check_venv_home(path: str, source: str) -> None:
    cfg = _read_pyvenv(path)
    home = cfg.get("home")
    if home and not os.path.isdir(home):
        version = cfg.get("version") or cfg.get("version_info") or "?"
        raise EnvironmentUnusable(
            f"environment {source} is a venv whose base Python (pyvenv.cfg home = {home}, Python {version}) "
            f"does not exist on this machine: install Python {version} at {home}, or use a conda-pack "
            "environment."
        )


def environment_python(path: str, source: Optional[str] = None) -> str:
    """The interpreter of an unpacked environment (``bin/python3`` or ``bin/python``)."""
    source = source or path
    if not os.path.isdir(path):
        raise EnvironmentUnusable(f"environment {source}: no such folder {path}")
    if os.path.exists(os.path.join(path, "pyvenv.cfg")):
        _check_venv_home(path, source)
    for name in _INTERPRETER_NAMES:
        candidate = os.path.join(path, "bin", name)
        if os.path.exists(candidate) and os.access(candidate, os.X_OK):
            return candidate
    link = os.path.join(path, "bin", "python")
    if os.path.islink(link):
        raise EnvironmentUnusable(
            f"environment {source}: bin/python links to {os.readlink(link)}, which does not exist here"
        )
    raise EnvironmentUnusable(f"environment {source}: no bin/python3 or bin/python in {path}")


def _run_conda_unpack(path: str, source: str) -> None:
    script = os.path.join(path, "bin", "conda-unpack")
    python = environment_python(path, source)
    result = subprocess.run(
        [python, script], cwd=path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise EnvironmentUnusable(
            f"environment {source}: conda-unpack failed ({result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )


def unpack_tarball(tarball: str, envs_dir: str) -> Environment:
    """Unpack (once) a venv-pack or conda-pack tarball; the environment it holds."""
    if not os.path.isfile(tarball):
        raise EnvironmentUnusable(f"environment tarball {tarball} does not exist")
    key = _sha256(tarball)[:32]
    os.makedirs(envs_dir, exist_ok=True)
    target = os.path.join(envs_dir, key)
    with open(os.path.join(envs_dir, f".{key}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        remove_stale_temporaries(envs_dir, held=key)
        marker = os.path.join(target, MARKER)
        if os.path.exists(marker):
            with open(marker, encoding="utf-8") as f:
                kind = json.load(f).get("kind", "prefix")
            return Environment(target, environment_python(target, tarball), kind)
        if os.path.exists(target):  # an earlier unpack died half-way: start again
            shutil.rmtree(target)
        tmp = tempfile.mkdtemp(dir=envs_dir, prefix=f".tmp-{key}-")
        try:
            try:
                with tarfile.open(tarball, "r:*") as tar:
                    members, relinks = _filter_members(tar, tarball)
                    _extract(tar, members, tmp, tarball)
            except (tarfile.TarError, OSError) as e:
                raise EnvironmentUnusable(f"environment tarball {tarball} cannot be unpacked: {e}") from None
            is_conda = os.path.isdir(os.path.join(tmp, "conda-meta")) and os.path.isfile(
                os.path.join(tmp, "bin", "conda-unpack")
            )
            is_venv = os.path.exists(os.path.join(tmp, "pyvenv.cfg"))
            kind = "conda-pack" if is_conda else ("venv" if is_venv else "prefix")
            os.chmod(tmp, 0o755)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            _relink_interpreters(target, relinks, tarball)
            python = environment_python(target, tarball)
            if kind == "conda-pack":
                _run_conda_unpack(target, tarball)
            with open(marker + ".tmp", "w", encoding="utf-8") as f:
                json.dump({"tarball": os.path.abspath(tarball), "kind": kind}, f)
            os.replace(marker + ".tmp", marker)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return Environment(target, python, kind)


def resolve_environment(model: ModelSettings, envs_dir: str) -> Optional[Environment]:
    """The model's environment (unpacking its tarball if need be), or ``None`` for the server's own."""
    params = model.parameters
    if params.environment_path:
        path = model.resolve_path(params.environment_path)
        kind = "venv" if os.path.exists(os.path.join(path, "pyvenv.cfg")) else "prefix"
        return Environment(path, environment_python(path), kind)
    if params.environment_tarball:
        return unpack_tarball(model.resolve_path(params.environment_tarball), envs_dir)
    return None
