"""
v2d: an Open Inference Protocol (V2) server for custom Python runtimes.

This package's top level stays light: it imports neither Twisted's reactor, Klein nor
grpc, so that worker children and users' runtimes can import it cheaply.
"""

from v2d._version import __version__
from v2d.runtime import MLModel

__all__ = ["MLModel", "__version__", "log", "register"]

#: Names served on first access, from the module that holds them (kept out of ``import v2d``).
_LAZY = {"log": "v2d.custom_metrics", "register": "v2d.custom_metrics"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'v2d' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
