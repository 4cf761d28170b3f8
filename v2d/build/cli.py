"""
The ``v2d-build`` command.

``v2d-build DIR -t TAG`` builds an image serving DIR's runtime;
``v2d-build DIR --dockerfile-only`` writes ``Dockerfile``, ``.dockerignore`` and the
``.v2d-build/`` support folder into DIR and builds nothing; ``v2d-build --generic -t TAG``
builds an image with no model baked in that serves what is mounted at ``/mnt/models``
(KServe's model path). See docs/build.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, TextIO

from v2d._version import __version__
from v2d.build._context import context_tar, prepare_build_files, write_build_files
from v2d.build._dockerfile import DEFAULT_BASE_IMAGE
from v2d.build._engine import (
    BuildError,
    build_with_buildkit,
    build_with_classic,
    connect,
    engine_offers_buildkit,
    find_buildkit_client,
)
from v2d.build._runtime import RuntimeFolder, RuntimeFolderError, scan_generic, scan_runtime
from v2d.build._wheel import WheelError

__all__ = ["main", "parser"]

#: Exit statuses.
OK, FAILED, USAGE = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="v2d-build",
        description="Build a Docker image that serves a v2d runtime folder.",
        epilog="The folder holds model folders (model-settings.json and the runtime's code), or is one;"
        " optionally settings.json, requirements.txt and a conda environment.yaml.",
    )
    p.add_argument(
        "folder",
        metavar="DIR",
        nargs="?",
        help="the runtime folder (with --generic, optional: only its requirements.txt, conda file and"
        " settings.json are used)",
    )
    p.add_argument("-t", "--tag", help="name:tag of the image to build (required unless --dockerfile-only)")
    p.add_argument(
        "--generic",
        action="store_true",
        help="bake no model in: the image serves the model folder(s) mounted at /mnt/models and takes"
        " KServe's --model_name, --http_port, --grpc_port and --model_dir",
    )
    p.add_argument(
        "--dockerfile-only",
        action="store_true",
        help="write Dockerfile, .dockerignore and .v2d-build/ into DIR and build nothing",
    )
    p.add_argument(
        "--base-image",
        default=DEFAULT_BASE_IMAGE,
        help=f"image both stages start from; it needs python3 with venv (default: {DEFAULT_BASE_IMAGE})",
    )
    p.add_argument("--no-cache", action="store_true", help="do not use the builder's cache")
    p.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a build argument (repeatable); PIP_INDEX_URL, PIP_EXTRA_INDEX_URL and the like reach pip",
    )
    p.add_argument(
        "--pip-cert",
        metavar="FILE",
        help="CA bundle pip trusts during the build (e.g. behind a TLS-intercepting proxy);"
        " used in the build stage only, it does not reach the final image",
    )
    p.add_argument(
        "--builder",
        choices=("auto", "buildkit", "classic"),
        default="auto",
        help="auto: BuildKit when the engine offers it and a docker client can drive it, else classic",
    )
    p.add_argument(
        "--v2d-wheel",
        metavar="FILE",
        help="install this v2d wheel in the image instead of packaging the running v2d",
    )
    p.add_argument("--force", action="store_true", help="overwrite a Dockerfile not written by v2d-build")
    p.add_argument("-q", "--quiet", action="store_true", help="do not show the build's output")
    p.add_argument("--version", action="version", version=f"v2d-build {__version__}")
    return p


def _build_args(values: Sequence[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RuntimeFolderError(f"--build-arg {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run v2d-build; return the exit status."""
    p = parser()
    args = p.parse_args(argv)
    if not args.dockerfile_only and not args.tag:
        p.error("-t/--tag is required to build (or use --dockerfile-only)")
    if args.folder is None and not args.generic:
        p.error("DIR is required (or --generic for an image with no model baked in)")
    if args.folder is None and args.dockerfile_only:
        p.error("--dockerfile-only needs DIR to write the files into")
    try:
        with contextlib.ExitStack() as stack:
            folder = args.folder or stack.enter_context(tempfile.TemporaryDirectory(prefix="v2d-build-"))
            runtime = scan_generic(folder) if args.generic else scan_runtime(folder)
            return _build(args, runtime, out, err)
    except (BuildError, RuntimeFolderError, WheelError) as e:
        print(f"v2d-build: error: {e}", file=err)
        return FAILED


def _build(args: argparse.Namespace, runtime: RuntimeFolder, out: TextIO, err: TextIO) -> int:
    """Write or build the image of ``runtime``; return the exit status."""
    build_args = _build_args(args.build_arg)
    files = prepare_build_files(
        runtime,
        base_image=args.base_image,
        pip_cert=args.pip_cert,
        build_args=sorted(build_args),
        v2d_wheel=args.v2d_wheel,
    )
    if args.dockerfile_only:
        for path in write_build_files(runtime, files, force=args.force):
            print(f"wrote {path}", file=out)
        print(f"build it with: docker build -t TAG {args.folder}", file=out)
        return OK
    client = connect()
    buildkit = None
    if args.builder != "classic":
        offered = engine_offers_buildkit(client)
        buildkit = find_buildkit_client() if offered else None
        if args.builder == "buildkit" and buildkit is None:
            why = "no docker client that drives BuildKit is on PATH" if offered else "the engine lacks it"
            raise BuildError(f"--builder buildkit: BuildKit cannot be used here: {why}")
    if runtime.generic:
        serving = f"what is mounted at {runtime.image_models_path}"
    else:
        serving = ", ".join(runtime.model_names)
    builder = f"BuildKit via {buildkit.executable}" if buildkit else "the classic builder"
    print(f"v2d-build: building {args.tag} serving {serving} with {builder}", file=err)
    log = None if args.quiet else err
    with context_tar(runtime, files) as context:
        if buildkit is not None:
            image_id = build_with_buildkit(buildkit, context, args.tag, args.no_cache, build_args, log)
        else:
            image_id = build_with_classic(client, context, args.tag, args.no_cache, build_args, log)
    print(f"built {args.tag} ({image_id})", file=out)
    return OK


if __name__ == "__main__":
    sys.exit(main())
