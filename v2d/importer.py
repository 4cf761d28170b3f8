"""
Load a model folder's code under a private module namespace.

Each load of a model folder gets its own package, ``_v2d_models.<key>``, whose
modules are the folder's files. Inside them, an absolute import of a name that exists
in the folder (``import helpers``, ``from models import X``) resolves to the folder's
own module, so two models that both have ``models.py`` and ``helpers.py`` never see
each other's, and a reload compiles the current source afresh (no stale bytecode).
``sys.path`` is never touched.

This works by giving the folder's modules their own ``__builtins__`` whose
``__import__`` maps the folder's top-level names into the private package; imports
of anything else go through Python's ordinary machinery. ``importlib.import_module``
called with a bare name inside model code is not remapped. An ``implementation`` whose
top-level module is not in the folder is imported as installed (a runtime package).

Code written for MLServer works as it is: when the real ``mlserver`` package is not
installed (in this interpreter: the server's, or a worker's environment), ``import
mlserver...`` in a model's code gives v2d's modules of the same paths
(``mlserver.codecs.numpy`` is ``v2d.codecs.numpy``). When it is installed, the model
gets the real one, and v2d serves its ``MLModel`` subclasses through an adapter.

Imported by worker children (Python 3.9 and up): standard library only.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import os
import re
import sys
from typing import Any, Dict, FrozenSet, Optional

__all__ = ["ModelNamespace", "ImplementationError", "load_implementation"]

PREFIX = "_v2d_models"
#: The package whose imports map to v2d's own modules when it is not installed.
MLSERVER = "mlserver"
#: MLServer modules whose v2d counterpart has another path: ``v2d.metrics`` is the
#: server's Prometheus side; a runtime's ``register``/``log`` are ``v2d.custom_metrics``
#: (importable in worker environments that have only numpy).
_MLSERVER_MODULES = {"mlserver.metrics": "v2d.custom_metrics"}
_counter = itertools.count(1)
_mlserver_installed: Optional[bool] = None
_namespaces: Dict[str, "ModelNamespace"] = {}
_real_import = builtins.__import__


def mlserver_installed() -> bool:
    """Whether the real MLServer package can be imported here (looked up once)."""
    global _mlserver_installed
    if _mlserver_installed is None:
        try:
            _mlserver_installed = importlib.util.find_spec(MLSERVER) is not None
        except (ImportError, ValueError):
            _mlserver_installed = False
    return _mlserver_installed


class ImplementationError(ImportError):
    """The ``implementation`` of a model cannot be imported; the message says why."""


def _top_level_names(folder: str) -> FrozenSet[str]:
    names = set()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return frozenset()
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.name.endswith(".py"):
            names.add(entry.name[:-3])
        elif entry.is_dir() and os.path.exists(os.path.join(entry.path, "__init__.py")):
            names.add(entry.name)
    return frozenset(n for n in names if n.isidentifier())


class ModelNamespace:
    """One load of a model folder's code, as a private package."""

    def __init__(self, folder: str, label: str = "") -> None:
        self.folder = os.path.abspath(folder)
        slug = re.sub(r"\W", "_", label)[:40] if label else "model"
        self.key = f"m{next(_counter)}_{slug}"
        self.package = f"{PREFIX}.{self.key}"
        self.top_names = _top_level_names(self.folder)
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        _namespaces[self.key] = self

    def _import(
        self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
    ) -> Any:
        if level == 0 and name:
            top, _, rest = name.partition(".")
            if top in self.top_names:
                module = _real_import(f"{self.package}.{name}", globals, locals, fromlist, 0)
                if fromlist:
                    return module
                return sys.modules[f"{self.package}.{top}"]
            if top == MLSERVER and not mlserver_installed():
                target = _MLSERVER_MODULES.get(name) or "v2d" + (f".{rest}" if rest else "")
                return _real_import(target, globals, locals, fromlist, 0)
        return _real_import(name, globals, locals, fromlist, level)

    def import_object(self, dotted: str) -> Any:
        """
        Import ``module.attr`` (or ``package.module.attr``) from the folder; a module
        the folder does not have is imported as installed (``mlserver_sklearn.SKLearnModel``).
        """
        module_name, _, attr = dotted.rpartition(".")
        if not module_name or not attr:
            raise ImplementationError(
                f"implementation {dotted!r} must be a dotted path 'module.Class' inside the model folder"
                " or in an installed package"
            )
        top = module_name.partition(".")[0]
        if top in self.top_names:
            module = importlib.import_module(f"{self.package}.{module_name}")
        else:
            module = _import_installed(dotted, module_name, self.folder)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ImplementationError(
                f"implementation {dotted!r}: module '{module_name}' has no '{attr}'"
            ) from None

    def forget(self) -> None:
        """
        Drop this namespace's modules: from ``sys.modules``, and from the ``_v2d_models``
        package, where the import system also keeps each one as an attribute (left
        there, every reload would keep the previous load's code alive).
        """
        prefix = self.package + "."
        for name in [n for n in sys.modules if n == self.package or n.startswith(prefix)]:
            del sys.modules[name]
        parent = sys.modules.get(PREFIX)
        if parent is not None:
            parent.__dict__.pop(self.key, None)
        _namespaces.pop(self.key, None)


def _import_installed(dotted: str, module_name: str, folder: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name != missing and not module_name.startswith(missing + "."):
            raise  # the module exists; something it imports does not
        top = module_name.partition(".")[0]
        raise ImplementationError(
            f"implementation {dotted!r}: no module '{top}' in model folder {folder},"
            f" and no installed module '{module_name}'"
        ) from None


class _FolderLoader(importlib.abc.Loader):
    """Executes a model folder's source file with the namespace's ``__builtins__``."""

    def __init__(self, namespace: ModelNamespace, path: Optional[str]) -> None:
        self.namespace = namespace
        self.path = path

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        module.__dict__["__builtins__"] = self.namespace.builtins
        if self.path is None:
            return
        with open(self.path, "rb") as f:
            source = f.read()
        code = compile(source, self.path, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> Optional[str]:
        if self.path is None:
            return None
        with open(self.path, encoding="utf-8") as f:
            return f.read()


class _ModelFinder(importlib.abc.MetaPathFinder):
    """Finds modules under ``_v2d_models.<key>`` in their model's folder."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == PREFIX:
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = []
            return spec
        if not fullname.startswith(PREFIX + "."):
            return None
        parts = fullname.split(".")
        namespace = _namespaces.get(parts[1])
        if namespace is None:
            return None
        if len(parts) == 2:
            spec = importlib.machinery.ModuleSpec(fullname, _FolderLoader(namespace, None), is_package=True)
            spec.submodule_search_locations = [namespace.folder]
            return spec
        base = os.path.join(namespace.folder, *parts[2:])
        init = os.path.join(base, "__init__.py")
        if os.path.isfile(init):
            spec = importlib.machinery.ModuleSpec(
                fullname, _FolderLoader(namespace, init), origin=init, is_package=True
            )
            spec.submodule_search_locations = [base]
            spec.has_location = True
            return spec
        if os.path.isfile(base + ".py"):
            spec = importlib.machinery.ModuleSpec(
                fullname, _FolderLoader(namespace, base + ".py"), origin=base + ".py"
            )
            spec.has_location = True
            return spec
        return None


_finder = _ModelFinder()


def _install_finder() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def load_implementation(folder: str, implementation: str, label: str = "") -> tuple:
    """
    Import ``implementation`` from ``folder`` in a fresh private namespace.

    Returns (the object, the namespace); call ``namespace.forget()`` when the model
    is unloaded. Errors raised by the model's own code propagate as they are.
    """
    _install_finder()
    if not implementation:
        raise ImplementationError("field 'implementation' is missing from model-settings.json")
    namespace = ModelNamespace(folder, label)
    try:
        obj = namespace.import_object(implementation)
    except BaseException:
        namespace.forget()
        raise
    return obj, namespace
