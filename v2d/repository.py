"""
Model discovery: the folders under ``--models`` that hold a ``model-settings.json``.

The repository only reads folders; what is loaded lives in the registry. A folder
whose settings are invalid is reported with its error, never raised.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

import attrs
from zope.interface import implementer

from v2d.errors import ModelNotFound
from v2d.interfaces import IModelRepository
from v2d.settings import SETTINGS_FILE, ModelSettings, SettingsError

__all__ = ["DEFAULT_MODEL_SETTINGS_FILENAME", "Discovered", "ModelRepository", "SETTINGS_FILE"]

#: MLServer's name for it.
DEFAULT_MODEL_SETTINGS_FILENAME = SETTINGS_FILE


@attrs.frozen
class Discovered:
    """One model folder found: its settings, or the error reading them."""

    name: str
    folder: str
    settings: Optional[ModelSettings] = None
    error: Optional[str] = None


def _is_environment(folder: str, files: List[str], dirs: List[str]) -> bool:
    return "pyvenv.cfg" in files or "conda-meta" in dirs


@implementer(IModelRepository)
@attrs.define
class ModelRepository:
    """Finds models under ``root``; ``environ`` supplies ``V2D_MODEL_*`` overrides."""

    root: str
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))

    def _settings_files(self) -> List[str]:
        found = []
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            if _is_environment(folder, files, dirs):
                dirs[:] = []
                continue
            if "model-settings.json" in files:
                found.append(os.path.join(folder, SETTINGS_FILE))
        return found

    def _model_overrides(self) -> Dict[str, Any]:
        return ModelSettings.environ_overrides(self.environ)

    def discover(self) -> List[Discovered]:
        """Every model folder, in a stable order."""
        if not os.path.isdir(self.root):
            return []
        paths = self._settings_files()
        overrides = self._model_overrides()
        environ = self.environ if overrides and len(paths) <= 1 else None
        out = []
        if not paths and overrides.get("implementation"):
            try:
                settings = ModelSettings.from_dict(
                    ModelSettings.apply_environ({}, self.environ),
                    folder=os.path.abspath(self.root),
                    where="V2D_MODEL_* variables",
                )
                out.append(Discovered(settings.name, settings.folder or self.root, settings))
            except SettingsError as e:
                out.append(Discovered(os.path.basename(os.path.abspath(self.root)), self.root, error=str(e)))
            return out
        seen: Dict[tuple, str] = {}
        for path in paths:
            folder = os.path.dirname(os.path.abspath(path))
            try:
                settings = ModelSettings.from_file(path, environ)
            except SettingsError as e:
                out.append(Discovered(os.path.basename(folder), folder, error=str(e)))
                continue
            key = (settings.name, settings.version)
            if key in seen:
                out.append(
                    Discovered(
                        settings.name,
                        folder,
                        error=f"model '{settings.name}' version '{settings.version}' "
                        f"is also defined in {seen[key]}",
                    )
                )
                continue
            seen[key] = folder
            out.append(Discovered(settings.name, folder, settings))
        return out

    def find(self, name: str) -> List[Discovered]:
        """Every folder of model ``name``, read afresh; ModelNotFound if none."""
        found = [d for d in self.discover() if d.name == name]
        if not found:
            raise ModelNotFound(name)
        return found
