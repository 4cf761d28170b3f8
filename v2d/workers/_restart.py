"""
When a worker that died is started again: back-off on an injected clock.

``RestartPolicy`` is the procmon part of the worker layer (Twisted's
``runner/procmon.py`` keeps the same policy apart from its processes): the first
restart waits ``initial`` seconds, each failure after it doubles the wait up to
``maximum``, and a child that lived ``stable_after`` seconds starts the count again.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

__all__ = ["RestartPolicy"]


@attrs.define(eq=False)
class RestartPolicy:
    """The restarts of one worker; ``clock`` is an ``IReactorTime``."""

    clock: Any
    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 30.0
    failures: int = 0
    _call: Any = None

    @property
    def pending(self) -> bool:
        """Whether a restart is scheduled."""
        return self._call is not None and self._call.active()

    def delay(self, lived: float) -> float:
        """The wait before the next restart of a child that lived ``lived`` seconds (and count it)."""
        if lived >= self.stable_after:
            self.failures = 0
        delay = min(self.maximum, self.initial * (2**self.failures))
        self.failures += 1
        return delay

    def schedule(self, lived: float, restart: Callable[[], Any]) -> float:
        """Call ``restart`` after the back-off; the delay chosen."""
        self.cancel()
        delay = self.delay(lived)
        self._call = self.clock.callLater(delay, self._fire, restart)
        return delay

    def _fire(self, restart: Callable[[], Any]) -> None:
        self._call = None
        restart()

    def cancel(self) -> bool:
        """Call off a scheduled restart; whether there was one."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
            return True
        return False
