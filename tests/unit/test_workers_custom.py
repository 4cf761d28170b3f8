"""
Custom handlers and custom metrics across the worker wire: the new messages round
trip; the server side (``WorkerModel``, fake process reactor) lists and calls handlers
and records metric batches; the child side (``ChildServer`` on its own asyncio loop,
writing to a pipe) calls handlers as the current model and sends the metrics it
logged ahead of the reply.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_workers import _model, _result, pool, reactor  # noqa: F401 - fixtures
from v2d.custom_metrics import ModelContext
from v2d.errors import InvalidArgument
from v2d.handlers import custom_handler
from v2d.handlers.custom import HandlerRoute
from v2d.interfaces import ICustomHandlers
from v2d.metrics import Metrics
from v2d.runtime import MLModel
from v2d.settings import ModelSettings
from v2d.types import MetadataModelResponse
from v2d.workers import _errors
from v2d.workers._child import ChildServer
from v2d.workers._wire import FrameDecoder, encode_message, read_message

MESSAGES = [
    ("custom", 3, ("total", True, [1, 2, 3], {"q": ["1", "2"]})),
    ("custom", 4, ("scale", False, None, {})),
    ("metrics", 0, ([("runtime_seconds", "Time in the runtime")], [("runtime_seconds", 0.25), ("x", 2.0)])),
    ("loaded", 1, {"ready": True, "handlers": [HandlerRoute("POST", "/sum", "total")]}),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_new_messages_round_trip(message):
    raw = b"".join(bytes(c) for c in encode_message(message))
    got: List[Any] = []
    FrameDecoder(lambda kind, obj: got.append((kind, obj))).feed(raw)
    assert got == [("pickle", message)]
    r, w = os.pipe()
    os.write(w, raw)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as stream:
        assert read_message(stream) == ("pickle", message)


def test_an_errors_status_code_crosses_the_wire():
    class Teapot(Exception):
        status_code = 418

    back = _errors.rebuild(_errors.describe(Teapot("short and stout")))
    assert back.status_code == 418 and str(back) == "short and stout"  # type: ignore[attr-defined]
    assert type(back).__name__ == "Teapot"
    assert not hasattr(_errors.rebuild(_errors.describe(ValueError("x"))), "status_code")


def _load_with_handlers(pool, reactor, tmp_path):  # noqa: F811 - fixtures
    model = _model(pool, tmp_path)
    loaded = _result(model.load())
    process = reactor.processes[0]
    process.hello()
    _, rid, settings = process.last("load")
    info = {
        "ready": True,
        "metadata": MetadataModelResponse(name=settings.name),
        "handlers": [HandlerRoute("POST", "/sum", "total")],
    }
    process.reply(("loaded", rid, info))
    assert loaded == [True]
    return model, process


def test_worker_model_lists_and_calls_the_runtimes_handlers(pool, reactor, tmp_path):  # noqa: F811
    model, process = _load_with_handlers(pool, reactor, tmp_path)
    assert ICustomHandlers.providedBy(model)
    assert model.custom_handlers == [HandlerRoute("POST", "/sum", "total")]
    got = _result(model.call_custom("total", True, [1, 2], {"x": ["1"]}))
    op, rid, body = process.last("custom")
    assert body == ("total", True, [1, 2], {"x": ["1"]})
    process.reply(("result", rid, 3))
    assert got == [3]
    got = _result(model.call_custom("total", False, None, {}))
    process.reply(("error", process.last("custom")[1], _errors.describe(InvalidArgument("missing argument"))))
    assert isinstance(got[0].value, InvalidArgument)


def test_metric_batches_are_recorded_for_the_workers_model(pool, reactor, tmp_path):  # noqa: F811
    pool.metrics = Metrics()
    model, process = _load_with_handlers(pool, reactor, tmp_path)
    process.reply(("metrics", 0, ([("tcw_seconds", "Seconds in the runtime")], [("tcw_seconds", 0.5)])))
    process.reply(("metrics", 0, ([], [("tcw_seconds", 1.5), ("tcw_seconds", "not a number")])))
    families = {f.name: f for f in text_string_to_metric_families(pool.metrics.exposition().decode())}
    samples = {s.name: s for s in families["tcw_seconds"].samples}
    assert families["tcw_seconds"].documentation == "Seconds in the runtime"
    assert samples["tcw_seconds_count"].value == 2.0 and samples["tcw_seconds_sum"].value == 2.0
    assert samples["tcw_seconds_count"].labels == {"model_name": model.name, "model_version": ""}


# -- the child side ---------------------------------------------------------------


class _Runtime(MLModel):
    @custom_handler(rest_path="/sum")
    async def total(self, payload: list) -> int:
        from v2d import log

        await asyncio.sleep(0)
        log(tcc_items=len(payload))
        return sum(payload)

    @custom_handler(rest_path="/echo", rest_method="GET")
    def echo(self, word: str) -> str:
        from v2d import log

        log(tcc_words=1)
        return word


def child_answers(runtime: Any, *messages: Any, wait: float = 0.01) -> List[Any]:
    """What a ChildServer with ``runtime`` loaded writes back for ``messages``."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    r, w = os.pipe()
    try:
        server = ChildServer(loop, w, None)
        settings = runtime.settings
        server.runtime, server.settings = runtime, settings
        server.context = ModelContext(settings.name, settings.version or "", server.metrics)
        for message in messages:
            server.handle(message)
            loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(wait))
        server.flush()
        assert not server.tasks, "no task is left behind"
        os.close(w)
        w = -1
        got: List[Any] = []
        decoder = FrameDecoder(lambda kind, obj: got.append(obj))
        while True:
            data = os.read(r, 1 << 16)
            if not data:
                return got
            decoder.feed(data)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        os.close(r)
        if w >= 0:
            os.close(w)


def _child_answers(*messages: Any) -> List[Any]:
    """What a ChildServer with ``_Runtime`` loaded writes back for ``messages``."""
    settings = ModelSettings(name="child-model", implementation="x.Y", versions=["3"])
    return child_answers(_Runtime(settings), *messages)


def test_child_calls_handlers_and_sends_their_metrics_ahead_of_the_reply():
    got = _child_answers(
        ("custom", 7, ("total", True, [1, 2, 3], {})), ("custom", 8, ("echo", False, None, {"word": ["hi"]}))
    )
    ops = [(op, rid) for op, rid, _ in got]
    assert ("result", 7) in ops and ("result", 8) in ops
    results = {rid: body for op, rid, body in got if op == "result"}
    assert results == {7: 6, 8: "hi"}
    metrics = [(i, body) for i, (op, _, body) in enumerate(got) if op == "metrics"]
    observed = [o for _, (_, observations) in metrics for o in observations]
    assert sorted(observed) == [("tcc_items", 3.0), ("tcc_words", 1.0)]
    first_metrics = {name: i for i, (op, _, body) in enumerate(got) if op == "metrics" for name, _ in body[1]}
    assert first_metrics["tcc_items"] < ops.index(("result", 7))
    assert first_metrics["tcc_words"] < ops.index(("result", 8))


def test_child_reports_a_bad_argument_as_invalid_argument():
    got = _child_answers(("custom", 9, ("echo", False, None, {})))
    (op, rid, body), = [m for m in got if m[0] != "metrics"]
    assert (op, rid) == ("error", 9)
    error = _errors.rebuild(body)
    assert isinstance(error, InvalidArgument) and "missing argument 'word'" in str(error)
