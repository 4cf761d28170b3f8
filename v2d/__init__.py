"""
v2d: an Open Inference Protocol (V2) server for custom Python runtimes.

This package's top level stays light: it imports neither Twisted's reactor, Klein nor
grpc, so that worker children and users' runtimes can import it cheaply.
"""

from v2d._version import __version__
from v2d.runtime import MLModel

__all__ = ["MLModel", "__version__"]
