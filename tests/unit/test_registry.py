"""The registry and dataplane with fake models: states, reloads, drain."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from v2d.dataplane import DataPlane
from v2d.errors import FailedPrecondition, Internal, ModelNotFound, ModelNotReady, Unavailable
from v2d.registry import ModelRegistry
from v2d.repository import ModelRepository
from v2d.settings import ModelSettings
from v2d.types import InferenceRequest, InferenceResponse


class FakeModel:
    def __init__(self, settings, fail_load=False):
        self.settings = settings
        self.name = settings.name
        self.version = settings.version
        self.ready = False
        self.fail_load = fail_load
        self.pending = []
        self.unloaded = False

    def load(self):
        if self.fail_load:
            return fail(RuntimeError("cannot load"))
        self.ready = True
        return succeed(True)

    def unload(self):
        self.unloaded = True
        return succeed(None)

    def predict(self, payload):
        d = Deferred()
        self.pending.append(d)
        return d

    def metadata(self):
        return None


class FakeFactory:
    def __init__(self):
        self.fail_next = False
        self.made = []

    def create(self, settings):
        model = FakeModel(settings, self.fail_next)
        self.made.append(model)
        return succeed(model)


def settings(name, version=None):
    return ModelSettings.from_dict({"name": name, "parameters": {"version": version} if version else {}})


def result_of(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


@pytest.fixture
def registry():
    factory = FakeFactory()
    return ModelRegistry(factory_for=lambda s: factory), factory


def test_versions_and_default(registry):
    reg, _ = registry
    result_of(reg.load(settings("m", "1")))
    result_of(reg.load(settings("m", "10")))
    result_of(reg.load(settings("m", "9")))
    assert reg.get("m").version == "10"
    assert reg.get("m", "9").version == "9"
    with pytest.raises(ModelNotFound):
        reg.get("m", "2")
    with pytest.raises(ModelNotFound):
        reg.get("x")


def test_failed_load_is_reported(registry):
    reg, factory = registry
    factory.fail_next = True
    failure = result_of(reg.load(settings("m")))
    assert isinstance(failure.value, FailedPrecondition) and "cannot load" in str(failure.value)
    with pytest.raises(ModelNotReady, match="cannot load"):
        reg.get("m")
    assert not reg.all_ready()


def test_failed_reload_keeps_the_old_model(registry):
    reg, factory = registry
    old = result_of(reg.load(settings("m")))
    factory.fail_next = True
    result_of(reg.load(settings("m")))
    assert reg.get("m") is old
    factory.fail_next = False
    new = result_of(reg.load(settings("m")))
    assert reg.get("m") is new and old.unloaded


def test_unload(registry):
    reg, _ = registry
    model = result_of(reg.load(settings("m")))
    result_of(reg.unload("m"))
    assert model.unloaded
    with pytest.raises(ModelNotReady):
        reg.get("m")
    assert reg.all_ready()  # unloaded on purpose does not count against readiness
    assert reg.states() == {"m": [("", "UNAVAILABLE", "unloaded")]}


def test_dataplane_checks_responses_and_drains(registry, tmp_path):
    reg, _ = registry
    model = result_of(reg.load(settings("m")))
    plane = DataPlane(registry=reg, repository=ModelRepository(str(tmp_path), environ={}))
    d = plane.infer("m", None, InferenceRequest(id="7"))
    model.pending.pop().callback(InferenceResponse(model_name=""))
    response = result_of(d)
    assert (response.model_name, response.id) == ("m", "7")
    d = plane.infer("m", None, InferenceRequest())
    model.pending.pop().callback("not a response")
    assert isinstance(result_of(d).value, Internal)
    in_flight = plane.infer("m", None, InferenceRequest())
    clock = Clock()
    drained = plane.drain(clock, 30)
    assert not drained.called
    with pytest.raises(Unavailable):
        plane.infer("m", None, InferenceRequest())
    model.pending.pop().callback(InferenceResponse(model_name="m"))
    result_of(in_flight)
    assert drained.called


def test_drain_deadline(registry, tmp_path):
    reg, _ = registry
    result_of(reg.load(settings("m")))
    plane = DataPlane(registry=reg, repository=ModelRepository(str(tmp_path), environ={}))
    plane.infer("m", None, InferenceRequest())
    clock = Clock()
    drained = plane.drain(clock, 5)
    clock.advance(5)
    assert drained.called
