"""
The dataplane's streams, cancellation, declared outputs and error table, over a real
DataPlane and registry of in-process runtimes, on private asyncio loops (never the
global reactor); the transports' cancellation through a fake HTTP connection and a
real grpc.aio server on loopback.
"""

from __future__ import annotations

import asyncio
import io
import json

import grpc
import numpy as np
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel
from zope.interface.verify import verifyObject

from tests.unit.test_grpc_service import method, models_dataplane, serve
from v2d import errors
from v2d.aio import as_future
from v2d.grpc._messages import pb
from v2d.grpc._service import status_of
from v2d.interfaces import IDataPlane
from v2d.rest import RestAPI
from v2d.rest._router import RootResource
from v2d.rest._site import V2DRequest
from v2d.types import InferenceRequest, Parameters, RequestInput, RequestOutput

RUNTIME = """
import asyncio
import numpy as np
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

def answer(name):
    return InferenceResponse(model_name=name, outputs=[
        ResponseOutput(name="y", shape=[1], datatype="FP32", data=np.array([1.0], dtype=np.float32))])

class Sleepy(MLModel):
    def load(self):
        self.events = []
        return True

    async def nap(self, seconds):
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise

    async def predict(self, payload):
        self.events.append("predict")
        await self.nap(float(np.asarray(payload.inputs[0].data).ravel()[0]))
        return answer(self.name)

    async def predict_stream(self, payloads):
        async for payload in payloads:
            mode = payload.parameters.get("mode") if payload.parameters else None
            if mode == "crash":
                raise ValueError("cannot stream that")
            if mode == "unimplemented":
                raise NotImplementedError
            if mode == "garbage":
                yield 42
            yield answer(self.name)
            self.events.append("streaming")
            await self.nap(float(np.asarray(payload.inputs[0].data).ravel()[0]))
            yield answer(self.name)
"""

SETTINGS = {
    "sleepy": {
        "implementation": "models.Sleepy",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
    },
    "undeclared": {"implementation": "models.Sleepy"},
}


@pytest.fixture
def dataplane(tmp_path):
    plane = models_dataplane(tmp_path, SETTINGS, RUNTIME)
    plane.observer = Observed()
    return plane


class Observed(list):
    """A dataplane observer keeping (model, error kind) of each request."""

    def __call__(self, name, version, seconds, kind):
        self.append((name, kind))


def request(seconds=0.0, mode=None, outputs=None):
    data = np.array([seconds], dtype=np.float32)
    return InferenceRequest(
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)],
        parameters=Parameters(mode=mode) if mode else None,
        outputs=[RequestOutput(name=n) for n in outputs] if outputs else None,
    )


def events(dataplane, name="sleepy"):
    return dataplane.registry.get(name).runtime.events


def run(dataplane, test):
    """Run ``await test()`` on a private loop once every model is loaded."""

    async def main():
        await as_future(dataplane.load_all(), asyncio.get_running_loop())
        return await test()

    return asyncio.run(main())


async def turns(n=5):
    for _ in range(n):
        await asyncio.sleep(0)


async def payloads(*items):
    for item in items:
        yield item


# -- the interfaces and the error table ----------------------------------------------


def test_dataplane_provides_idataplane(dataplane):
    assert verifyObject(IDataPlane, dataplane)


def test_every_error_kind_is_in_the_one_table():
    kinds = {
        cls.kind
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.V2DError) and isinstance(cls.kind, str)
    }
    assert kinds <= set(errors.STATUS_OF_KIND)
    for kind, status in errors.STATUS_OF_KIND.items():
        assert grpc.StatusCode[status.grpc]  # a real gRPC code
        error = errors.V2DError("x")
        error.kind = kind
        assert error.status_code == status.http == errors.http_status(error)
        assert status_of(error) == grpc.StatusCode[status.grpc]


@pytest.mark.parametrize(
    "error, http, code",
    [
        (errors.ModelNotFound("m"), 404, grpc.StatusCode.NOT_FOUND),
        (errors.InferenceError("bad"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidModelURI("m"), 422, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.MLServerError("teapot", 418), 418, grpc.StatusCode.UNKNOWN),
        (errors.Unavailable("later"), 503, grpc.StatusCode.UNAVAILABLE),
        (errors.Cancelled("gone"), 499, grpc.StatusCode.CANCELLED),
        (ValueError("not ours"), 500, grpc.StatusCode.INTERNAL),
    ],
)
def test_statuses_of_errors(error, http, code):
    assert errors.http_status(error) == http
    assert grpc.StatusCode[errors.grpc_code_name(error)] == code


# -- requested outputs ------------------------------------------------------------------


def test_requested_outputs_are_checked_on_what_the_model_returned(dataplane):
    # as MLServer: the runtime decides what it returns, whatever its metadata declares
    async def test():
        with pytest.raises(errors.InvalidArgument, match=r"outputs\[0\].name: .*'nope' \(it returned: y\)"):
            await as_future(dataplane.infer("sleepy", None, request(outputs=["nope"])))
        return await as_future(dataplane.infer("sleepy", None, request(outputs=["y"])))

    response = run(dataplane, test)
    assert [o.name for o in response.outputs] == ["y"]
    assert events(dataplane) == ["predict", "predict"]
    assert dataplane.inflight == 0


def test_a_model_declaring_no_outputs_is_checked_on_what_it_returned(dataplane):
    async def test():
        with pytest.raises(errors.InvalidArgument, match=r"'nope' \(it returned: y\)"):
            await as_future(dataplane.infer("undeclared", None, request(outputs=["nope"])))

    run(dataplane, test)
    assert events(dataplane, "undeclared") == ["predict"]


# -- streams ------------------------------------------------------------------------------


def test_a_stream_is_counted_in_flight_and_observed_once(dataplane):
    async def test():
        stream = dataplane.infer_stream("sleepy", None, payloads(request(), request()))
        assert dataplane.inflight == 1
        got = [r async for r in stream]
        await stream.aclose()
        return got

    got = run(dataplane, test)
    assert len(got) == 4 and all(r.model_name == "sleepy" and r.model_version is None for r in got)
    assert dataplane.inflight == 0 and dataplane.observer == [("sleepy", None)]


@pytest.mark.parametrize(
    "mode, error, message",
    [
        ("crash", errors.Internal, "ValueError: cannot stream that"),
        ("unimplemented", errors.Unimplemented, "model 'sleepy' does not implement this"),
        ("garbage", errors.Internal, "model 'sleepy' predict_stream() yielded int, not an InferenceResponse"),
    ],
)
def test_stream_errors_are_mapped_as_requests_are(dataplane, mode, error, message):
    async def test():
        stream = dataplane.infer_stream("sleepy", None, payloads(request(mode=mode)))
        with pytest.raises(error) as raised:
            async for _ in stream:
                pass
        await stream.aclose()
        return raised.value

    assert run(dataplane, test).message == message
    assert dataplane.inflight == 0 and dataplane.observer == [("sleepy", error.kind)]


def test_a_stream_naming_a_shared_memory_region_is_refused(dataplane):
    from v2d.shm import FromRegion

    in_region = request()
    in_region.inputs[0].data = FromRegion("r", 0, 4, "inputs[0] ('x')")
    out_region = request(outputs=["y"])
    out_region.outputs[0].parameters = Parameters(shared_memory_region="r", shared_memory_byte_size=4)
    cases = [
        (in_region, "inputs[0] ('x')"),
        (out_region, "outputs[0] ('y').parameters.shared_memory_region"),
    ]
    for bad, field in cases:

        async def test(bad=bad):
            stream = dataplane.infer_stream("sleepy", None, payloads(bad))
            with pytest.raises(errors.InvalidArgument) as raised:
                async for _ in stream:
                    pass
            await stream.aclose()
            return raised.value

        assert run(dataplane, test).message == f"{field}: shared memory is not supported on streams"
    assert dataplane.inflight == 0


def test_streams_are_refused_at_once(dataplane):
    async def test():
        with pytest.raises(errors.ModelNotFound):
            dataplane.infer_stream("nothing", None, payloads())
        dataplane.draining = True
        with pytest.raises(errors.Unavailable):
            dataplane.infer_stream("sleepy", None, payloads())

    run(dataplane, test)
    assert dataplane.inflight == 0


def test_a_cancelled_consumer_cancels_the_runtimes_stream(dataplane):
    async def test():
        stream = dataplane.infer_stream("sleepy", None, payloads(request(5.0)))

        async def consume():
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await turns()
        assert events(dataplane) == ["streaming"] and dataplane.inflight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert events(dataplane) == ["streaming", "cancelled"]
        await stream.aclose()

    run(dataplane, test)
    assert dataplane.inflight == 0 and dataplane.observer == [("sleepy", "CANCELLED")]


def test_a_stream_closed_early_stops_the_runtime(dataplane):
    async def test():
        stream = dataplane.infer_stream("sleepy", None, payloads(request(5.0)))
        await stream.__anext__()
        await stream.aclose()

    run(dataplane, test)
    assert dataplane.inflight == 0 and dataplane.observer == [("sleepy", "CANCELLED")]


def test_the_drain_deadline_ends_a_stream_with_unavailable(dataplane):
    clock = Clock()

    async def test():
        stream = dataplane.infer_stream("sleepy", None, payloads(request(5.0)))
        await stream.__anext__()
        step = asyncio.ensure_future(stream.__anext__())
        await turns()
        drained = dataplane.drain(clock, 1.0)
        clock.advance(1.0)
        with pytest.raises(errors.Unavailable, match="still in flight after 1s"):
            await step
        assert events(dataplane) == ["streaming", "cancelled"]
        await stream.aclose()
        return drained

    drained = run(dataplane, test)
    assert drained.called and dataplane.inflight == 0
    assert dataplane.observer == [("sleepy", "UNAVAILABLE")]


# -- cancelled requests -------------------------------------------------------------------


def test_cancelling_a_request_cancels_the_runtimes_predict(dataplane):
    async def test():
        d = dataplane.infer("sleepy", None, request(5.0))
        await turns()
        assert dataplane.inflight == 1
        d.cancel()
        await turns()
        assert events(dataplane) == ["predict", "cancelled"]
        failures = []
        d.addErrback(failures.append)
        return failures

    failures = run(dataplane, test)
    assert isinstance(failures[0].value, errors.Cancelled)
    assert dataplane.inflight == 0 and dataplane.observer == [("sleepy", "CANCELLED")]


@pytest.mark.parametrize("request_class", [V2DRequest, Request])
def test_a_client_that_goes_away_cancels_the_fast_routes_predict(dataplane, request_class):
    api = RestAPI(dataplane)
    root = RootResource(api, api.app.resource())
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [5.0]}]}

    async def test():
        connection = DummyChannel()
        http = request_class(connection)
        http.method, http.uri = b"POST", b"/v2/models/sleepy/infer"
        http.path = http.uri
        http.content = io.BytesIO(json.dumps(body).encode())
        assert root.render(http) is NOT_DONE_YET
        await turns()
        assert events(dataplane) == ["predict"] and dataplane.inflight == 1
        http.connectionLost(Failure(ConnectionDone()))
        await turns()
        return list(events(dataplane)), dataplane.inflight, list(dataplane.observer), http, connection

    seen, inflight, observed, http, connection = run(dataplane, test)
    assert seen == ["predict", "cancelled"]
    assert inflight == 0 and observed == [("sleepy", "CANCELLED")]
    assert connection.transport.written.getvalue() == b"", "nothing is written to a client that went away"
    assert not http.finished


def test_a_grpc_client_that_cancels_cancels_the_runtimes_work(dataplane):
    async def test(channel):
        infer = method(channel, "ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
        message = pb.ModelInferRequest(model_name="sleepy")
        message.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(5.0)
        call = infer(message)
        await asyncio.sleep(0.2)
        call.cancel()
        await asyncio.sleep(0.2)
        unary = (list(events(dataplane)), dataplane.inflight)

        stream = method(channel, "ModelStreamInfer", pb.ModelInferRequest, pb.ModelStreamInferResponse, True)
        call = stream(iter([message]))
        first = await call.read()
        await asyncio.sleep(0.2)
        call.cancel()
        await asyncio.sleep(0.2)
        return unary, first, (list(events(dataplane)), dataplane.inflight, list(dataplane.observer))

    unary, first, streamed = serve(dataplane, test)
    assert unary == (["predict", "cancelled"], 0)
    assert first.infer_response.model_name == "sleepy" and not first.error_message
    assert streamed == (
        ["predict", "cancelled", "streaming", "cancelled"],
        0,
        [("sleepy", "CANCELLED"), ("sleepy", "CANCELLED")],
    )


def test_a_deferred_from_predict_is_taken_as_is_and_a_plain_value_made_one(dataplane):
    class Plain:
        name, version = "plain", None

        def __init__(self, result):
            self.result = result

        def predict(self, payload):
            return self.result

    from v2d.types import InferenceResponse

    response = InferenceResponse(model_name="", outputs=[])
    results = []
    dataplane.infer("plain", None, request(), Plain(response)).addBoth(results.append)
    waiting: Deferred = Deferred()
    dataplane.infer("plain", None, request(), Plain(waiting)).addBoth(results.append)
    waiting.callback(InferenceResponse(model_name="plain", outputs=[]))
    assert [r.model_name for r in results] == ["plain", "plain"]
