"""
``DataPlane.infer`` for a model that has answered by the time ``predict`` returns (a
synchronous runtime) finishes the request at once: the same response or mapped error,
the same observation, the same in-flight count and drain, as for a model that answers
later. Each case runs both ways and the outcomes are compared. No reactor: Deferreds
fired by hand.
"""

from __future__ import annotations

from typing import Any, Callable, List

import numpy as np
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d.dataplane import NOT_ANSWERED, DataPlane, answer_of
from v2d.errors import InvalidArgument, V2DError
from v2d.interfaces import IModel
from v2d.types import InferenceRequest, InferenceResponse, RequestInput, RequestOutput, ResponseOutput


def _response(**kwargs: Any) -> InferenceResponse:
    return InferenceResponse(
        model_name="",
        outputs=[ResponseOutput(name="y", shape=[1], datatype="FP32", data=np.ones(1, np.float32))],
        **kwargs,
    )


@implementer(IModel)
class Model:
    """``predict`` answers with ``answer()`` at once (``now``) or when ``fire`` is called."""

    name = "m"
    version = "2"

    def __init__(self, answer: Callable[[], Any], now: bool) -> None:
        self.answer = answer
        self.now = now
        self.pending: List[Deferred] = []

    def predict(self, payload: InferenceRequest) -> Deferred:
        if self.now:
            return self._answered()
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def _answered(self) -> Deferred:
        try:
            return succeed(self.answer())
        except Exception as e:
            return fail(e)

    def fire(self) -> None:
        for d in self.pending:
            self._answered().chainDeferred(d)


class Registry:
    def __init__(self, model: Any) -> None:
        self.model = model

    def get(self, name: str, version: Any = None) -> Any:
        return self.model


def _request(outputs: Any = None, request_id: Any = "r1") -> InferenceRequest:
    return InferenceRequest(
        id=request_id,
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=np.ones(1, np.float32))],
        outputs=outputs,
    )


def _outcome(answer: Callable[[], Any], now: bool, request: InferenceRequest) -> Any:
    """(result or (error type, message), observed kinds, in flight after, calls left, drain fired)."""
    observed: List[Any] = []
    model = Model(answer, now)
    plane = DataPlane(registry=Registry(model), repository=None)
    plane.observer = lambda name, version, seconds, kind: observed.append((name, version, kind))
    d = plane.infer("m", None, request)
    drained = plane.drain(Clock(), 10)
    model.fire()
    out: List[Any] = []
    d.addBoth(out.append)
    result = out[0]
    if isinstance(result, Failure):
        assert isinstance(result.value, V2DError)
        result = (type(result.value), result.value.message)
    else:
        result = (result.model_name, result.model_version, result.id, [o.name for o in result.outputs])
    fired: List[Any] = []
    drained.addBoth(fired.append)
    return result, observed, plane.inflight, len(plane._calls), fired == [None]


def _not_a_response() -> Any:
    return {"y": 1}


def _raises() -> Any:
    raise ValueError("boom")


def _raises_v2d() -> Any:
    raise InvalidArgument("bad input")


@pytest.mark.parametrize(
    "answer, request_",
    [
        (_response, _request()),
        (lambda: _response(id="own"), _request(request_id=None)),
        (_response, _request(outputs=[RequestOutput(name="y")])),
        (_response, _request(outputs=[RequestOutput(name="z")])),  # not returned: InvalidArgument
        (_not_a_response, _request()),  # Internal, naming the model
        (_raises, _request()),  # Internal
        (_raises_v2d, _request()),  # as it is
    ],
)
def test_an_answer_at_once_ends_as_an_answer_later(answer, request_):
    now = _outcome(answer, True, request_)
    later = _outcome(answer, False, request_)
    assert now == later
    assert now[2:] == (0, 0, True)  # nothing in flight, no call kept, the drain done
    assert len(now[1]) == 1


def test_the_answer_at_once_is_observed_before_the_deferred_is_returned():
    observed: List[Any] = []
    plane = DataPlane(registry=Registry(Model(_response, True)), repository=None)
    plane.observer = lambda *args: observed.append(args[3])
    d = plane.infer("m", None, _request())
    assert observed == [None] and plane.inflight == 0
    assert d.called


def test_a_chained_deferred_that_has_not_fired_is_waited_for():
    inner: Deferred = Deferred()
    outer: Deferred = Deferred()
    outer.callback(None)
    outer.addCallback(lambda _: inner)  # outer is now paused on inner

    @implementer(IModel)
    class Chained(Model):
        def predict(self, payload: InferenceRequest) -> Deferred:
            return outer

    plane = DataPlane(registry=Registry(Chained(_response, True)), repository=None)
    out: List[Any] = []
    plane.infer("m", None, _request()).addBoth(out.append)
    assert plane.inflight == 1 and out == []
    inner.callback(_response())
    assert isinstance(out[0], InferenceResponse) and plane.inflight == 0


def test_answer_of_gives_only_a_value_a_deferred_has_fired_with():
    assert answer_of(succeed(5)) == 5
    assert answer_of(succeed(None)) is None
    assert answer_of(Deferred()) is NOT_ANSWERED
    failed = fail(ValueError("x"))
    assert answer_of(failed) is NOT_ANSWERED
    failed.addErrback(lambda _: None)
    waiting = succeed(1).addCallback(lambda _: Deferred())  # paused, waiting on another
    assert answer_of(waiting) is NOT_ANSWERED
