"""
What the plain ``pytest`` runs: unit and integration tests, no Docker engine and no
packaging builds, nothing written outside the checkout and the system's temp dir.

The suites that start a Docker engine as root, debootstrap base images or build
distribution packages (markers ``docker`` and ``packaging``) run when
``V2D_TEST_ALL=1`` is set, as ``.ci/run`` does; otherwise they are skipped and say so.
"""

from __future__ import annotations

import os

import pytest

_OPT_IN = ("docker", "packaging")


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
