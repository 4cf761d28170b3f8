"""Reloading an in-process model keeps no trace of the previous load (memory stays flat)."""

from __future__ import annotations

import gc
import sys
import tracemalloc
import weakref

from tests.support.model_folder import ECHO, write_model
from v2d.importer import PREFIX
from v2d.registry import ModelRegistry
from v2d.settings import ModelSettings
from v2d.wrappers import LocalModelFactory

RELOADS = 300


def test_reloads_free_the_previous_code(tmp_path):
    folder = str(write_model(tmp_path, "reloaded", "models.Echo", ECHO))
    factory = LocalModelFactory()
    registry = ModelRegistry(factory_for=lambda settings: factory)

    def reload() -> None:
        failures: list = []
        registry.load(ModelSettings(name="reloaded", implementation="models.Echo", folder=folder)).addErrback(
            failures.append
        )
        assert not failures, failures

    reload()
    first = weakref.ref(type(registry.get("reloaded").runtime))
    for _ in range(20):
        reload()
    gc.collect()
    assert first() is None, "the first load's class is still referenced"
    live = [k for k in vars(sys.modules[PREFIX]) if k.endswith("_reloaded")]
    assert len(live) == 1, live

    tracemalloc.start(8)
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(RELOADS):
            reload()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # log events buffered before logging begins (bounded by Twisted) are not the model's
    ignore = [tracemalloc.Filter(False, "*/twisted/logger/*", all_frames=True)]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
    grown = sum(stat.size_diff for stat in diff)
    assert grown / RELOADS < 1024, f"{grown / RELOADS:.0f} bytes kept per reload"
