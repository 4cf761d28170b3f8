"""
The generic image's entrypoint: ``python -m v2d.build.kserve [OPTIONS]``.

KServe starts a ServingRuntime's container with the flags of its own model servers.
This maps them to ``twistd v2d`` options, then replaces itself with ``twistd`` (exec),
so twistd keeps PID 1 and gets SIGTERM itself:

==========================  =========================================================
KServe's flag               what v2d gets
==========================  =========================================================
``--model_name NAME``       ``V2D_MODEL_NAME=NAME``: the served name of the model when
                            one model is mounted (with several, each keeps its own)
``--http_port N``           ``--rest tcp:N``
``--grpc_port N``           ``--grpc 0.0.0.0:N``
``--model_dir DIR``         ``--models DIR``
==========================  =========================================================

``--flag VALUE`` and ``--flag=VALUE`` are both taken (and ``-`` for ``_``). Every other
argument is an option of the v2d plugin and is passed on unchanged, so
``--models /mnt/models --workers 2`` work as with ``twistd v2d``.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from v2d.build._dockerfile import TWISTD_FOREGROUND

__all__ = ["UsageError", "main", "twistd_command"]

_MODEL_NAME, _HTTP_PORT, _GRPC_PORT, _MODEL_DIR = "model_name", "http_port", "grpc_port", "model_dir"
_FLAGS = (_MODEL_NAME, _HTTP_PORT, _GRPC_PORT, _MODEL_DIR)


class UsageError(ValueError):
    """A KServe flag has no value or a bad one; the message names it."""


def _port(flag: str, value: str) -> int:
    port = int(value) if value.isdigit() else 0
    if not 1 <= port <= 65535:
        raise UsageError(f"--{flag} must be a port number (1-65535), got {value!r}")
    return port


def _split(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """KServe's flags (by name) and the other arguments, in order."""
    flags: Dict[str, str] = {}
    rest: List[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        name = name.replace("-", "_")
        if name not in _FLAGS:
            rest.append(arg)
            continue
        if not sep:
            if not args:
                raise UsageError(f"--{name} needs a value")
            value = args.pop(0)
        flags[name] = value
    return flags, rest


def twistd_command(
    argv: Sequence[str], environ: Mapping[str, str], twistd: str
) -> Tuple[List[str], Dict[str, str]]:
    """The twistd command line and environment for the entrypoint's arguments."""
    flags, rest = _split(argv)
    options: List[str] = []
    env = dict(environ)
    if _MODEL_DIR in flags:
        options += ["--models", flags[_MODEL_DIR]]
    if _HTTP_PORT in flags:
        options += ["--rest", f"tcp:{_port(_HTTP_PORT, flags[_HTTP_PORT])}"]
    if _GRPC_PORT in flags:
        options += ["--grpc", f"0.0.0.0:{_port(_GRPC_PORT, flags[_GRPC_PORT])}"]
    if _MODEL_NAME in flags:
        if not flags[_MODEL_NAME]:
            raise UsageError("--model_name must not be empty")
        env["V2D_MODEL_NAME"] = flags[_MODEL_NAME]
    return [twistd, *TWISTD_FOREGROUND, "v2d", *options, *rest], env


def main(
    argv: Optional[Sequence[str]] = None,
    execve: Callable[[str, List[str], Dict[str, str]], object] = os.execve,
) -> int:
    """Become twistd with the mapped options; return 1 (after one line) on a bad flag."""
    twistd = os.path.join(sys.prefix, "bin", "twistd")
    try:
        command, env = twistd_command(sys.argv[1:] if argv is None else argv, os.environ, twistd)
    except UsageError as e:
        print(f"v2d: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    execve(command[0], command, env)
    return 0  # only reached when execve is replaced (tests)


if __name__ == "__main__":
    sys.exit(main())
