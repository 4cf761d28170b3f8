"""
The rest of a coroutine that was run in place up to its first wait.

Running a handler's coroutine with ``coro.send(None)`` answers a call that never waits
without a task or a pass of the loop; when it does wait, ``Resumed(coro, waiting)`` is
an awaitable for the rest (await it, or make it a task), the first thing it waits on
included. Used by the MLServer adapter and the h2 gRPC engine. Child-safe: the
standard library only, Python 3.9 and up.
"""

from typing import Any

__all__ = ["Resumed"]


class Resumed:
    """The rest of ``coro``, which has yielded ``waiting`` from its first step."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Any, waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Any:
        coro, value = self.coro, self.waiting
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the task (a cancellation)
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return done.value
