"""
The one seam between Twisted and asyncio.

The daemon runs Twisted on its asyncio reactor, so both share one loop. Runtimes'
``async def`` methods (asyncio semantics) and grpc.aio live on the asyncio side;
everything else speaks Deferreds. Only this module converts between the two.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.python.failure import Failure

__all__ = [
    "CANCELLATIONS",
    "NOT_ANSWERED",
    "answer_of",
    "as_deferred",
    "call",
    "as_future",
    "ensure_future",
    "result_of",
]

#: What cancelled work fails with, on either side of the seam.
CANCELLATIONS = (CancelledError, asyncio.CancelledError)


def ensure_future(
    awaitable: Awaitable[Any], loop: Optional[asyncio.AbstractEventLoop] = None
) -> asyncio.Future:
    """Schedule an awaitable on the loop (the running one unless given)."""
    return asyncio.ensure_future(awaitable, loop=loop)


def as_deferred(result: Any, loop: Optional[asyncio.AbstractEventLoop] = None) -> Deferred:
    """A Deferred for a plain value, a Deferred, or an awaitable (run on the loop)."""
    if isinstance(result, Deferred):
        return result
    if inspect.isawaitable(result):
        return Deferred.fromFuture(asyncio.ensure_future(result, loop=loop))
    return succeed(result)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """Call ``fn`` and return a Deferred of its result, whatever kind it returns or raises."""
    try:
        result = fn(*args, **kwargs)
    except BaseException:
        return fail()
    return as_deferred(result)


def as_future(d: Deferred, loop: Optional[asyncio.AbstractEventLoop] = None) -> asyncio.Future:
    """An asyncio Future for a Deferred (for awaiting Twisted work from asyncio code)."""
    if loop is None:
        loop = asyncio.get_event_loop()
    return d.asFuture(loop)


#: What ``answer_of`` gives for a Deferred that has no value (yet).
NOT_ANSWERED: Any = object()


def answer_of(d: Deferred) -> Any:
    """
    The value ``d`` has fired with, or ``NOT_ANSWERED`` if it has not fired, waits on
    another Deferred (it is paused then) or failed: a synchronous model's answer,
    taken without a callback.
    """
    if d.called and not d.paused and not isinstance(d.result, Failure):
        return d.result
    return NOT_ANSWERED


def _kept(result: Any, box: list) -> Any:
    box.append(result)
    return result


async def result_of(d: Deferred, loop: Optional[asyncio.AbstractEventLoop] = None) -> Any:
    """
    Await a Deferred's result from asyncio code. A Deferred that has fired already (a
    synchronous model's answer) gives its result at once, with no Future and no trip
    through the loop; otherwise as ``as_future`` (cancelling the awaiting task cancels it).
    """
    answer = answer_of(d)
    if answer is not NOT_ANSWERED:
        return answer
    fired: list = []
    d.addBoth(_kept, fired)
    if not fired:
        return await as_future(d, loop or asyncio.get_running_loop())
    result = fired[0]
    if isinstance(result, Failure):
        d.addErrback(lambda _: None)  # raised here: handled
        result.raiseException()
    return result
