"""
What the plain ``pytest`` runs: unit and integration tests, no Docker engine and no
packaging builds, nothing written outside the checkout and the system's temp dir (the
pip cache of the virtualenvs the tests build included).

The suites that start a Docker engine as root, debootstrap base images or build
distribution packages (markers ``docker`` and ``packaging``) run when
``V2D_TEST_ALL=1`` is set, as ``.ci/run`` does; otherwise they are skipped and say so.
"""

from __future__ import annotations

import os
import tempfile

import pytest

_OPT_IN = ("docker", "packaging")


def pytest_configure(config: pytest.Config) -> None:
    # Virtualenvs the tests build (MLServer's, worker environments) install through pip:
    # its cache goes under the temp dir too, unless the caller chose one.
    os.environ.setdefault(
        "PIP_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"v2d-tests-{os.getuid()}", "pip-cache")
    )


def _all_suites() -> bool:
    return os.environ.get("V2D_TEST_ALL", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if _all_suites():
        return
    skip = pytest.mark.skip(
        reason="starts a Docker engine or builds packages: set V2D_TEST_ALL=1 to run it (.ci/run does)"
    )
    for item in items:
        if any(item.get_closest_marker(name) for name in _OPT_IN):
            item.add_marker(skip)
