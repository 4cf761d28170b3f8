"""``mlserver.model``'s name: ``MLModel``, the base class of custom runtimes (v2d.runtime)."""

from v2d.runtime import MLModel

__all__ = ["MLModel"]
