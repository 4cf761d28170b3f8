"""
``v2d.aio.result_of``: a Deferred's result awaited from asyncio code, at once when it
has fired, through a Future otherwise; failures raised, cancellation passed on. Each
test runs on a private asyncio loop (never Twisted's global reactor).
"""

from __future__ import annotations

import asyncio

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from v2d.aio import result_of


def run(coro):
    return asyncio.run(coro)


def test_fired_value_without_a_future(monkeypatch):
    async def main():
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "create_future", lambda: pytest.fail("no Future for a fired Deferred"))
        return await result_of(succeed(7))

    assert run(main()) == 7


def test_fired_failure_is_raised_and_handled():
    d = fail(ValueError("bad"))

    async def main():
        with pytest.raises(ValueError, match="bad"):
            await result_of(d)

    run(main())
    assert d.result is None  # consumed: no "Unhandled error in Deferred" at collection


def test_pending_value_and_failure():
    async def main():
        loop = asyncio.get_running_loop()
        ok, bad = Deferred(), Deferred()
        loop.call_soon(ok.callback, "later")
        loop.call_soon(bad.errback, KeyError("k"))
        value = await result_of(ok)
        with pytest.raises(KeyError):
            await result_of(bad)
        return value

    assert run(main()) == "later"


def test_cancelling_the_task_cancels_the_deferred():
    cancelled = []
    d = Deferred(lambda _: cancelled.append(True))

    async def main():
        task = asyncio.ensure_future(result_of(d))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert cancelled == [True]
    assert d.called and d.result is None  # its CancelledError was consumed
