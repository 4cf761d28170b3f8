"""
Unit tests of the worker pool's process management, with a fake process reactor and
clock (no real children; ``tests/integration/test_workers.py`` runs real ones).

The test plays the child: it reads what the pool wrote to the child's fd 3 and
answers on fd 4 with the wire's own encoder.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np
import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from v2d._version import __version__
from v2d.errors import FailedPrecondition, InferenceError, Unavailable
from v2d.interfaces import IModel, IModelFactory, IWorkerPool
from v2d.settings import ModelSettings, Settings
from v2d.types import InferenceRequest, InferenceResponse, MetadataModelResponse
from v2d.workers import WorkerPool, _errors
from v2d.workers._handshake import describe
from v2d.workers._pool import CHILD_IN, CHILD_OUT, WorkerState, describe_exit
from v2d.workers._wire import WIRE_VERSION, FrameDecoder, encode_json, encode_message


class FakeProcess:
    """The transport of a spawned child: records writes, closed fds and signals."""

    def __init__(
        self, reactor: "FakeProcessReactor", protocol: Any, args: List[str], kw: Dict[str, Any]
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.args = args
        self.kw = kw
        self.pid = 1000 + len(reactor.processes)
        self.closed: List[int] = []
        self.signals: List[str] = []
        self.messages: List[Any] = []
        self.decoder = FrameDecoder(lambda kind, obj: self.messages.append(obj))

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == CHILD_IN and isinstance(data, bytes)
        self.decoder.feed(data)

    def closeChildFD(self, fd: int) -> None:
        self.closed.append(fd)

    def closeStdin(self) -> None:
        self.closeChildFD(0)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    # the test, as the child

    def reply(self, obj: Any) -> None:
        self.protocol.childDataReceived(CHILD_OUT, b"".join(bytes(c) for c in encode_message(obj)))

    def hello(self, **changes: Any) -> None:
        hello = {**describe(WIRE_VERSION, __version__), **changes}
        self.protocol.childDataReceived(CHILD_OUT, encode_json(hello))

    def last(self, op: str) -> Any:
        return [m for m in self.messages if isinstance(m, tuple) and m[0] == op][-1]

    def load(self, ready: bool = True) -> None:
        self.hello()
        _, rid, settings = self.last("load")
        meta = MetadataModelResponse(name=settings.name, platform="from-child")
        self.reply(("loaded", rid, {"ready": ready, "metadata": meta, "streaming": False}))

    def end(self, code: int = 0, sig: Any = None) -> None:
        reason = ProcessDone(0) if code == 0 and sig is None else ProcessTerminated(code, sig)
        self.protocol.processEnded(Failure(reason))


class FakeProcessReactor(MemoryReactorClock):
    """A clock that also 'spawns' processes (as in Twisted's procmon tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.processes: List[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: List[str] = (), **kw: Any) -> FakeProcess:
        process = FakeProcess(self, protocol, list(args), kw)
        self.processes.append(process)
        protocol.makeConnection(process)
        return process


@pytest.fixture
def reactor() -> FakeProcessReactor:
    return FakeProcessReactor()


@pytest.fixture
def pool(reactor, tmp_path) -> WorkerPool:
    return WorkerPool(
        reactor=reactor,
        settings=Settings(envs_dir=str(tmp_path / "envs")),
        run_blocking=lambda fn: maybeDeferred(fn),
        shm_threshold=0,
        environ={"PATH": "/usr/bin", "PYTHONPATH": "/server/site-packages"},
    )


def _settings(tmp_path, name: str = "m") -> ModelSettings:
    return ModelSettings(name=name, implementation="models.M", folder=str(tmp_path))


def _model(pool: WorkerPool, tmp_path, count: int = 1) -> Any:
    results: List[Any] = []
    pool.model_factory(_settings(tmp_path), count).create(_settings(tmp_path)).addBoth(results.append)
    return results[0]


def _loaded(pool, reactor, tmp_path, count: int = 1) -> Any:
    model = _model(pool, tmp_path, count)
    results: List[Any] = []
    model.load().addBoth(results.append)
    for process in reactor.processes:
        process.load()
    assert results == [True]
    return model


def _result(d) -> List[Any]:
    out: List[Any] = []
    d.addBoth(out.append)
    return out


def test_interfaces(pool, tmp_path):
    assert IWorkerPool.providedBy(pool)
    assert IModelFactory.providedBy(pool.model_factory(_settings(tmp_path), 2))
    assert IModel.providedBy(_model(pool, tmp_path))


def test_children_run_isolated_with_their_own_wire_fds(pool, reactor, tmp_path):
    model = _model(pool, tmp_path, count=2)
    model.load()
    assert len(reactor.processes) == 2
    process = reactor.processes[0]
    assert process.args[1:3] == ["-I", "-c"], "isolated mode: no server site-packages, no PYTHON* variables"
    assert process.args[-2:] == [str(CHILD_IN), str(CHILD_OUT)]
    assert process.kw["childFDs"] == {0: "w", 1: "r", 2: "r", CHILD_IN: "w", CHILD_OUT: "r"}
    assert "PYTHONPATH" not in process.kw["env"]
    assert 0 in process.closed, "the child's stdin is closed at once"


def test_handshake_then_load_then_ready(pool, reactor, tmp_path):
    model = _model(pool, tmp_path)
    loaded = _result(model.load())
    process = reactor.processes[0]
    assert process.messages == []
    process.hello()
    assert process.messages[0] == {"ok": True}
    op, rid, settings = process.messages[1]
    assert (op, settings.name) == ("load", "m")
    assert loaded == []
    process.reply(
        (
            "loaded",
            rid,
            {"ready": True, "metadata": MetadataModelResponse(name="m", platform="p"), "streaming": True},
        )
    )
    assert loaded == [True]
    assert model.ready and model.streaming
    assert model.metadata().platform == "p"


def test_incompatible_handshake_fails_the_load_naming_both_sides(pool, reactor, tmp_path):
    model = _model(pool, tmp_path)
    loaded = _result(model.load())
    process = reactor.processes[0]
    process.hello(python="3.8.10", numpy=None)
    assert process.messages[0]["ok"] is False
    assert CHILD_IN in process.closed
    failure = loaded[0]
    assert isinstance(failure, Failure) and failure.check(FailedPrecondition)
    message = str(failure.value)
    assert "Python 3.8.10" in message and f"v2d {__version__}" in message
    assert "install numpy>=" in message and "Python >= 3.9" in message
    process.end(2)
    assert model.workers[0].state is WorkerState.DEAD
    assert reactor.getDelayedCalls() == [], "no restart for a worker that never served"


def test_child_that_dies_while_starting_reports_its_last_words(pool, reactor, tmp_path):
    model = _model(pool, tmp_path)
    loaded = _result(model.load())
    process = reactor.processes[0]
    process.protocol.childDataReceived(2, b"Traceback (most recent call last):\n")
    process.protocol.childDataReceived(2, b"ImportError: no module named x\n")
    process.end(1)
    assert loaded[0].check(Unavailable)
    assert "exited with code 1 while starting" in str(loaded[0].value)
    assert "ImportError: no module named x" in str(loaded[0].value)


def test_load_error_from_the_runtime_fails_the_load(pool, reactor, tmp_path):
    model = _model(pool, tmp_path)
    loaded = _result(model.load())
    process = reactor.processes[0]
    process.hello()
    _, rid, _ = process.last("load")
    process.reply(("error", rid, _errors.describe(FileNotFoundError("weights.bin"))))
    assert str(loaded[0].value) == "weights.bin"
    assert type(loaded[0].value).__name__ == "FileNotFoundError"
    assert CHILD_IN in process.closed


def test_requests_go_to_the_least_busy_worker(pool, reactor, tmp_path):
    model = _loaded(pool, reactor, tmp_path, count=3)
    first = model.predict(InferenceRequest(id="a"))
    second = model.predict(InferenceRequest(id="b"))
    third = model.predict(InferenceRequest(id="c"))
    busy = [len([m for m in p.messages[1:] if m[0] == "predict"]) for p in reactor.processes]
    assert busy == [1, 1, 1]
    p0 = reactor.processes[0]
    _, rid, payload = p0.last("predict")
    p0.reply(("result", rid, InferenceResponse(model_name="m", id=payload.id)))
    model.predict(InferenceRequest(id="d"))
    assert p0.last("predict")[2].id == "d", "the only idle worker gets the next request"
    for d in (second, third):
        d.addErrback(lambda f: None)
    assert _result(first)[0].id in ("a", "b", "c")


def test_errors_come_back_as_the_same_kind(pool, reactor, tmp_path):
    model = _loaded(pool, reactor, tmp_path)
    process = reactor.processes[0]
    got = _result(model.predict(InferenceRequest()))
    rid = process.last("predict")[1]
    process.reply(("error", rid, _errors.describe(InferenceError("bad"))))
    assert isinstance(got[0].value, InferenceError) and str(got[0].value) == "bad"
    got = _result(model.predict(InferenceRequest()))
    process.reply(("error", process.last("predict")[1], _errors.describe(NotImplementedError("no"))))
    assert isinstance(got[0].value, NotImplementedError)


def test_a_dead_worker_fails_its_requests_at_once_and_comes_back(pool, reactor, tmp_path):
    model = _loaded(pool, reactor, tmp_path)
    process = reactor.processes[0]
    got = _result(model.predict(InferenceRequest()))
    process.end(sig=9)
    assert got[0].check(Unavailable)
    assert str(got[0].value) == "worker 0 of model 'm' (pid 1000) was killed by signal 9 (SIGKILL)"
    refused = _result(model.predict(InferenceRequest()))
    assert refused[0].check(Unavailable) and "restarting" in str(refused[0].value)
    reactor.advance(0.49)
    assert len(reactor.processes) == 1
    reactor.advance(0.01)
    assert len(reactor.processes) == 2, "restarted after the back-off"
    again = reactor.processes[1]
    again.load()
    assert again.last("load")[2].name == "m", "the model is loaded again"
    served = _result(model.predict(InferenceRequest(id="x")))
    again.reply(("result", again.last("predict")[1], InferenceResponse(model_name="m", id="x")))
    assert served[0].id == "x"


def test_stop_calls_off_a_pending_restart(pool, reactor, tmp_path):
    _loaded(pool, reactor, tmp_path)
    reactor.processes[0].end(sig=9)
    assert reactor.getDelayedCalls(), "a restart is scheduled"
    assert _result(pool.stop()) == [None]
    assert reactor.getDelayedCalls() == [], "stopping the pool leaves no timer behind"


def test_restart_back_off_doubles_and_resets_after_a_stable_run(pool, reactor, tmp_path):
    _loaded(pool, reactor, tmp_path)
    delays = []
    for _ in range(3):
        reactor.processes[-1].end(code=1)
        (call,) = reactor.getDelayedCalls()
        delays.append(call.getTime() - reactor.seconds())
        reactor.advance(delays[-1])
        reactor.processes[-1].load()
    assert delays == [0.5, 1.0, 2.0]
    reactor.advance(pool.stable_after)
    reactor.processes[-1].end(code=1)
    (call,) = reactor.getDelayedCalls()
    assert call.getTime() - reactor.seconds() == 0.5


def test_unload_ends_the_worker(pool, reactor, tmp_path):
    model = _loaded(pool, reactor, tmp_path)
    process = reactor.processes[0]
    done = _result(model.unload())
    op, rid, _ = process.messages[-1]
    assert op == "unload"
    assert CHILD_IN not in process.closed
    process.reply(("unloaded", rid, None))
    assert CHILD_IN in process.closed, "unloaded: its input closes, so it exits and frees its memory"
    assert done == []
    process.end(0)
    assert done == [None]
    assert reactor.getDelayedCalls() == []
    assert len(reactor.processes) == 1, "no restart after an unload"


def test_stop_closes_input_then_terms_then_kills(pool, reactor, tmp_path):
    _loaded(pool, reactor, tmp_path, count=2)
    a, b = reactor.processes
    stopped = _result(pool.stop())
    assert CHILD_IN in a.closed and CHILD_IN in b.closed
    a.end(0)
    assert stopped == []
    reactor.advance(pool.term_after)
    assert b.signals == ["TERM"] and a.signals == []
    reactor.advance(pool.kill_after)
    assert b.signals == ["TERM", "KILL"]
    assert stopped == []
    b.end(sig=9)
    assert stopped == [None]
    assert len(reactor.processes) == 2 and reactor.getDelayedCalls() == []


def test_stop_with_no_workers_fires_at_once(pool):
    assert _result(pool.stop()) == [None]


def test_child_output_is_relogged_line_by_line(pool, reactor, tmp_path):
    from twisted.logger import globalLogPublisher

    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        model = _model(pool, tmp_path)
        model.load()
        process = reactor.processes[0]
        process.protocol.childDataReceived(1, b"hello ")
        process.protocol.childDataReceived(1, b"world\npartial")
        process.protocol.childDataReceived(2, b"oops\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [(e["stream"], e["line"]) for e in events if "line" in e]
    assert lines == [("stdout", "hello world"), ("stderr", "oops")]
    assert all(e["model"] == "m" and e["worker"] == 0 for e in events if "line" in e)


def test_describe_exit():
    assert describe_exit(Failure(ProcessDone(0))) == "exited with code 0"
    assert describe_exit(Failure(ProcessTerminated(3))) == "exited with code 3"
    assert describe_exit(Failure(ProcessTerminated(None, 15))) == "was killed by signal 15 (SIGTERM)"


class _PipeWriter:
    """What the pool reads of Twisted's pipe writer: its fd and buffer state."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.connected = True
        self.disconnecting = False
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.offset = 0

    def fileno(self) -> int:
        return self.fd


class _PipeTransport:
    """A transport with a real pipe to the child (as spawnProcess makes) and a queue behind it."""

    def __init__(self, fd: int) -> None:
        self.pipes = {CHILD_IN: _PipeWriter(fd)}
        self.queued: List[bytes] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.queued.append(data)
        self.pipes[CHILD_IN]._tempDataLen += len(data)


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def test_requests_are_written_to_the_pipe_at_once_and_the_rest_queued_in_order():
    import fcntl

    from v2d.workers._process import _write_to_child

    r, w = os.pipe()
    try:
        for fd in (r, w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        transport = _PipeTransport(w)
        small = encode_message(("predict", 1, np.arange(4, dtype=np.float32)))
        _write_to_child(transport, small)
        assert not transport.queued  # straight into the pipe

        # bigger than the pipe holds: what it took, then the rest queued, in order
        big = encode_message(("predict", 2, np.ones(1 << 18, dtype=np.float64)))
        _write_to_child(transport, big)
        assert transport.queued
        # with bytes queued, nothing jumps the queue
        _write_to_child(transport, small)
        got = _drain(r) + b"".join(transport.queued)
        assert got == b"".join(bytes(c) for c in small + big + small)
    finally:
        os.close(r)
        os.close(w)
