"""
The loaded models, by name and version.

The registry holds ``IModel`` providers and their states; it does not know whether a
provider runs here or in a worker. A (re)load builds a new provider through the
factory the service chose for the model's settings; the old one keeps serving until
the new one is ready, and stays if the new one fails.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional

import attrs
from twisted.internet.defer import Deferred, DeferredLock, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from v2d.errors import FailedPrecondition, ModelNotFound, ModelNotReady
from v2d.interfaces import IModelFactory, IModelRegistry
from v2d.settings import ModelSettings

__all__ = ["ModelRegistry", "READY", "LOADING", "UNLOADING", "UNAVAILABLE"]

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


def _version_key(version: str) -> tuple:
    """Sort key: numeric parts compare as numbers ('10' after '9')."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_]", version))


def describe_failure(failure: Failure) -> str:
    """A one-line reason from a failure: the exception's type and message."""
    exc = failure.value
    message = str(exc) or type(exc).__name__
    if type(exc).__module__ == "v2d.errors":
        return message
    return f"{type(exc).__name__}: {message}"


@attrs.define(eq=False)
class _Slot:
    name: str
    version: str
    settings: Optional[ModelSettings] = None
    model: Optional[Any] = None
    #: The factory's model (``model`` may be a wrapper of it): asked whether it can serve.
    served: Optional[Any] = None
    state: str = UNAVAILABLE
    reason: str = ""
    failed: bool = False


def _down(slot: _Slot) -> Optional[str]:
    """
    Why a READY slot's model cannot serve right now (e.g. all its worker processes are
    dead and restarting), or None. A provider tells by an ``unavailable`` attribute.
    """
    return getattr(slot.served, "unavailable", None)


@implementer(IModelRegistry)
@attrs.define(eq=False)
class ModelRegistry:
    """
    ``factory_for(settings)`` gives the IModelFactory for a model (in-process or a
    worker pool); ``wrap(model)`` may wrap a loaded model (e.g. adaptive batching).
    ``on_ready(name, version, model)`` is told of a loaded model (the factory's, not
    wrapped) just before it serves, and may refuse it by raising (the load fails);
    ``on_unload(name, version)`` when a model version stops serving. Version is ``""``
    for an unversioned model.
    """

    factory_for: Callable[[ModelSettings], IModelFactory]
    wrap: Callable[[Any], Any] = attrs.field(default=lambda model: model)
    on_ready: Optional[Callable[[str, str, Any], None]] = None
    on_unload: Optional[Callable[[str, str], None]] = None
    _slots: Dict[str, Dict[str, _Slot]] = attrs.field(factory=dict)
    _default: Dict[str, Any] = attrs.field(factory=dict)
    _locks: Dict[str, DeferredLock] = attrs.field(factory=dict)
    log = Logger()

    # -- lookups (hot path) -------------------------------------------------

    def get(self, name: str, version: Optional[str] = None) -> Any:
        if version is None:
            model = self._default.get(name)
            if model is not None:
                return model
        versions = self._slots.get(name)
        if versions is None:
            raise ModelNotFound(name)
        if version is None:
            slot = max(versions.values(), key=lambda s: _version_key(s.version)) if versions else None
        else:
            slot = versions.get(version)
            if slot is None:
                raise ModelNotFound(name, version)
        if slot is None or slot.state != READY or slot.model is None:
            reason = f": {slot.reason}" if slot is not None and slot.reason else ""
            state = slot.state if slot is not None else UNAVAILABLE
            raise ModelNotReady(f"model '{name}' is not ready ({state}{reason})")
        return slot.model

    def ready(self, name: str, version: Optional[str] = None) -> bool:
        """Whether the model (version) can serve; ModelNotFound if it is unknown."""
        try:
            model = self.get(name, version)
        except ModelNotReady:
            return False
        return not any(s.model is model and _down(s) for s in self._slots[name].values())

    def names(self) -> List[str]:
        """Every model name the registry knows."""
        return sorted(self._slots)

    def all_ready(self) -> bool:
        """True when no model is loading or failed (unloaded ones do not count)."""
        for versions in self._slots.values():
            for slot in versions.values():
                if slot.failed or slot.state in (LOADING,):
                    return False
                if slot.state == READY and _down(slot):
                    return False
        return True

    def states(self) -> Dict[str, List[tuple]]:
        """name -> [(version, state, reason)]; a READY model that cannot serve is UNAVAILABLE."""
        out: Dict[str, List[tuple]] = {}
        for name, versions in sorted(self._slots.items()):
            out[name] = []
            for slot in versions.values():
                down = _down(slot) if slot.state == READY else None
                if down:
                    out[name].append((slot.version, UNAVAILABLE, down))
                else:
                    out[name].append((slot.version, slot.state, slot.reason))
        return out

    # -- state changes ------------------------------------------------------

    def _refresh_default(self, name: str) -> None:
        versions = self._slots.get(name, {})
        ready = [s for s in versions.values() if s.state == READY and s.model is not None]
        if ready:
            self._default[name] = max(ready, key=lambda s: _version_key(s.version)).model
        else:
            self._default.pop(name, None)

    def _slot(self, name: str, version: Optional[str]) -> _Slot:
        versions = self._slots.setdefault(name, {})
        key = version or ""
        slot = versions.get(key)
        if slot is None:
            slot = versions[key] = _Slot(name=name, version=key)
        return slot

    def _lock(self, name: str) -> DeferredLock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = DeferredLock()
        return lock

    def mark_failed(self, name: str, version: Optional[str], reason: str) -> None:
        """Record a model that could not even be read (invalid settings)."""
        slot = self._slot(name, version)
        if slot.state != READY:
            slot.state, slot.reason, slot.failed = UNAVAILABLE, reason, True
        self._refresh_default(name)

    def load(self, settings: ModelSettings) -> Deferred:
        return self._lock(settings.name).run(self._load, settings)

    def _load(self, settings: ModelSettings) -> Deferred:
        slot = self._slot(settings.name, settings.version)
        previous = slot.model if slot.state == READY else None
        if previous is None:
            slot.state, slot.reason = LOADING, ""
        slot.settings = settings
        self.log.info(
            "loading model {model} version {version}", model=settings.name, version=slot.version or "-"
        )
        created: List[Any] = []

        def build(_: Any) -> Deferred:
            return self.factory_for(settings).create(settings)

        def load(model: Any) -> Deferred:
            created.append(model)
            return model.load()

        def loaded(ok: Any) -> Any:
            if ok is False:
                raise RuntimeError("load() returned False")
            if self.on_ready is not None:
                self.on_ready(settings.name, slot.version, created[0])
            model = self.wrap(created[0])
            slot.model, slot.state, slot.reason, slot.failed = model, READY, "", False
            slot.served = created[0]
            self._refresh_default(settings.name)
            self.log.info("model {model} ready", model=settings.name)
            if previous is not None:
                self._unload_quietly(previous)
            return model

        def failed(failure: Failure) -> Failure:
            reason = describe_failure(failure)
            self.log.failure(
                "model {model} failed to load: {reason}", failure, model=settings.name, reason=reason
            )
            if created:
                self._unload_quietly(created[0])
            if previous is None:
                slot.model, slot.state, slot.reason, slot.failed = None, UNAVAILABLE, reason, True
            else:
                slot.reason = f"reload failed, previous version still serving: {reason}"
            self._refresh_default(settings.name)
            return Failure(FailedPrecondition(f"failed to load model '{settings.name}': {reason}"))

        return succeed(None).addCallback(build).addCallback(load).addCallback(loaded).addErrback(failed)

    def _unload_quietly(self, model: Any) -> None:
        def report(failure: Failure) -> None:
            self.log.failure("unloading model {model} failed", failure, model=model.name)

        try:
            model.unload().addErrback(report)
        except Exception:
            report(Failure())

    def unload(self, name: str) -> Deferred:
        if name not in self._slots:
            raise ModelNotFound(name)
        return self._lock(name).run(self._unload, name)

    def _unload(self, name: str) -> Deferred:
        versions = self._slots.get(name, {})
        pending = []
        for slot in versions.values():
            model = slot.model
            if model is not None and self.on_unload is not None:
                self.on_unload(name, slot.version)
            slot.model, slot.state, slot.reason, slot.failed = None, UNLOADING, "", False
            slot.served = None
            if model is not None:
                pending.append((slot, model))
            else:
                slot.state, slot.reason = UNAVAILABLE, "unloaded"
        self._refresh_default(name)

        def one(slot: _Slot, model: Any) -> Deferred:
            def done(result: Any) -> Any:
                slot.state, slot.reason = UNAVAILABLE, "unloaded"
                if isinstance(result, Failure):
                    self.log.failure("unloading model {model} failed", result, model=name)
                return None

            try:
                d = model.unload()
            except Exception:
                d = Deferred()
                d.errback()
            return d.addBoth(done)

        self.log.info("unloading model {model}", model=name)
        return gatherResults([one(s, m) for s, m in pending]).addCallback(lambda _: None)

    def unload_all(self) -> Deferred:
        return gatherResults([self.unload(name) for name in list(self._slots)]).addCallback(lambda _: None)
