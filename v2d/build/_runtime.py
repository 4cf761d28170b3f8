"""
A runtime folder as ``v2d-build`` sees it: its models, its dependency files and its
embedded server settings.

A folder is either a model folder itself (``model-settings.json`` at its top) or holds
model folders below it. It may also hold ``settings.json`` (server settings),
``requirements.txt``, a conda ``environment.yaml`` / ``conda.yaml`` and per-model
environment tarballs. Nothing here talks to Docker.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

import attrs

from v2d.settings import ModelSettings, Settings, SettingsError

__all__ = [
    "CONDA_FILES",
    "IMAGE_ENVS_DIR",
    "IMAGE_HOME",
    "IMAGE_MODELS_DIR",
    "IMAGE_ROOT",
    "IMAGE_SETTINGS",
    "IMAGE_VENV",
    "KSERVE_MODELS_DIR",
    "RuntimeFolder",
    "RuntimeFolderError",
    "exposed_ports",
    "scan_generic",
    "scan_runtime",
]

#: Where things live inside the image.
IMAGE_ROOT = "/opt/v2d"
IMAGE_VENV = IMAGE_ROOT + "/venv"
IMAGE_MODELS_DIR = IMAGE_ROOT + "/models"
IMAGE_ENVS_DIR = IMAGE_ROOT + "/envs"
IMAGE_HOME = IMAGE_ROOT + "/home"
IMAGE_SETTINGS = IMAGE_ROOT + "/settings.json"
#: Where a generic image finds its models: KServe's storage initializer puts them there.
KSERVE_MODELS_DIR = "/mnt/models"
#: A generic image unpacks environments here: /tmp is writable even on a read-only root.
GENERIC_ENVS_DIR = "/tmp/v2d/envs"

#: Conda environment files, in the order they are looked for.
CONDA_FILES = ("environment.yaml", "environment.yml", "conda.yaml", "conda.yml")

#: Server settings that the image always sets itself (they name paths inside the image).
_IMAGE_OWNED_SETTINGS = {"models": IMAGE_MODELS_DIR, "envs_dir": IMAGE_ENVS_DIR}
_GENERIC_OWNED_SETTINGS = {"models": KSERVE_MODELS_DIR, "envs_dir": GENERIC_ENVS_DIR}

#: Files of the runtime folder that belong to the build, not to the served models.
BUILD_SUPPORT_DIR = ".v2d-build"
_NOT_RUNTIME = {"Dockerfile", ".dockerignore", BUILD_SUPPORT_DIR}


class RuntimeFolderError(ValueError):
    """The folder cannot be turned into an image; the message says why."""


@attrs.frozen
class RuntimeFolder:
    """What ``v2d-build`` found in a runtime folder."""

    #: Absolute path of the folder.
    root: str
    #: Paths (relative to ``root``, ``/``-separated) of every model-settings.json.
    model_files: Tuple[str, ...]
    #: Names of the models found (from model-settings.json or the folder name).
    model_names: Tuple[str, ...]
    #: ``root`` is itself a model folder.
    is_model_folder: bool
    #: ``requirements.txt`` if the folder has one.
    requirements: Optional[str]
    #: The conda environment file, if any.
    conda_file: Optional[str]
    #: The folder's own ``settings.json`` (empty if none).
    settings: Dict[str, Any]
    #: Environment tarballs the models name, relative to ``root``.
    environment_tarballs: Tuple[str, ...]
    #: No model is baked in: the image serves what is mounted at ``KSERVE_MODELS_DIR``.
    generic: bool = False

    @property
    def image_models_path(self) -> str:
        """Where the folder's content goes in the image (where models are, for a generic one)."""
        if self.generic:
            return KSERVE_MODELS_DIR
        if self.is_model_folder:
            return IMAGE_MODELS_DIR + "/" + image_folder_name(self.root)
        return IMAGE_MODELS_DIR

    def image_settings(self) -> Dict[str, Any]:
        """
        The server settings embedded in the image: the folder's ``settings.json``
        with the paths that only make sense inside the image set by the image.
        """
        owned = _GENERIC_OWNED_SETTINGS if self.generic else _IMAGE_OWNED_SETTINGS
        merged = {k: v for k, v in self.settings.items() if k not in owned}
        merged.update(owned)
        return merged


def image_folder_name(path: str) -> str:
    """A folder name safe to use inside the image, from ``path``'s last part."""
    name = os.path.basename(os.path.normpath(os.path.abspath(path)))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".-")
    return name or "model"


def _walk(root: str) -> Iterable[Tuple[str, List[str]]]:
    """
    (relative dir, file names) for every folder under ``root``; hidden folders and
    unpacked Python environments are skipped, as the server's model discovery does.
    """
    for current, dirs, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(current, root)
        if "pyvenv.cfg" in files or "conda-meta" in dirs:
            dirs[:] = []
            continue
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and d != "__pycache__" and not (rel == "." and d in _NOT_RUNTIME)
        )
        yield ("" if rel == "." else rel.replace(os.sep, "/")), sorted(files)


def scan_runtime(path: str) -> RuntimeFolder:
    """Look at a runtime folder; raise ``RuntimeFolderError`` when it cannot be built."""
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise RuntimeFolderError(f"{path}: no such folder")
    model_files: List[str] = []
    names: List[str] = []
    seen: Dict[Tuple[str, Optional[str]], str] = {}
    tarballs: List[str] = []
    for rel_dir, files in _walk(root):
        if "model-settings.json" not in files:
            continue
        rel_file = f"{rel_dir}/model-settings.json" if rel_dir else "model-settings.json"
        full = os.path.join(root, rel_file)
        try:
            settings = ModelSettings.from_file(full)
        except SettingsError as e:
            raise RuntimeFolderError(f"{rel_file}: {e}") from None
        if not settings.implementation:
            raise RuntimeFolderError(f"{rel_file}: field 'implementation' is missing")
        key = (settings.name, settings.version)
        if key in seen:
            version = f"version '{settings.version}'" if settings.version else "(no version)"
            raise RuntimeFolderError(
                f"{rel_file}: model '{settings.name}' {version} is also defined in {seen[key]}"
            )
        seen[key] = rel_file
        model_files.append(rel_file)
        if settings.name not in names:
            names.append(settings.name)
        tarball = settings.parameters.environment_tarball
        if tarball:
            resolved = settings.resolve_path(tarball)
            if not os.path.isfile(resolved):
                raise RuntimeFolderError(f"{rel_file}: environment tarball {tarball} not found")
            rel_tarball = os.path.relpath(resolved, root)
            if rel_tarball.startswith(".."):
                raise RuntimeFolderError(
                    f"{rel_file}: environment tarball {tarball} is outside {path}, so it cannot be"
                    " copied into the image"
                )
            tarballs.append(rel_tarball.replace(os.sep, "/"))
    if not model_files:
        raise RuntimeFolderError(
            f"{path}: no runtime found: no model-settings.json in the folder or below it"
            " (a model folder holds model-settings.json and the runtime's code)"
        )
    requirements, conda_file = _dependency_files(root)
    return RuntimeFolder(
        root=root,
        model_files=tuple(model_files),
        model_names=tuple(names),
        is_model_folder="model-settings.json" in model_files,
        requirements=requirements,
        conda_file=conda_file,
        settings=_read_settings(root),
        environment_tarballs=tuple(tarballs),
    )


def _dependency_files(root: str) -> Tuple[Optional[str], Optional[str]]:
    """The folder's requirements.txt and conda environment file, where present."""
    requirements = "requirements.txt" if os.path.isfile(os.path.join(root, "requirements.txt")) else None
    conda_file = next((f for f in CONDA_FILES if os.path.isfile(os.path.join(root, f))), None)
    return requirements, conda_file


def scan_generic(path: str) -> RuntimeFolder:
    """
    A folder for an image with no model baked in: only its ``requirements.txt`` (or conda
    file) and ``settings.json`` are used; a model folder in it is an error.
    """
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise RuntimeFolderError(f"{path}: no such folder")
    for rel_dir, files in _walk(root):
        if "model-settings.json" in files:
            where = f"{rel_dir}/model-settings.json" if rel_dir else "model-settings.json"
            raise RuntimeFolderError(
                f"{path}: --generic bakes no model in, but {where} is there;"
                " drop --generic to serve it, or give a folder without models"
            )
    requirements, conda_file = _dependency_files(root)
    return RuntimeFolder(
        root=root,
        model_files=(),
        model_names=(),
        is_model_folder=False,
        requirements=requirements,
        conda_file=conda_file,
        settings=_read_settings(root),
        environment_tarballs=(),
        generic=True,
    )


def _read_settings(root: str) -> Dict[str, Any]:
    """The folder's settings.json, checked against the server's settings."""
    path = os.path.join(root, "settings.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            values = json.load(f)
    except ValueError as e:
        raise RuntimeFolderError(f"settings.json: invalid JSON: {e}") from None
    if not isinstance(values, dict):
        raise RuntimeFolderError("settings.json: must hold a JSON object")
    try:  # v2d's fields and MLServer's, every problem named
        Settings.load(config_path=path, environ={})
    except SettingsError as e:
        raise RuntimeFolderError(f"settings.json: {e}") from None
    return values


def split_strports(description: str) -> List[str]:
    """Split a strports description on unescaped colons."""
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def strports_tcp_port(description: str) -> Optional[int]:
    """The TCP port of a ``tcp:``/``tcp6:``/``ssl:`` strports description, else None."""
    parts = split_strports(description.strip())
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])
    if parts[0].lower() not in ("tcp", "tcp6", "ssl"):
        return None
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep and key.isdigit():
            return int(key)
        if sep and key == "port" and value.isdigit():
            return int(value)
    return None


def grpc_port(address: Optional[str]) -> Optional[int]:
    """The port of a ``host:port`` gRPC address, else None."""
    if not address or address.lower() == "none":
        return None
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else None


def exposed_ports(settings: Dict[str, Any]) -> List[int]:
    """
    The TCP ports the server listens on with these settings.json values (v2d's or
    MLServer's names): REST first, then gRPC, then a metrics listener.
    """
    loaded = Settings.load(environ={}, file_values=settings)
    ports: List[int] = []
    for port in (
        [strports_tcp_port(e) for e in loaded.rest]
        + [grpc_port(loaded.grpc)]
        + [strports_tcp_port(loaded.metrics) if loaded.metrics else None]
    ):
        if port is not None and port not in ports:
            ports.append(port)
    return ports
