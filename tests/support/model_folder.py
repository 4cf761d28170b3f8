"""Model folders for tests: ``model-settings.json`` and the runtime's ``models.py``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

__all__ = ["write_model"]


def write_model(root: Path, name: str, implementation: str, code: str) -> Path:
    """Write ``root/name`` with the given runtime code; returns the folder."""
    folder = root / name
    folder.mkdir()
    (folder / "model-settings.json").write_text(json.dumps({"name": name, "implementation": implementation}))
    (folder / "models.py").write_text(textwrap.dedent(code))
    return folder
