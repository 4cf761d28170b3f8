"""Model folders for tests: ``model-settings.json`` and the runtime's ``models.py``."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["ECHO", "write_model"]

#: A runtime answering its first input as output ``y`` (implementation ``models.Echo``).
ECHO = """
from v2d import MLModel
from v2d.types import InferenceResponse, ResponseOutput

class Echo(MLModel):
    def predict(self, payload):
        x = payload.inputs[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="y", shape=x.shape, datatype=x.datatype, data=x.data)],
        )
"""


def write_model(root: Path, name: str, implementation: str, code: str, **settings: Any) -> Path:
    """Write ``root/name`` with the given runtime code (and more ``settings``); returns the folder."""
    folder = Path(root) / name
    folder.mkdir(parents=True)
    (folder / "model-settings.json").write_text(
        json.dumps({"name": name, "implementation": implementation, **settings})
    )
    (folder / "models.py").write_text(textwrap.dedent(code))
    return folder
