"""
MLServer's ``mlserver.utils`` names a runtime uses: ``get_model_uri`` (v2d.uris), the
header helpers ``insert_headers`` / ``extract_headers`` (v2d.headers), and
``AsyncManager``, which runs a coroutine on a new loop (uvloop's where installed) for
scripts written against MLServer. The server itself runs on Twisted's loop.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import asyncio
import uuid
from enum import Enum
from typing import Any, Callable, Coroutine, Optional

from v2d.headers import extract_headers, insert_headers
from v2d.uris import get_model_uri, to_absolute_path

__all__ = [
    "AsyncManager",
    "EventLoopBackend",
    "extract_headers",
    "generate_uuid",
    "get_model_uri",
    "insert_headers",
    "to_absolute_path",
]


class EventLoopBackend(Enum):
    """Which loop ``AsyncManager`` runs coroutines on."""

    ASYNCIO_DEFAULT = 1
    UVLOOP = 2


class AsyncManager:
    """Runs a coroutine to completion on a new event loop (uvloop's where it is installed)."""

    def __init__(self, signal_handle_config_fn: Optional[Callable[[Any], None]] = None) -> None:
        self._configure = signal_handle_config_fn
        try:
            import uvloop  # noqa: F401
        except ImportError:
            self._backend = EventLoopBackend.ASYNCIO_DEFAULT
        else:
            self._backend = EventLoopBackend.UVLOOP

    @property
    def event_loop_backend(self) -> EventLoopBackend:
        """The loop implementation ``run`` uses."""
        return self._backend

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop
        if self._backend is EventLoopBackend.UVLOOP:
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        if self._configure is not None:
            self._configure(loop)
        return loop

    def run(self, coro: Coroutine[Any, Any, Any], *, debug: Optional[bool] = None) -> Any:
        """Run ``coro`` on a new loop, close the loop, return the coroutine's result."""
        loop = self._new_loop()
        if debug is not None:
            loop.set_debug(debug)
        try:
            return loop.run_until_complete(coro)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()


def generate_uuid() -> str:
    """A random UUID as text (MLServer's request ids)."""
    return str(uuid.uuid4())
