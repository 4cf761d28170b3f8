"""
The dataplane's path for models that decode requests themselves (IEncodedInference):
chosen only for models that say they take the encoding, counted in flight, observed,
and failing with the same mapped errors as ``infer``. Also the worker child's choice
of encodings it can take. No reactor: Deferreds fired by hand.
"""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer

from v2d.dataplane import DataPlane
from v2d.errors import Internal, NotFound, Unavailable, Unimplemented
from v2d.interfaces import IEncodedInference, IModel
from v2d.workers import _child


@implementer(IModel, IEncodedInference)
class EncodedModel:
    name = "m"
    version = None
    wires = frozenset({"grpc"})

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def infer_encoded(self, wire: str, data: bytes, headers: Any) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((wire, data, headers, d))
        return d


@implementer(IModel)
class PlainModel:
    name = "plain"
    version = None
    wires = frozenset({"grpc"})  # without the interface this means nothing


class Registry:
    def __init__(self, *models: Any) -> None:
        self.models = {m.name: m for m in models}

    def get(self, name: str, version: Any = None) -> Any:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"model '{name}' not found") from None


@pytest.fixture
def observed() -> List[Any]:
    return []


@pytest.fixture
def plane(observed):
    plane = DataPlane(registry=Registry(EncodedModel(), PlainModel()), repository=None)
    plane.observer = lambda *args: observed.append(args)
    return plane


def _result(d: Deferred) -> List[Any]:
    out: List[Any] = []
    d.addBoth(out.append)
    return out


def test_only_models_with_the_interface_and_the_wire_are_chosen(plane):
    assert plane.admit("m", None) is plane.registry.models["m"]
    assert plane.takes_encoded(plane.admit("m", None), "grpc")
    assert not plane.takes_encoded(plane.admit("m", None), "rest")
    assert not plane.takes_encoded(plane.admit("plain", None), "grpc")
    with pytest.raises(NotFound):
        plane.admit("nobody", None)
    plane.draining = True
    with pytest.raises(Unavailable):
        plane.admit("m", None)


def test_encoded_requests_are_counted_observed_and_answered(plane, observed):
    model = plane.admit("m", None)
    out = _result(plane.infer_encoded(model, "grpc", b"request", {"x-id": "1"}))
    assert plane.inflight == 1
    (wire, data, headers, d) = model.calls[0]
    assert (wire, data, headers) == ("grpc", b"request", {"x-id": "1"})
    d.callback((b"response", {"x-out": "2"}))
    assert out == [(b"response", {"x-out": "2"})]
    assert plane.inflight == 0
    assert [o[0] for o in observed] == ["m"] and observed[0][3] is None


@pytest.mark.parametrize(
    "error, kind",
    [
        (ValueError("boom"), Internal),
        (NotImplementedError("not here"), Unimplemented),
        (NotFound("x"), NotFound),
    ],
)
def test_failures_map_as_for_infer(plane, observed, error, kind):
    model = plane.admit("m", None)
    out = _result(plane.infer_encoded(model, "grpc", b"", {}))
    model.calls[0][3].errback(error)
    assert isinstance(out[0].value, kind)
    assert plane.inflight == 0
    assert observed[0][3] == kind.kind
    out[0].trap(kind)


def test_a_child_without_usable_protobuf_takes_no_encoding(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_protobuf(name, *args, **kwargs):
        if name.startswith("google.protobuf") or name == "v2d.grpc":
            raise ImportError("no protobuf here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(_child, "_ENCODINGS", None)
    monkeypatch.setattr(builtins, "__import__", no_protobuf)
    assert _child._encodings() == {}


def test_a_child_with_protobuf_takes_grpc(monkeypatch):
    monkeypatch.setattr(_child, "_ENCODINGS", None)
    assert set(_child._encodings()) == {"grpc"}
