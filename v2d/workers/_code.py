"""
The server's own v2d package, shipped to worker children as a zip.

A child runs the environment's interpreter in isolated mode, so it sees neither the
server's site-packages nor anything on ``PYTHONPATH``; it gets v2d (and only v2d)
from a zip of the server's package, built once per content and cached.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from typing import List, Tuple

import v2d
from v2d._version import __version__
from v2d.workers._bootstrap import MODULE, SOURCE

__all__ = ["child_code_zip"]

#: Parts of the package a child never imports (they need the server's dependencies).
#: ``grpc`` is shipped: a child with protobuf uses its message conversions, never grpcio.
_SKIP = ("build", "rest")


def _sources() -> List[Tuple[str, str]]:
    root = os.path.dirname(os.path.abspath(v2d.__file__))
    base = os.path.dirname(root)
    out = []
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel.split(os.sep)[0] in _SKIP:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                out.append((path, os.path.relpath(path, base)))
    return out


def child_code_zip(cache_dir: str) -> str:
    """The path of a zip holding v2d's package for children (built if missing)."""
    sources = _sources()
    digest = hashlib.sha256()
    for path, arcname in sources:
        digest.update(arcname.encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
        digest.update(b"\0")
    digest.update(SOURCE.encode())
    target = os.path.join(cache_dir, f"v2d-{__version__}-{digest.hexdigest()[:16]}.zip")
    if os.path.exists(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-v2d-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as out, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for path, arcname in sources:
                zf.write(path, arcname.replace(os.sep, "/"))
            zf.writestr(f"{MODULE}.py", SOURCE)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
