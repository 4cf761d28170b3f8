"""
A wheel of the v2d that is running, for the image to install.

v2d is not fetched from a package index: the image gets the very v2d that runs
``v2d-build``. That v2d may be installed (site-packages, after ``pip install .``),
installed in editable mode, or imported from a source checkout; in each case its
package files are on disk next to ``v2d/__init__.py``, and Twisted's plugin module
``twisted/plugins/v2d_plugin.py`` is next to the ``v2d`` folder or listed in the
installed distribution's files. This module zips those files into a pure-Python wheel
(``py3-none-any``) with the installed distribution's requirements (or, from a
checkout without metadata, setup.py's). ``pip wheel`` is not used: it needs a source
tree and a build backend, and after a plain ``pip install .`` only installed files
exist.

The wheel's bytes depend only on the files' contents (fixed timestamps, sorted
entries), so an unchanged v2d keeps Docker's layer cache valid.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import os
import zipfile
from importlib import metadata
from typing import List, Optional, Tuple

import v2d
from v2d._version import __version__

__all__ = ["WheelError", "build_v2d_wheel", "v2d_package_files"]

_FIXED_DATE = (2020, 1, 1, 0, 0, 0)
_SKIP_SUFFIXES = (".pyc", ".pyo")


class WheelError(RuntimeError):
    """The running v2d cannot be packaged."""


def _plugin_file(package_dir: str) -> str:
    """Where ``twisted/plugins/v2d_plugin.py`` of this v2d is."""
    beside = os.path.join(os.path.dirname(package_dir), "twisted", "plugins", "v2d_plugin.py")
    if os.path.isfile(beside):
        return beside
    try:
        dist = metadata.distribution("v2d")
    except metadata.PackageNotFoundError:
        dist = None
    for item in (dist.files or []) if dist else []:
        if str(item).replace(os.sep, "/").endswith("twisted/plugins/v2d_plugin.py"):
            located = str(dist.locate_file(item))  # type: ignore[union-attr]
            if os.path.isfile(located):
                return located
    raise WheelError("cannot find twisted/plugins/v2d_plugin.py of the running v2d; reinstall v2d")


def _installed_files() -> List[Tuple[str, str]]:
    """(path, file on disk) of the installed distribution's v2d package files, if any."""
    try:
        dist = metadata.distribution("v2d")
    except metadata.PackageNotFoundError:
        return []
    if dist.version != __version__:
        return []
    out = []
    for item in dist.files or []:
        rel = str(item).replace(os.sep, "/")
        if rel.startswith("v2d/") and "/__pycache__/" not in rel and not rel.endswith(_SKIP_SUFFIXES):
            located = str(dist.locate_file(item))
            if os.path.isfile(located):
                out.append((rel, located))
    return out


def v2d_package_files() -> List[Tuple[str, str]]:
    """
    (path in the wheel, file on disk) for every file of the running v2d: the imported
    package's files, plus any file the installed distribution of the same version has
    and the imported copy lacks (files generated at install time, when v2d is imported
    from a source checkout).
    """
    package_dir = os.path.dirname(os.path.abspath(v2d.__file__))
    files: List[Tuple[str, str]] = []
    for current, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(
            d for d in dirs if d != "__pycache__" and not d.startswith(".") and not d.endswith(".egg-info")
        )
        for name in sorted(names):
            if name.endswith(_SKIP_SUFFIXES) or name.startswith("."):
                continue
            full = os.path.join(current, name)
            rel = os.path.relpath(full, os.path.dirname(package_dir)).replace(os.sep, "/")
            files.append((rel, full))
    present = {rel for rel, _ in files}
    files += sorted(item for item in _installed_files() if item[0] not in present)
    files.append(("twisted/plugins/v2d_plugin.py", _plugin_file(package_dir)))
    return files


def _setup_py_requirements(setup_py: str) -> Optional[List[str]]:
    """``install_requires`` read from a checkout's setup.py, without running it."""
    try:
        with open(setup_py, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return [str(v) for v in value]
    return None


def _metadata_text() -> Tuple[str, Optional[str]]:
    """METADATA and entry_points.txt for the wheel."""
    requires: Optional[List[str]] = None
    extras: List[str] = []
    entry_points: Optional[str] = None
    summary = "An Open Inference Protocol (V2) server for custom Python runtimes"
    requires_python: Optional[str] = None
    try:
        dist = metadata.distribution("v2d")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None and dist.version == __version__:
        requires = list(dist.requires or [])
        extras = list(dist.metadata.get_all("Provides-Extra") or [])
        entry_points = dist.read_text("entry_points.txt")
        summary = (dist.metadata.get_all("Summary") or [summary])[0]
        requires_python = (dist.metadata.get_all("Requires-Python") or [None])[0]
    if requires is None:
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(v2d.__file__)))
        requires = _setup_py_requirements(os.path.join(checkout, "setup.py"))
    if requires is None:
        raise WheelError(
            "cannot tell which packages v2d needs: it is neither installed (pip install it)"
            " nor run from its source checkout"
        )
    lines = [
        "Metadata-Version: 2.1",
        "Name: v2d",
        f"Version: {__version__}",
        f"Summary: {summary}",
    ]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Provides-Extra: {extra}" for extra in extras]
    lines += [f"Requires-Dist: {req}" for req in requires]
    if entry_points is None:
        entry_points = "[console_scripts]\nv2d-build = v2d.build.cli:main\n"
    return "\n".join(lines) + "\n", entry_points


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{path},sha256={digest},{len(data)}"


def build_v2d_wheel(dest_dir: str) -> str:
    """Write a wheel of the running v2d into ``dest_dir``; return its file name."""
    meta, entry_points = _metadata_text()
    dist_info = f"v2d-{__version__}.dist-info"
    members: List[Tuple[str, bytes, int]] = []
    for arcname, full in v2d_package_files():
        with open(full, "rb") as f:
            members.append((arcname, f.read(), 0o644))
    members.append((f"{dist_info}/METADATA", meta.encode("utf-8"), 0o644))
    members.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: v2d-build\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            0o644,
        )
    )
    if entry_points:
        members.append((f"{dist_info}/entry_points.txt", entry_points.encode("utf-8"), 0o644))
    members.append((f"{dist_info}/top_level.txt", b"twisted\nv2d\n", 0o644))
    record = [_record_line(name, data) for name, data, _ in members]
    record.append(f"{dist_info}/RECORD,,")
    members.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode("utf-8"), 0o644))
    name = f"v2d-{__version__}-py3-none-any.whl"
    path = os.path.join(dest_dir, name)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, data, mode in members:
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_DATE)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return name
