"""
``tritonclient.utils.shared_memory`` for tests, importable without setuptools.

That module asks ``pkg_resources`` (setuptools) only for the path of its bundled C
library; a virtualenv without setuptools gets a stand-in that answers from the
package's own folder, for that import only. Nothing else is changed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

__all__ = ["shared_memory"]


def _resource_filename(package: str, name: str) -> str:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return os.path.join(list(spec.submodule_search_locations)[0], name)


def shared_memory() -> Any:
    """The ``tritonclient.utils.shared_memory`` module."""
    stand_in = None
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stand_in
    try:
        import tritonclient.utils.shared_memory as shm
    finally:
        # the module keeps its own reference; others (pytest's monkeypatch among them)
        # must not find a partial pkg_resources
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]
    return shm
