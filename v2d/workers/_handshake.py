"""
The handshake: what each side of the wire is, and whether two sides can talk.

A child announces itself first, in a JSON frame (readable whatever either side's
pickle can do): wire version, v2d version, Python version, pickle protocol, numpy
version. The server checks the pair with ``incompatibility`` and answers ``ok`` or
the reason; nothing is pickled before that.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import pickle
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "MIN_NUMPY",
    "MIN_PYTHON",
    "describe",
    "incompatibility",
    "numpy_version",
    "summary",
]

#: The oldest Python a worker environment may have.
MIN_PYTHON = (3, 9)
#: The oldest numpy a worker environment may have.
MIN_NUMPY = (1, 20)


def numpy_version() -> Optional[str]:
    """The installed numpy's version (without importing numpy), or ``None``."""
    module = sys.modules.get("numpy")
    if module is not None:
        return str(module.__version__)
    try:
        return version("numpy")
    except PackageNotFoundError:
        return None


def describe(wire_version: int, v2d_version: str) -> Dict[str, Any]:
    """This process, as the handshake carries it."""
    return {
        "wire": wire_version,
        "v2d": v2d_version,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "pickle": pickle.HIGHEST_PROTOCOL,
        "numpy": numpy_version(),
        "executable": sys.executable,
    }


def _version_tuple(text: Optional[str]) -> Tuple[int, ...]:
    out = []
    for part in (text or "").split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def summary(side: Dict[str, Any]) -> str:
    """One side of the handshake in words."""
    numpy = side.get("numpy") or "missing"
    return (
        f"v2d {side.get('v2d') or '(not started)'}, wire {side.get('wire') or '-'}, "
        f"Python {side.get('python', '?')} ({side.get('implementation', '?')}), "
        f"pickle protocol {side.get('pickle', '?')}, numpy {numpy}"
    )


def incompatibility(server: Dict[str, Any], child: Dict[str, Any]) -> Optional[str]:
    """
    ``None`` when the two sides can talk, else a message naming both sides and what
    to install in the environment.
    """
    fixes = []
    problems = []
    started = child.get("wire") is not None
    if not started:
        pass  # the child could not import v2d; the other checks say why
    elif child.get("wire") != server.get("wire"):
        problems.append(f"wire version {child.get('wire')} != {server.get('wire')}")
        fixes.append("remove any other copy of v2d from the environment (the server ships its own)")
    elif child.get("v2d") != server.get("v2d"):
        problems.append(f"v2d {child.get('v2d')} != {server.get('v2d')}")
        fixes.append("remove any other copy of v2d from the environment (the server ships its own)")
    python = _version_tuple(child.get("python"))
    if python[:2] < MIN_PYTHON:
        problems.append(f"Python {child.get('python')} is older than {'.'.join(map(str, MIN_PYTHON))}")
        fixes.append(f"build the environment with Python >= {'.'.join(map(str, MIN_PYTHON))}")
    if int(child.get("pickle") or 0) < 5 or int(server.get("pickle") or 0) < 5:
        problems.append("pickle protocol 5 is not available on both sides")
    numpy = child.get("numpy")
    minimum = ".".join(map(str, MIN_NUMPY))
    if not numpy:
        problems.append("numpy is not installed in the environment")
        fixes.append(f"install numpy>={minimum} into the environment")
    elif _version_tuple(numpy)[:2] < MIN_NUMPY:
        problems.append(f"numpy {numpy} is older than {minimum}")
        fixes.append(f"install numpy>={minimum} into the environment")
    if child.get("error") and not problems:
        problems.append(f"the worker could not start: {child['error']}")
    if not problems:
        return None
    where = child.get("executable") or "?"
    fix = "; ".join(dict.fromkeys(fixes)) or "rebuild the environment"
    return (
        f"worker environment is incompatible with this server: {'; '.join(problems)}. "
        f"Server: {summary(server)}. Environment ({where}): {summary(child)}. To fix: {fix}."
    )
