"""
Model discovery: the folders under ``--models`` that hold a ``model-settings.json``.

The repository only reads folders; what is loaded lives in the registry. A folder
whose settings are invalid is reported with its error, never raised. What was read is
kept while the folders' and files' modification times say it is current, so that an
index of a big tree does not list and parse it again on the reactor's thread.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

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


#: A folder or settings file changed less than this long (ns) before it was read is
#: read again next time: a change within one tick of the file system's clock leaves
#: its modification time as it was.
RECENT_NS = 2_000_000_000

#: (device, inode, size, mtime, ctime): what the cache takes as "unchanged"
_Stamp = Tuple[int, int, int, int, int]


def _stamp(st: os.stat_result, now_ns: int) -> Optional[_Stamp]:
    """What identifies a file's or folder's state; None when it changed too recently to rely on."""
    if now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < RECENT_NS:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _list_folder(folder: str) -> Optional[Tuple[List[str], bool]]:
    """A folder's subfolders to visit (paths, by name), whether it holds model settings; None: unreadable."""
    files: List[str] = []
    dirs: List[str] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else files).append(entry.name)
    except OSError:
        return None
    if _is_environment(folder, files, dirs):
        return [], False
    subdirs = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
    return [os.path.join(folder, d) for d in subdirs], SETTINGS_FILE in files


#: a folder as last listed: its stamp, the subfolders to visit, and its settings file
#: (path, absolute folder) if it has one
_Listing = Tuple[_Stamp, List[str], Optional[Tuple[str, str]]]


@attrs.define
class _TreeCache:
    """
    What was last read of the models tree: each folder's listing and each settings
    file's outcome, by path, kept while its stamp is unchanged. A folder's listing
    changes its modification time, so a new or removed model folder is seen at the
    next walk; only what changed is listed or parsed again.
    """

    clock: Callable[[], int] = time.time_ns
    folders: Dict[str, _Listing] = attrs.field(factory=dict)
    files: Dict[Tuple[str, str], Tuple[_Stamp, Any]] = attrs.field(factory=dict)

    def settings_files(self, root: str) -> List[Tuple[str, str]]:
        """(settings file, absolute folder) under ``root``, depth first in name order (as ``os.walk``)."""
        found: List[Tuple[str, str]] = []
        visited: Dict[str, _Listing] = {}
        self._walk(root, self.clock(), found, visited, ())
        self.folders = visited  # folders no longer there are forgotten
        return found

    def _walk(
        self, folder: str, now: int, found: List[Tuple[str, str]], visited: Dict[str, _Listing], above: Tuple
    ) -> None:
        try:
            st = os.stat(folder)
        except OSError:
            return
        here = (st.st_dev, st.st_ino)
        if here in above:  # a symbolic link back up the tree
            return
        stamp = _stamp(st, now)
        known = self.folders.get(folder)
        if stamp is not None and known is not None and known[0] == stamp:
            subdirs, settings = known[1], known[2]
        else:
            listing = _list_folder(folder)
            if listing is None:
                return
            subdirs = listing[0]
            settings = (os.path.join(folder, SETTINGS_FILE), os.path.abspath(folder)) if listing[1] else None
        if stamp is not None:
            visited[folder] = (stamp, subdirs, settings)
        if settings is not None:
            found.append(settings)
        for path in subdirs:
            self._walk(path, now, found, visited, above + (here,))

    def read(self, path: str, environ: Optional[Mapping[str, str]], overrides: str) -> Any:
        """A settings file's ModelSettings, or its SettingsError; parsed again only if it changed."""
        try:
            stamp = _stamp(os.stat(path), self.clock())
        except OSError:
            stamp = None
        key = (path, overrides)
        known = self.files.get(key)
        if stamp is not None and known is not None and known[0] == stamp:
            return known[1]
        outcome = _read_settings(path, environ)
        if stamp is None:
            self.files.pop(key, None)
        else:
            self.files[key] = (stamp, outcome)
        return outcome

    def keep_only(self, found: List[Tuple[str, str]]) -> None:
        """Forget the settings files not ``found`` (their folders are gone)."""
        wanted = {path for path, _ in found}
        self.files = {key: value for key, value in self.files.items() if key[0] in wanted}


def _read_settings(path: str, environ: Optional[Mapping[str, str]]) -> Any:
    try:
        return ModelSettings.from_file(path, environ)
    except SettingsError as e:
        return e


@implementer(IModelRepository)
@attrs.define
class ModelRepository:
    """
    Finds models under ``root``; ``environ`` supplies ``V2D_MODEL_*`` overrides.

    What it read is kept (``_TreeCache``), so that the index of a big tree costs a
    ``stat`` per folder and settings file, not a listing and a parse; new, removed and
    changed folders show at once. ``find`` reads the model's settings afresh, for a
    load; ``invalidate`` forgets everything (a SIGHUP reload). The settings that
    ``discover`` returns are shared with later calls: read them, never change them.
    """

    root: str
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    #: the time in ns (an injected clock tells changes too recent to rely on)
    clock: Callable[[], int] = time.time_ns
    _cache: _TreeCache = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.invalidate()

    def invalidate(self) -> None:
        """Forget what was read: the next ``discover`` lists and parses everything."""
        self._cache = _TreeCache(clock=self.clock)

    def _model_overrides(self) -> Dict[str, Any]:
        return ModelSettings.environ_overrides(self.environ)

    def discover(self) -> List[Discovered]:
        """Every model folder, in a stable order."""
        return self._discover(fresh=None)

    def _discover(self, fresh: Optional[str]) -> List[Discovered]:
        """Every model folder; the settings of model ``fresh`` read afresh (not shared)."""
        if not os.path.isdir(self.root):
            return []
        paths = self._cache.settings_files(self.root)
        self._cache.keep_only(paths)
        overrides = self._model_overrides()
        environ = self.environ if overrides and len(paths) <= 1 else None
        overrides_key = json.dumps(overrides, sort_keys=True, default=str) if environ else ""
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
        for path, folder in paths:
            outcome = self._cache.read(path, environ, overrides_key)
            name = outcome.name if isinstance(outcome, ModelSettings) else os.path.basename(folder)
            if name == fresh:
                outcome = _read_settings(path, environ)
            if isinstance(outcome, SettingsError):
                out.append(Discovered(os.path.basename(folder), folder, error=str(outcome)))
                continue
            settings = outcome
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
        """Every folder of model ``name``, its settings read afresh; ModelNotFound if none."""
        found = [d for d in self._discover(fresh=name) if d.name == name]
        if not found:
            raise ModelNotFound(name)
        return found
