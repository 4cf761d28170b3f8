"""
Worker processes: models served in child processes, in their own Python environments.

The server side is built on Twisted's process support, in three pieces: ``_process``
(one child as a process), ``_client`` (its messages) and ``_restart`` (its back-off),
put together by ``_worker`` (``Worker``); ``_model`` (``WorkerModel``) spreads a model's
requests over its workers and ``_pool`` (``WorkerPool``) owns them all. The child side
(``v2d.workers._child``) and what both share (``_messages``, ``_wire``, ``_handshake``,
``_errors``) use only the standard library and numpy, because children import this
package from a zip in an environment that may have no Twisted. So the public names here
are imported lazily, on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WorkerModel", "WorkerModelFactory", "WorkerPool"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from v2d.workers import _pool

        return getattr(_pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
