"""
``v2d-build``: a Docker image from a runtime folder.

The daemon never imports this package. Importing it is cheap: the ``docker`` SDK is
imported only when an engine is talked to, and nothing here imports Twisted.
"""

from v2d.build._context import BuildFiles, context_tar, prepare_build_files, write_build_files
from v2d.build._dockerfile import (
    DEFAULT_BASE_IMAGE,
    IMAGE_UID,
    ImageOptions,
    render_dockerfile,
    render_dockerignore,
)
from v2d.build._engine import BuildError, BuildFailed, EngineUnavailable
from v2d.build._runtime import (
    KSERVE_MODELS_DIR,
    RuntimeFolder,
    RuntimeFolderError,
    exposed_ports,
    scan_generic,
    scan_runtime,
)
from v2d.build._wheel import WheelError, build_v2d_wheel

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "IMAGE_UID",
    "KSERVE_MODELS_DIR",
    "BuildError",
    "BuildFailed",
    "BuildFiles",
    "EngineUnavailable",
    "ImageOptions",
    "RuntimeFolder",
    "RuntimeFolderError",
    "WheelError",
    "build_v2d_wheel",
    "context_tar",
    "exposed_ports",
    "prepare_build_files",
    "render_dockerfile",
    "render_dockerignore",
    "scan_generic",
    "scan_runtime",
    "write_build_files",
]
