"""
Shutdown bounds and readiness that follows workers, in memory: the drain's deadline
answers what is still in flight ``Unavailable``; the pool TERMs then KILLs a worker
whose unload hangs; a reload's old worker finishes its requests before it unloads;
readiness, strict server readiness and the repository index follow a provider's
``unavailable``; a model folder's fingerprint changes with its files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from tests.unit.test_registry import FakeFactory, result_of, settings
from tests.unit.test_workers import _loaded, _result, pool, reactor  # noqa: F401 - fixtures
from v2d.dataplane import DataPlane
from v2d.errors import Unavailable
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.service import KILL_GRACE, V2DService, folder_fingerprint
from v2d.settings import Settings
from v2d.types import InferenceRequest, InferenceResponse
from v2d.workers._pool import CHILD_IN


def _plane(tmp_path) -> Any:
    factory = FakeFactory()
    registry = ModelRegistry(factory_for=lambda s: factory)
    model = result_of(registry.load(settings("m")))
    return DataPlane(registry=registry, repository=ModelRepository(str(tmp_path), environ={})), model


def test_drain_deadline_answers_what_is_in_flight_unavailable(tmp_path):
    plane, model = _plane(tmp_path)
    late = _result(plane.infer("m", None, InferenceRequest()))
    clock = Clock()
    drained = _result(plane.drain(clock, 5))
    clock.advance(4.9)
    assert late == [] and drained == []
    clock.advance(0.1)
    assert drained == [None]
    (failure,) = late
    assert isinstance(failure.value, Unavailable)
    assert "shutting down: request still in flight after 5s" in str(failure.value)
    assert plane.inflight == 0
    model.pending.pop().callback(InferenceResponse(model_name="m"))  # a late answer is dropped quietly
    assert clock.getDelayedCalls() == []


def test_drain_waits_for_counted_calls_and_cancels_them_at_its_deadline(tmp_path):
    plane, _ = _plane(tmp_path)
    finishing, hanging = Deferred(), Deferred()
    answers = [], []
    plane.counted(finishing, answers[0].append)
    plane.counted(hanging, answers[1].append)
    assert plane.inflight == 2
    clock = Clock()
    drained = _result(plane.drain(clock, 5))
    finishing.callback({"ok": True})
    assert answers[0] == [{"ok": True}] and drained == []
    clock.advance(5)
    assert drained == [None] and plane.inflight == 0
    (failure,) = answers[1]
    assert isinstance(failure.value, Unavailable), "cancelled at the deadline, answered as requests are"
    assert "still in flight after 5s" in str(failure.value)


def test_drain_that_empties_in_time_leaves_no_timer(tmp_path):
    plane, model = _plane(tmp_path)
    done = _result(plane.infer("m", None, InferenceRequest()))
    clock = Clock()
    drained = _result(plane.drain(clock, 5))
    model.pending.pop().callback(InferenceResponse(model_name="m"))
    assert drained == [None] and done[0].model_name == "m"
    assert clock.getDelayedCalls() == []


class Wrapper:
    """A wrapper of a model (as batching's): readiness asks the model, not the wrapper."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = model.name


def test_readiness_follows_the_provider(tmp_path):
    factory = FakeFactory()
    registry = ModelRegistry(factory_for=lambda s: factory, wrap=Wrapper)
    result_of(registry.load(settings("m")))
    result_of(registry.load(settings("n")))
    plane = DataPlane(registry=registry, repository=ModelRepository(str(tmp_path), environ={}), started=True)
    (m, _) = factory.made
    assert plane.model_ready("m") and plane.ready()
    m.unavailable = "model 'm' has no worker ready (worker 0 was killed by signal 9 (SIGKILL), restarting)"
    assert not plane.model_ready("m") and plane.model_ready("n")
    assert not plane.ready(), "strict readiness: a loaded model cannot serve"
    index = {e["name"]: e for e in plane.repository_index()}
    assert index["m"]["state"] == "UNAVAILABLE" and "SIGKILL" in index["m"]["reason"]
    assert index["n"]["state"] == "READY"
    assert [e["name"] for e in plane.repository_index(ready_only=True)] == ["n"]
    m.unavailable = None
    assert plane.model_ready("m") and plane.ready()
    assert {e["state"] for e in plane.repository_index()} == {"READY"}


def test_shutdown_terms_then_kills_a_worker_whose_unload_hangs(pool, reactor, tmp_path):  # noqa: F811
    model = _loaded(pool, reactor, tmp_path)
    (process,) = reactor.processes
    pool.shutting_down()
    unloaded = _result(model.unload())
    assert process.last("unload"), "the unload is asked for"
    reactor.advance(pool.term_after)
    assert process.signals == ["TERM"]
    reactor.advance(pool.kill_after)
    assert process.signals == ["TERM", "KILL"]
    assert unloaded == []
    process.end(sig=9)
    assert unloaded == [None]
    assert _result(pool.stop()) == [None]
    assert reactor.getDelayedCalls() == [] and len(reactor.processes) == 1, "no restart while stopping"


def test_unload_waits_for_requests_in_flight(pool, reactor, tmp_path):  # noqa: F811
    model = _loaded(pool, reactor, tmp_path)
    (process,) = reactor.processes
    answer = _result(model.predict(InferenceRequest()))
    _, rid, _ = process.last("predict")
    unloaded = _result(model.unload())
    assert not any(isinstance(m, tuple) and m[0] == "unload" for m in process.messages), "not yet"
    process.reply(("result", rid, InferenceResponse(model_name="m")))
    assert answer[0].model_name == "m"
    _, unload_rid, _ = process.last("unload")
    process.reply(("unloaded", unload_rid, None))
    assert CHILD_IN in process.closed
    process.end(0)
    assert unloaded == [None]


def test_unload_waits_no_longer_than_the_shutdown_timeout(pool, reactor, tmp_path):  # noqa: F811
    model = _loaded(pool, reactor, tmp_path)
    (process,) = reactor.processes
    model.predict(InferenceRequest())
    model.unload()
    reactor.advance(pool.settings.shutdown_timeout)
    assert process.last("unload")


def test_worker_model_says_why_it_cannot_serve(pool, reactor, tmp_path):  # noqa: F811
    model = _loaded(pool, reactor, tmp_path)
    assert model.unavailable is None
    reactor.processes[0].end(sig=9)
    assert "worker 0 was killed by signal 9 (SIGKILL), restarting" in model.unavailable
    reactor.advance(pool.restart_initial)
    assert model.unavailable is not None, "starting again is not ready yet"
    reactor.processes[1].load()
    assert model.unavailable is None


def test_folder_fingerprint_follows_files(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "models.py").write_text("A = 1\n")
    (folder / "__pycache__").mkdir()
    first = folder_fingerprint([str(folder)])
    (folder / "__pycache__" / "models.pyc").write_bytes(b"x")
    (folder / ".hidden").write_text("x")
    assert folder_fingerprint([str(folder)]) == first, "caches and hidden files do not count"
    st = os.stat(folder / "models.py")
    os.utime(folder / "models.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = folder_fingerprint([str(folder)])
    assert second != first
    (folder / "weights.bin").write_bytes(b"w")
    assert folder_fingerprint([str(folder)]) not in (first, second)


NUMBERED = """
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Numbered(MLModel):
    def predict(self, payload):
        data = np.array([{number}])
        return InferenceResponse(
            model_name=self.name, outputs=[ResponseOutput(name="n", shape=[1], datatype="INT64", data=data)]
        )
"""


def _write(root, name: str, number: int) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"name": name, "implementation": "models.Numbered"}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    (folder / "models.py").write_text(NUMBERED.format(number=number))
    # a second's step in mtime, whatever the file system's resolution
    os.utime(folder / "models.py", (time.time() + number, time.time() + number))


def _number(service: Any, name: str) -> int:
    response = result_of(service.dataplane.infer(name, None, InferenceRequest()))
    return int(response.outputs[0].data[0])


def test_sighup_reload_follows_the_repository(tmp_path):
    root = tmp_path / "models"
    for name in ("changed", "same", "gone"):
        _write(root, name, 1)
    settings = Settings(models=str(root), grpc=None, rest=[], envs_dir="unused")
    service = V2DService(settings, Clock(), environ={})
    service.running = True
    service._fingerprints = service._fingerprint_all()
    result_of(service.dataplane.load_all())
    same = service.registry.get("same")
    result_of(service.dataplane.unload_model("gone"))
    _write(root, "changed", 2)
    _write(root, "new", 3)
    shutil.rmtree(root / "gone")
    assert result_of(service.reload_repository()) is None
    assert (_number(service, "changed"), _number(service, "new")) == (2, 3)
    assert service.registry.get("same") is same, "an unchanged model is left alone"
    states = {name: versions[0][1:] for name, versions in service.registry.states().items()}
    assert states["gone"] == ("UNAVAILABLE", "unloaded")

    shutil.rmtree(root / "same")
    result_of(service.reload_repository())
    assert not service.registry.ready("same"), "a model whose folder is gone is unloaded"
    assert _number(service, "changed") == 2


class ClosingPort:
    """A listening port whose closing takes a while: ``stopListening``'s Deferred fires when the test says."""

    def __init__(self, events: List[str], number: int) -> None:
        self.events = events
        self.number = number
        self.closing: Optional[Deferred] = None

    def stopListening(self) -> Deferred:
        self.events.append(f"close {self.number}")
        self.closing = Deferred()
        self.closing.addCallback(lambda _: self.events.append(f"closed {self.number}"))
        return self.closing

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.number)


class SlowClosingReactor(MemoryReactorClock):
    """A memory reactor whose TCP ports close when the test fires them."""

    def __init__(self) -> None:
        super().__init__()
        self.events: List[str] = []
        self.listening: List[ClosingPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> ClosingPort:
        super().listenTCP(port, factory, backlog, interface)
        closing = ClosingPort(self.events, 8000 + len(self.listening))
        self.listening.append(closing)
        return closing


class RecordingPool:
    """The worker pool's shutdown side, recorded."""

    def __init__(self, events: List[str]) -> None:
        self.events = events

    def shutting_down(self) -> None:
        self.events.append("workers: shutting down")

    def stop(self) -> Deferred:
        self.events.append("workers: stop")
        return succeed(None)

    def live(self) -> List[Any]:
        return []


def _service_listening(tmp_path, monkeypatch) -> Any:
    """A started service on a SlowClosingReactor: two REST listeners and a metrics one, model m loaded."""
    slow = SlowClosingReactor()
    config = Settings(
        models=str(tmp_path),
        rest=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.2"],
        metrics="tcp:0:interface=127.0.0.1",
        grpc=None,
        envs_dir="unused",
        retain_memory=0,
        shutdown_timeout=10,
    )
    service = V2DService(config, slow, environ={})
    factory = FakeFactory()
    service.registry.factory_for = lambda s: factory
    service.worker_pool = RecordingPool(slow.events)
    real_drain, real_unload_all = DataPlane.drain, ModelRegistry.unload_all

    def drain(plane: DataPlane, clock: Any, timeout: float) -> Deferred:
        slow.events.append(f"drain ({plane.inflight} in flight)")
        return real_drain(plane, clock, timeout).addCallback(lambda _: slow.events.append("drained"))

    def unload_all(registry: ModelRegistry) -> Deferred:
        slow.events.append("unload models")
        return real_unload_all(registry)

    monkeypatch.setattr(DataPlane, "drain", drain)
    monkeypatch.setattr(ModelRegistry, "unload_all", unload_all)
    service.startService()
    assert len(slow.listening) == 3 and len(slow.tcpServers) == 3
    result_of(service.registry.load(settings("m")))
    return service, slow, factory.made[0]


def test_stop_closes_every_listener_then_drains_unloads_and_stops_workers(tmp_path, monkeypatch):
    service, slow, model = _service_listening(tmp_path, monkeypatch)
    answer = _result(service.dataplane.infer("m", None, InferenceRequest()))
    stopped = _result(service.stopService())
    assert slow.events == ["close 8000", "close 8001", "close 8002"]
    slow.advance(5)
    for port in slow.listening[:2]:
        port.closing.callback(None)
    assert stopped == [] and "drain (1 in flight)" not in slow.events, "the metrics listener is open"
    slow.listening[2].closing.callback(None)
    assert slow.events[-1] == "drain (1 in flight)" and stopped == []
    model.pending.pop().callback(InferenceResponse(model_name="m"))
    assert answer[0].model_name == "m", "the request in flight is answered"
    assert slow.events[3:] == [
        "closed 8000",
        "closed 8001",
        "closed 8002",
        "drain (1 in flight)",
        "drained",
        "workers: shutting down",
        "unload models",
        "workers: stop",
    ]
    assert model.unloaded and stopped == [None]
    assert slow.getDelayedCalls() == [], "the shutdown's bound is cancelled"


def test_stop_is_bounded_when_a_listener_never_closes(tmp_path, monkeypatch):
    service, slow, model = _service_listening(tmp_path, monkeypatch)
    stopped = _result(service.stopService())
    for port in slow.listening[1:]:
        port.closing.callback(None)
    bound = service.settings.shutdown_timeout + KILL_GRACE + 1.0
    slow.advance(bound - 0.1)
    assert stopped == [] and not any(e.startswith("drain") for e in slow.events)
    slow.advance(0.1)
    assert stopped == [None], "stopService fires at its bound whatever hangs"
