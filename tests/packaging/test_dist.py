"""
The sdist and the wheel built from it are complete, and the installed wheel works.

Runs ``packaging/check_dist.py`` (what ``tox -e packaging`` runs): ``python -m build``
makes the sdist and then the wheel from the sdist, their contents are checked, and the
wheel is installed into a fresh virtualenv where ``twistd --help`` must list v2d and
``twistd v2d --help`` must work. Needs the ``build`` package and a package index.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_sdist_and_wheel_install_and_twistd_finds_the_plugin(tmp_path: Path) -> None:
    if importlib.util.find_spec("build") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the 'build' package is needed (test extra)", pytrace=False)
        pytest.skip("the 'build' package is not installed")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "packaging" / "check_dist.py"),
            "--outdir",
            str(tmp_path / "dist"),
            "--venv",
            str(tmp_path / "venv"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout.splitlines()[-1]
    # The wheel's plugin is the one twistd imported, with a regenerated cache beside it.
    (plugins,) = (tmp_path / "venv").glob("lib/python*/site-packages/twisted/plugins")
    assert (plugins / "v2d_plugin.py").exists() and (plugins / "dropin.cache").exists()
