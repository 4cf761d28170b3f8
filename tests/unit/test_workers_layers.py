"""
The worker layer's pieces on their own: the restart policy on a ``Clock``, the process
protocol's TERM-then-KILL on a ``Clock``, the wire client's multiplexing and
cancelling, the message vocabulary and its dispatch tables, errors crossing the pipe
as themselves, and the child cancelling a task and awaiting a runtime's Deferred.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any, List

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.unit.test_workers import _loaded, _result, pool, reactor  # noqa: F401 - fixtures
from tests.unit.test_workers_custom import child_answers
from v2d import errors
from v2d.runtime import MLModel
from v2d.runtimes import mark_loaded, needs_twisted
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest
from v2d.workers import _errors
from v2d.workers._child import ChildServer, _awaitable
from v2d.workers._client import WireClient
from v2d.workers._messages import REQUESTS, Op, dispatch, message, table
from v2d.workers._process import CHILD_IN, WorkerProcess
from v2d.workers._restart import RestartPolicy
from v2d.workers._wire import FrameDecoder, encode_message

# -- the restart policy ------------------------------------------------------------------


def test_restart_policy_doubles_caps_and_resets_on_a_clock():
    clock = Clock()
    policy = RestartPolicy(clock, initial=1.0, maximum=5.0, stable_after=10.0)
    assert [policy.delay(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(10.0) == 1.0, "a child that lived long enough starts the count again"
    ran: List[int] = []
    assert policy.schedule(0.0, lambda: ran.append(1)) == 2.0
    assert policy.pending
    clock.advance(1.9)
    assert ran == []
    clock.advance(0.1)
    assert ran == [1] and not policy.pending
    policy.schedule(0.0, lambda: ran.append(2))
    assert policy.cancel() is True and not policy.pending
    clock.advance(60)
    assert ran == [1] and clock.getDelayedCalls() == []
    assert policy.cancel() is False


# -- the process -------------------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.closed: List[int] = []
        self.signals: List[str] = []

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


def _process(clock: Clock) -> tuple:
    ended: List[Failure] = []
    process = WorkerProcess(clock, "m", 0, lambda data: None, ended.append)
    transport = _Transport()
    process.makeConnection(transport)  # type: ignore[arg-type]
    process.running = True
    return process, transport, ended


def test_process_stop_closes_input_then_terms_then_kills_on_its_clock():
    clock = Clock()
    process, transport, ended = _process(clock)
    first, second = process.stop(3.0, 2.0), process.stop(3.0, 2.0)
    assert transport.closed == [CHILD_IN]
    clock.advance(2.9)
    assert transport.signals == []
    clock.advance(0.1)
    assert transport.signals == ["TERM"]
    clock.advance(2.0)
    assert transport.signals == ["TERM", "KILL"]
    assert _result(first) == [] and _result(second) == []
    process.processEnded(Failure(ProcessDone(0)))
    assert len(ended) == 1 and first.called and second.called
    assert clock.getDelayedCalls() == [] and _result(process.exited()) == [None]


def test_process_that_exits_in_time_gets_no_signal():
    clock = Clock()
    process, transport, _ = _process(clock)
    process.stop(3.0, 2.0)
    process.processEnded(Failure(ProcessDone(0)))
    clock.advance(10)
    assert transport.signals == [] and clock.getDelayedCalls() == []


# -- the wire client ---------------------------------------------------------------------


class _Child:
    """The other end of a WireClient: what it was sent, and replies."""

    def __init__(self) -> None:
        self.sent: List[Any] = []
        self.broken: List[str] = []
        self.decoder = FrameDecoder(lambda kind, obj: self.sent.append(obj))
        self.client = WireClient(self.write, None, lambda hello: None, lambda batch: None, self.broken.append)

    def write(self, chunks: List[Any]) -> None:
        self.decoder.feed(b"".join(bytes(c) for c in chunks))

    def reply(self, op: Op, rid: int, body: Any = None) -> None:
        self.client.feed(b"".join(bytes(c) for c in encode_message(message(op, rid, body))))


def test_client_multiplexes_replies_by_request_id():
    child = _Child()
    a, b = child.client.call(Op.PREDICT, "a"), child.client.call(Op.PREDICT, "b")
    assert child.sent == [("predict", 1, "a"), ("predict", 2, "b")] and child.client.load == 2
    child.reply(Op.RESULT, 2, "B")
    child.reply(Op.RESULT, 1, "A")
    assert _result(a) == ["A"] and _result(b) == ["B"] and child.client.load == 0


def test_cancelling_a_call_tells_the_child_and_drops_its_late_answer():
    child = _Child()
    d = child.client.call(Op.PREDICT, "slow")
    settled = child.client.settled()
    d.cancel()
    got = _result(d)
    assert got[0].check(CancelledError)
    assert child.sent[-1] == ("cancel", 1, None)
    assert child.client.load == 0 and settled.called
    child.reply(Op.RESULT, 1, "late")  # the child answered before it saw the cancel
    assert len(got) == 1 and child.broken == []


def test_cancelling_after_the_child_is_gone_sends_nothing():
    child = _Child()
    d = child.client.call(Op.PREDICT, "x")
    child.client.fail_all(errors.Unavailable("gone"))
    assert _result(d)[0].check(errors.Unavailable)
    d.cancel()
    assert child.sent == [("predict", 1, "x")]


def test_cancelling_a_worker_models_predict_sends_cancel(pool, reactor, tmp_path):  # noqa: F811
    model = _loaded(pool, reactor, tmp_path)
    process = reactor.processes[0]
    d = model.predict(InferenceRequest(id="a"))
    rid = process.last("predict")[1]
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert process.last("cancel") == ("cancel", rid, None)
    assert model.workers[0].load == 0


def test_client_unknown_op_is_a_broken_wire():
    child = _Child()
    child.client.feed(b"".join(bytes(c) for c in encode_message(("nonsense", 1, None))))
    assert child.broken == ["unknown operation 'nonsense'"]


# -- messages ----------------------------------------------------------------------------


def test_every_op_travels_as_a_distinct_plain_string():
    values = [op.value for op in Op]
    assert len(set(values)) == len(values) and all(type(v) is str for v in values)
    assert message(Op.PREDICT, 4, "x") == ("predict", 4, "x")
    assert REQUESTS <= set(Op)


def test_dispatch_by_table():
    calls: List[Any] = []
    handlers = table({Op.PREDICT: lambda rid, body: calls.append((rid, body))})
    dispatch(handlers, ("predict", 3, "p"), lambda op, rid: calls.append(("unknown", op)))
    dispatch(handlers, ("what", 3, None), lambda op, rid: calls.append(("unknown", op)))
    assert calls == [(3, "p"), ("unknown", "what")]


def test_child_and_client_tables_cover_their_directions():
    child_ops = {Op.LOAD, Op.PREDICT, Op.INFER_ENCODED, Op.CUSTOM, Op.CANCEL, Op.STREAM_OPEN,
                 Op.STREAM_ITEM, Op.STREAM_CLOSE, Op.STREAM_CANCEL, Op.UNLOAD, Op.RELEASE}
    server_ops = {Op.LOADED, Op.RESULT, Op.ERROR, Op.STREAM_ITEM, Op.STREAM_END, Op.UNLOADED,
                  Op.RELEASE, Op.METRICS}
    loop = asyncio.new_event_loop()
    try:
        assert set(ChildServer(loop, -1, None)._table) == {op.value for op in child_ops}
    finally:
        loop.close()
    assert set(_Child().client._table) == {op.value for op in server_ops}
    assert child_ops | server_ops == set(Op)


# -- errors across the pipe ----------------------------------------------------------------


def _across(exc: BaseException) -> Exception:
    return _errors.rebuild(pickle.loads(pickle.dumps(_errors.describe(exc))))


def test_v2d_errors_cross_as_themselves_without_a_double_wrap():
    back = _across(errors.ModelNotFound("x", "2"))
    assert type(back) is errors.ModelNotFound
    assert str(back) == "model 'x' version '2' not found" and back.status_code == 404
    assert back.kind == "NOT_FOUND"


def test_a_models_own_v2d_error_crosses_as_v2ds_nearest_class():
    class Missing(errors.NotFound):
        pass

    class Teapot(errors.MLServerError):
        pass

    back = _across(Missing("no such thing"))
    assert type(back) is errors.NotFound and str(back) == "no such thing"
    teapot = _across(Teapot("short", 418))
    assert isinstance(teapot, errors.MLServerError) and teapot.status_code == 418


def test_other_exceptions_cross_with_their_type_name():
    back = _across(KeyError("weights"))
    assert type(back).__name__ == "KeyError" and isinstance(back, _errors.WorkerError)
    assert type(_across(NotImplementedError("no"))) is NotImplementedError


def test_a_received_non_exception_is_an_internal_error():
    assert isinstance(_errors.rebuild({"odd": 1}), errors.Internal)


# -- the child: cancel, Deferreds, errors ------------------------------------------------


class _Slow(MLModel):
    started = 0
    cancelled = 0

    async def predict(self, payload: Any) -> Any:
        type(self).started += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            type(self).cancelled += 1
            raise


class _Deferring(MLModel):
    def predict(self, payload: Any) -> Any:
        d: Deferred = Deferred()
        asyncio.get_event_loop().call_later(0.01, d.callback, "later")
        return d


class _Missing(MLModel):
    def predict(self, payload: Any) -> Any:
        raise errors.ModelNotFound("x", "2")


def _child_answers(runtime_cls: type, *messages: Any) -> List[Any]:
    runtime = runtime_cls(ModelSettings(name="child-model", implementation="x.Y"))
    return child_answers(runtime, *messages, wait=0.05)


def test_child_cancels_the_task_of_a_cancelled_request_and_answers_nothing():
    got = _child_answers(_Slow, ("predict", 5, InferenceRequest()), ("cancel", 5, None))
    assert _Slow.started == 1 and _Slow.cancelled == 1
    assert got == []


def test_child_awaits_a_runtimes_deferred():
    got = _child_answers(_Deferring, ("predict", 6, InferenceRequest()))
    assert got == [("result", 6, "later")]


def test_child_sends_a_v2d_error_as_itself():
    (op, rid, error), = _child_answers(_Missing, ("predict", 7, InferenceRequest()))
    assert (op, rid) == ("error", 7)
    assert type(error) is errors.ModelNotFound and str(error) == "model 'x' version '2' not found"


def test_awaitable_of_a_plain_value_and_a_fired_deferred():
    loop = asyncio.new_event_loop()
    try:
        fired: Deferred = Deferred()
        fired.callback(3)
        assert loop.run_until_complete(_awaitable(fired, loop)) == 3
        assert loop.run_until_complete(_awaitable(4, loop)) == 4
    finally:
        loop.close()


# -- runtimes: the rules shared by LocalModel and the child ------------------------------


@pytest.mark.parametrize("result, ready", [(None, True), (True, True), (False, False), ("x", True)])
def test_the_ready_rule(result, ready):
    class R:
        ready = None

    runtime = R()
    assert mark_loaded(runtime, result) is ready and runtime.ready is ready


def test_a_missing_twisted_is_one_clear_line():
    line = needs_twisted("m", ModuleNotFoundError("No module named 'twisted'", name="twisted"))
    assert line is not None and "model 'm'" in line and "install twisted" in line and "\n" not in line
    assert needs_twisted("m", ModuleNotFoundError("No module named 'pandas'", name="pandas")) is None
    assert needs_twisted("m", ValueError("twisted")) is None


class _LateTwisted(MLModel):
    def predict(self, payload: Any) -> Any:
        raise ModuleNotFoundError("No module named 'twisted'", name="twisted")


def test_a_call_needing_a_missing_twisted_fails_in_one_line():
    (op, rid, error), = _child_answers(_LateTwisted, ("predict", 8, InferenceRequest()))
    assert (op, rid) == ("error", 8) and isinstance(error, errors.FailedPrecondition)
    assert str(error).startswith("model 'child-model' uses Twisted")


def test_the_childs_reactor_is_installed_on_its_loop_only_when_imported():
    # a process of its own: installing a reactor is global to a process
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import asyncio, sys
        from v2d.workers._child import run_twisted
        loop = asyncio.new_event_loop()
        assert run_twisted(loop)
        import twisted.internet.defer
        assert "twisted.internet.reactor" not in sys.modules, "nothing paid before it is used"
        from twisted.internet import reactor
        from twisted.internet.task import deferLater
        assert reactor._asyncioEventloop is loop and reactor.running
        print(loop.run_until_complete(deferLater(reactor, 0.01, lambda: 42).asFuture(loop)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
