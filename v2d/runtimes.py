"""
A model's runtime built from its settings, the same way in the server and in workers.

``build_runtime`` imports the folder's ``implementation`` in a private namespace
(v2d.importer) and instantiates it: a subclass of the real ``mlserver.MLModel`` is
wrapped in ``MLServerRuntime`` (v2d.mlserver_adapter), anything else is built as it is.
``mark_loaded`` applies the ready rule to what ``load`` returned, ``is_streaming`` says
whether a runtime serves streams of its own, and ``needs_twisted`` turns the import
error of a runtime that needs Twisted, where there is none, into one clear line.
``LocalModel`` (v2d.wrappers) and the worker child (v2d.workers._child) both use them,
so a runtime behaves the same in the server and in a worker.

Imported by worker children (Python 3.9 and up): standard library, numpy and v2d's
child-safe modules only.
"""

from __future__ import annotations

from typing import Any, Optional

from v2d.importer import load_implementation
from v2d.mlserver_adapter import MLServerRuntime, is_mlserver_model
from v2d.runtime import MLModel

__all__ = ["build_runtime", "is_streaming", "mark_loaded", "needs_twisted"]


def build_runtime(settings: Any) -> tuple:
    """
    Import and instantiate a model's runtime from its folder.

    Returns (runtime, namespace). Raises whatever the import or constructor raised.
    """
    if isinstance(settings.implementation, str):
        cls, namespace = load_implementation(settings.folder or ".", settings.implementation, settings.name)
    else:  # a class given in code: ModelSettings(implementation=MyRuntime)
        cls, namespace = settings.implementation, None
    try:
        if not callable(cls):
            raise TypeError(f"implementation {settings.implementation!r} is not a class")
        if is_mlserver_model(cls):
            runtime = MLServerRuntime(cls, settings)
        else:
            runtime = cls(settings)
        if not callable(getattr(runtime, "predict", None)):
            raise TypeError(f"implementation {settings.implementation!r} has no predict() method")
    except BaseException:
        if namespace is not None:
            namespace.forget()
        raise
    return runtime, namespace


def is_streaming(runtime: Any) -> bool:
    """Whether ``runtime`` overrides ``predict_stream`` (MLServer's or v2d's default)."""
    if isinstance(runtime, MLServerRuntime):
        return runtime.streaming
    method = getattr(type(runtime), "predict_stream", None)
    return method is not None and method is not MLModel.predict_stream


def mark_loaded(runtime: Any, result: Any) -> bool:
    """
    The ready rule: a runtime whose ``load`` returned a bool is ready when it is True,
    any other result means ready. Sets ``runtime.ready``; returns it.
    """
    ready = result if isinstance(result, bool) else True
    runtime.ready = ready
    return ready


def needs_twisted(model: str, exc: BaseException) -> Optional[str]:
    """
    When ``exc`` says Twisted cannot be imported (in a worker environment without it),
    the one line to report for model ``model`` instead; else None.
    """
    if not isinstance(exc, ImportError):
        return None
    name = getattr(exc, "name", None) or ""
    if name != "twisted" and not name.startswith("twisted."):
        return None
    return (
        f"model '{model}' uses Twisted ({exc}), which its environment does not have: "
        "install twisted into the environment, or return asyncio awaitables instead of Deferreds"
    )
