"""
The repository keeps what it read of the models tree: a second index of 2,000 model
folders lists and parses nothing, while new, removed and changed folders show at once
(MLServer's index lists what is on disk); ``find`` (a load) and ``invalidate`` (a
SIGHUP reload) read afresh.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List

import pytest

from v2d.repository import RECENT_NS, ModelRepository
from v2d.settings import ModelSettings


def _write(root: Any, where: str, **fields: Any) -> None:
    folder = root / where
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps({"implementation": "models.M", **fields}))


@pytest.fixture
def counted(monkeypatch) -> Dict[str, int]:
    """How many settings files were parsed and folders listed."""
    counts = {"parsed": 0, "listed": 0}
    from_file, scandir = ModelSettings.from_file.__func__, os.scandir

    def counting_from_file(cls: Any, path: str, environ: Any = None) -> ModelSettings:
        counts["parsed"] += 1
        return from_file(cls, path, environ)

    def counting_scandir(path: Any) -> Any:
        counts["listed"] += 1
        return scandir(path)

    monkeypatch.setattr(ModelSettings, "from_file", classmethod(counting_from_file))
    monkeypatch.setattr("v2d.repository.os.scandir", counting_scandir)
    return counts


def _later() -> int:
    """A clock past the window in which a just-written file's time cannot be relied on."""
    return time.time_ns() + 2 * RECENT_NS


def _names(repository: ModelRepository) -> List[str]:
    return [d.name for d in repository.discover()]


def test_a_second_index_of_a_big_tree_reads_nothing_again(tmp_path, counted):
    for i in range(2000):
        _write(tmp_path, f"m{i:04d}")
    repository = ModelRepository(str(tmp_path), environ={}, clock=_later)
    first = repository.discover()
    assert len(first) == 2000 and counted == {"parsed": 2000, "listed": 2001}
    second = repository.discover()
    assert second == first
    assert counted == {"parsed": 2000, "listed": 2001}, "served from what was read"


def test_new_removed_and_changed_folders_show_at_once(tmp_path, counted):
    for name in ("a", "b", "c"):
        _write(tmp_path, name)
    _write(tmp_path, "group/d")
    repository = ModelRepository(str(tmp_path), environ={}, clock=_later)
    assert _names(repository) == ["a", "b", "c", "d"]
    parsed = counted["parsed"]

    _write(tmp_path, "group/e")  # a new folder in a group changes the group's listing
    os.rename(tmp_path / "b" / "model-settings.json", tmp_path / "b" / "gone.json")
    _write(tmp_path, "c", name="c2", parameters={"version": "7"})
    found = {d.name: d for d in repository.discover()}
    assert sorted(found) == ["a", "c2", "d", "e"]
    assert found["c2"].settings.version == "7"
    assert counted["parsed"] == parsed + 2, "only the new and the changed file are parsed"


def test_what_changed_just_now_is_read_again(tmp_path, counted):
    _write(tmp_path, "a")
    repository = ModelRepository(str(tmp_path), environ={})  # the real clock: the file is new
    repository.discover()
    repository.discover()
    assert counted["parsed"] == 2, "a change within the clock's tick would not show in its time"


def test_find_and_invalidate_read_afresh(tmp_path, counted):
    _write(tmp_path, "a")
    _write(tmp_path, "b")
    repository = ModelRepository(str(tmp_path), environ={}, clock=_later)
    (a,) = [d for d in repository.discover() if d.name == "a"]
    parsed = counted["parsed"]
    (found,) = repository.find("a")
    assert found.settings == a.settings and found.settings is not a.settings, "a load gets its own"
    assert counted["parsed"] == parsed + 1, "the model's own file only"
    repository.invalidate()
    repository.discover()
    assert counted["parsed"] == parsed + 3


def test_environment_overrides_apply_to_a_single_model_as_before(tmp_path):
    _write(tmp_path, "a")
    environ = {"V2D_MODEL_NAME": "renamed"}
    repository = ModelRepository(str(tmp_path), environ=environ, clock=_later)
    assert _names(repository) == _names(repository) == ["renamed"]
    _write(tmp_path, "b")
    assert _names(repository) == ["a", "b"], "with two folders the variables name no one model"


def test_a_symbolic_link_back_up_the_tree_is_not_followed_forever(tmp_path):
    _write(tmp_path, "a")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    os.symlink(tmp_path / "a", tmp_path / "alias")
    repository = ModelRepository(str(tmp_path), environ={}, clock=_later)
    found = repository.discover()
    assert [(d.name, d.folder) for d in found] == [
        ("a", str(tmp_path / "a")),
        ("alias", str(tmp_path / "alias")),
    ]
