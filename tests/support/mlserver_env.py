"""
A virtualenv holding MLServer 1.7.1 and its scikit-learn, LightGBM and XGBoost runtime
packages.

Built once and kept under the system temp dir, ``v2d-tests-<uid>`` (``V2D_TEST_CACHE`` moves it), keyed
by its requirements and Python, so a test session reuses it. It also holds v2d's own
dependencies, so a ``twistd v2d`` can run in it (with v2d from the checkout on
``PYTHONPATH``); packed with venv-pack it is a model's ``environment_tarball``.

XGBoost comes as ``xgboost-cpu``: the ``xgboost`` wheel pulls in ~470 MB of NVIDIA
libraries the tests have no use for; ``mlserver-xgboost`` is installed without its
dependencies so that it does not ask for them.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List

__all__ = [
    "MLSERVER_REQUIREMENTS",
    "cache_dir",
    "mlserver_env_tarball",
    "mlserver_venv",
    "v2d_requirements",
]

#: What the venv holds besides v2d's own dependencies (pytest runs the adapter's unit tests there).
MLSERVER_REQUIREMENTS = [
    "mlserver==1.7.1",
    "mlserver-sklearn==1.7.1",
    "mlserver-lightgbm==1.7.1",
    "xgboost-cpu",
    "pytest",
]
#: Installed without dependencies (see the module's docstring).
NO_DEPS = ["mlserver-xgboost==1.7.1"]

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def v2d_requirements() -> List[str]:
    """``install_requires`` of the checkout's setup.py."""
    with open(os.path.join(_ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return list(ast.literal_eval(node.value))
    raise RuntimeError("setup.py has no install_requires")


def cache_dir() -> str:
    """Where built test environments are kept."""
    root = os.environ.get("V2D_TEST_CACHE") or os.path.join(tempfile.gettempdir(), f"v2d-tests-{os.getuid()}")
    os.makedirs(root, exist_ok=True)
    return root


def _key() -> str:
    parts = [sys.version.split()[0], *MLSERVER_REQUIREMENTS, "--no-deps", *NO_DEPS, *v2d_requirements()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _run(argv: List[str], log: str) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1500)
    if result.returncode:
        with open(log, errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{tail}")


def mlserver_venv() -> str:
    """The venv's folder, built on first use (under a lock; a half-built one is rebuilt)."""
    root = cache_dir()
    venv = os.path.join(root, f"mlserver-1.7.1-{_key()}")
    done = os.path.join(venv, ".complete")
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done):
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        log = venv + ".log"
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
        python = os.path.join(venv, "bin", "python")
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _run(pip + MLSERVER_REQUIREMENTS + v2d_requirements(), log)
        _run(pip + ["--no-deps"] + NO_DEPS, log)
        with open(done, "w"):
            pass
    return venv


def mlserver_env_tarball() -> str:
    """A venv-pack archive of the venv (an ``environment_tarball``), built on first use."""
    import venv_pack

    venv = mlserver_venv()
    output = venv + ".tar.gz"
    with open(venv + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(output):
            partial = output + ".partial.tar.gz"
            if os.path.exists(partial):
                os.unlink(partial)
            venv_pack.pack(prefix=venv, output=partial, verbose=False)
            os.rename(partial, output)
    return output
