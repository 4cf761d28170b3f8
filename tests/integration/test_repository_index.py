"""
The repository index of a real daemon over a big models tree (2,000 folders) lists
what is on disk: folders added or removed after start-up show in the next index,
and liveness answers between indexes. (The index is served from what the repository
already read; tests/unit/test_repository_cache.py counts it.)
"""

from __future__ import annotations

import json
import shutil

from tests.support.daemon import Daemon

FOLDERS = 2000


def _write(root, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model-settings.json").write_text(json.dumps({"implementation": "models.Runtime"}))


def _index(daemon: Daemon) -> dict:
    status, index, _ = daemon.post("/v2/repository/index", {}, timeout=30)
    assert status == 200, index
    return {e["name"]: e for e in index}


def test_the_index_of_a_big_tree_lists_what_is_on_disk(tmp_path):
    root = tmp_path / "models"
    for i in range(FOLDERS):
        _write(root, f"m{i:04d}")
    with Daemon(str(root), "--no-load-at-startup", grpc=False) as daemon:
        first = _index(daemon)
        assert len(first) == FOLDERS and first["m0042"]["reason"] == "not loaded"
        assert daemon.get("/v2/health/live")[0] == 200
        assert _index(daemon) == first

        _write(root, "group/new")
        shutil.rmtree(root / "m0007")
        later = _index(daemon)
        assert "new" in later and "m0007" not in later and len(later) == FOLDERS

        (root / "m0008" / "model-settings.json").write_text(
            json.dumps({"name": "renamed", "implementation": "x.Y"})
        )
        assert "renamed" in _index(daemon) and "m0008" not in _index(daemon)
        assert daemon.get("/v2/health/live")[0] == 200
