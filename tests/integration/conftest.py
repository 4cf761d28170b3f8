"""
Fixtures shared by the integration tests: another Python for worker environments, and
one venv-pack environment tarball built from it per test run (numpy and
``inflection``, a small pure-Python package the server does not have).

Outside CI these skip when no other Python exists; under CI (``CI=true``) they fail.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple

import pytest

SERVER_VERSION = tuple(sys.version_info[:2])
PREFERRED = [(3, 12), (3, 13), (3, 10), (3, 9)]


def _python_version(python: str) -> Optional[Tuple[int, int]]:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def _pyenv_roots() -> List[str]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30).stdout
            roots.append(out.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    roots.append(os.path.join(os.path.expanduser("~"), ".pyenv"))
    return [r for r in dict.fromkeys(roots) if r and os.path.isdir(r)]


def find_other_python() -> Optional[Tuple[str, Tuple[int, int]]]:
    """An interpreter of a Python version other than the server's (3.9 and up), or None."""
    found = {}
    for root in _pyenv_roots():
        for python in sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))):
            version = _python_version(python)
            if version and version not in found:
                found[version] = python
    for minor in range(9, 14):
        python = shutil.which(f"python3.{minor}")
        if python and (3, minor) not in found and _python_version(python) == (3, minor):
            found[(3, minor)] = python
    for version in PREFERRED:
        if version != SERVER_VERSION and version in found:
            return found[version], version
    return None


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must have it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def other_python() -> Tuple[str, Tuple[int, int]]:
    found = find_other_python()
    if found is None:
        server = platform.python_version()
        skip_or_fail(f"no Python 3.9-3.13 other than the server's {server} found (pyenv or PATH)")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def env_tarball(other_python, tmp_path_factory) -> str:
    """A venv-pack archive of a venv of the other Python, with numpy and inflection."""
    venv_pack = pytest.importorskip("venv_pack")
    python, _ = other_python
    work = tmp_path_factory.mktemp("env-build")
    venv = str(work / "venv")
    subprocess.run([python, "-m", "venv", venv], check=True, timeout=300)
    subprocess.run(
        [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "numpy", "inflection"],
        check=True, timeout=900,
    )
    output = str(work / "env.tar.gz")
    venv_pack.pack(prefix=venv, output=output, verbose=False)
    return output


