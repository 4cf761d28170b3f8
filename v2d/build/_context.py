"""
The build context: the runtime folder plus what v2d-build adds to it.

Added files: ``Dockerfile``, ``.dockerignore`` and the support folder ``.v2d-build/``
holding v2d's wheel, the embedded ``settings.json`` and, if given, pip's CA bundle.
``write_build_files`` puts them into the folder (``--dockerfile-only``);
``context_tar`` streams the folder and them as one tar without touching the folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from typing import IO, Dict, List, Mapping, Optional, Sequence

import attrs

from v2d.build._dockerfile import (
    DOCKERFILE_MARKER,
    ImageOptions,
    render_dockerfile,
    render_dockerignore,
    user_dockerignore_lines,
)
from v2d.build._runtime import BUILD_SUPPORT_DIR, RuntimeFolder, RuntimeFolderError
from v2d.build._wheel import build_v2d_wheel

__all__ = ["BuildFiles", "context_tar", "prepare_build_files", "write_build_files"]


@attrs.frozen
class BuildFiles:
    """Everything v2d-build adds to a runtime folder, in memory."""

    dockerfile: str
    dockerignore: str
    #: Paths inside ``.v2d-build/`` -> contents.
    support: Mapping[str, bytes]


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def prepare_build_files(
    runtime: RuntimeFolder,
    base_image: str,
    pip_cert: Optional[str] = None,
    build_args: Sequence[str] = (),
    v2d_wheel: Optional[str] = None,
) -> BuildFiles:
    """Render the Dockerfile and gather the support files for ``runtime``."""
    support: Dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="v2d-build-") as tmp:
        if v2d_wheel:
            wheel_name = os.path.basename(v2d_wheel)
            if not (wheel_name.startswith("v2d-") and wheel_name.endswith(".whl")):
                raise RuntimeFolderError(f"{v2d_wheel}: not a v2d wheel (v2d-VERSION-...whl)")
            wheel_path = v2d_wheel
        else:
            wheel_name = build_v2d_wheel(tmp)
            wheel_path = os.path.join(tmp, wheel_name)
        with open(wheel_path, "rb") as f:
            support[wheel_name] = f.read()
    if pip_cert:
        try:
            with open(pip_cert, "rb") as f:
                support["pip-cert.pem"] = f.read()
        except OSError as e:
            raise RuntimeFolderError(f"--pip-cert {pip_cert}: {e.strerror}") from None
    support["settings.json"] = (
        json.dumps(runtime.image_settings(), indent=2, sort_keys=True) + "\n"
    ).encode()
    options = ImageOptions(
        wheel_name=wheel_name,
        base_image=base_image,
        pip_cert=bool(pip_cert),
        build_args=tuple(build_args),
    )
    existing_ignore = _read_text(os.path.join(runtime.root, ".dockerignore"))
    return BuildFiles(
        dockerfile=render_dockerfile(runtime, options),
        dockerignore=render_dockerignore(user_dockerignore_lines(existing_ignore)),
        support=support,
    )


def write_build_files(runtime: RuntimeFolder, files: BuildFiles, force: bool = False) -> List[str]:
    """Write the files into the runtime folder; return the paths written."""
    dockerfile = os.path.join(runtime.root, "Dockerfile")
    current = _read_text(dockerfile)
    if current is not None and not current.startswith(DOCKERFILE_MARKER) and not force:
        raise RuntimeFolderError(
            f"{dockerfile} exists and was not written by v2d-build; remove it or pass --force"
        )
    support_dir = os.path.join(runtime.root, BUILD_SUPPORT_DIR)
    if os.path.isdir(support_dir):
        shutil.rmtree(support_dir)
    os.makedirs(support_dir)
    written = []
    for name, content in [
        ("Dockerfile", files.dockerfile.encode()),
        (".dockerignore", files.dockerignore.encode()),
    ]:
        path = os.path.join(runtime.root, name)
        with open(path, "wb") as f:
            f.write(content)
        written.append(path)
    for name, data in sorted(files.support.items()):
        path = os.path.join(support_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)
    return written


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Owned by root, group rights equal to the owner's, no host user names."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    info.mode = (info.mode & ~0o070) | ((info.mode & 0o700) >> 3)
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalise(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o664
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def context_tar(runtime: RuntimeFolder, files: BuildFiles) -> IO[bytes]:
    """The build context as an uncompressed tar in a temporary file, rewound."""
    from docker.utils.build import exclude_paths

    patterns = [
        line.strip()
        for line in files.dockerignore.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    included = exclude_paths(runtime.root, patterns)
    out = tempfile.TemporaryFile(prefix="v2d-build-context-")
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in sorted(included):
            top = rel.replace(os.sep, "/").split("/", 1)[0]
            if top in ("Dockerfile", ".dockerignore", BUILD_SUPPORT_DIR):
                continue
            tar.add(os.path.join(runtime.root, rel), arcname=rel, recursive=False, filter=_normalise)
        _add_bytes(tar, "Dockerfile", files.dockerfile.encode())
        _add_bytes(tar, ".dockerignore", files.dockerignore.encode())
        for name, data in sorted(files.support.items()):
            _add_bytes(tar, f"{BUILD_SUPPORT_DIR}/{name}", data)
    out.seek(0)
    return out
