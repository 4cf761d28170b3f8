"""Reports of model calls that hold the event loop, and the ``run_in_thread`` setting."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.logger import LogLevel, globalLogPublisher

import v2d.tap
from v2d.settings import ModelSettings, Settings, SettingsError
from v2d.tap import Options
from v2d.wrappers import LocalModel, LoopWatch, ModelThreads, _Timed


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def warnings():
    events: List[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") == LogLevel.warn and "model" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_a_sync_call_longer_than_the_threshold_is_reported_with_the_model(warnings):
    clock = FakeClock()
    watch = LoopWatch(1.0, clock)

    def slow(x: int) -> int:
        clock.now += 1.5
        return x + 1

    results: List[Any] = []
    watch.call("sleepy", "predict", slow, 1).addCallback(results.append)
    assert results == [2]
    assert [(e["model"], e["method"], e["seconds"]) for e in warnings] == [("sleepy", "predict", 1.5)]


def test_quick_calls_failures_and_a_zero_threshold(warnings):
    clock = FakeClock()

    def quick() -> None:
        clock.now += 0.5

    def broken() -> None:
        clock.now += 3
        raise ValueError("nope")

    LoopWatch(1.0, clock).call("m", "predict", quick)
    failures: List[Any] = []
    LoopWatch(1.0, clock).call("m", "load", broken).addErrback(failures.append)
    assert failures[0].check(ValueError) and [e["method"] for e in warnings] == ["load"]
    LoopWatch(0, clock).call("m", "predict", broken).addErrback(lambda f: None)
    assert len(warnings) == 1


class _Suspend:
    def __await__(self):
        yield "suspended"


def test_each_step_of_an_async_method_is_timed():
    clock = FakeClock()
    steps: List[float] = []

    async def work() -> str:
        clock.now += 0.25
        await _Suspend()
        clock.now += 2.0
        return "done"

    timed = _Timed(work(), lambda began: steps.append(clock.now - began), clock).__await__()
    assert timed.send(None) == "suspended"
    with pytest.raises(StopIteration) as stop:
        timed.send(None)
    assert stop.value.value == "done"
    assert steps == [0.25, 2.0]


def test_run_in_thread_only_with_threads_and_the_setting():
    settings = ModelSettings.from_dict({"name": "m", "implementation": "x.Y", "run_in_thread": True})
    assert settings.run_in_thread is True
    runtime = type("R", (), {"settings": settings, "name": "m", "version": None})()
    assert LocalModel(runtime, threads=ModelThreads(reactor=None)).in_thread
    assert not LocalModel(runtime).in_thread
    assert ModelSettings.from_dict({"name": "m", "implementation": "x.Y"}).run_in_thread is False
    with pytest.raises(SettingsError, match="run_in_thread"):
        ModelSettings.from_dict({"name": "m", "implementation": "x.Y", "run_in_thread": [1]})


def test_blocked_loop_warning_option_and_setting(monkeypatch):
    monkeypatch.setattr(v2d.tap, "install_asyncio_reactor", lambda event_loop="auto": object())
    options = Options()
    options.parseOptions(["--blocked-loop-warning", "2.5"])
    assert options["settings"].blocked_loop_warning == 2.5
    assert Settings().blocked_loop_warning == 1.0
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--blocked-loop-warning", "-1"])
    assert "blocked-loop-warning" in str(exit.value.code)
