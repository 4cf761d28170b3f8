"""
The ``v2d`` command: the habits MLServer users bring, next to the daemon.

- ``v2d init DIR``: write a runnable model folder (``model-settings.json``,
  ``models.py``, ``README.md``) to start from.
- ``v2d infer MODEL --input FILE``: send one V2 inference request (a JSON body, ``-``
  for standard input) to a running server over REST and print the response.
- ``v2d --version``.

The daemon itself is ``twistd v2d`` (docs/reference.md). This module is never imported
by the daemon and uses the standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Sequence, TextIO

from v2d._version import __version__

__all__ = ["main", "parser"]

OK, FAILED, USAGE = 0, 1, 2


def _settings(name: str, cls: str) -> dict:
    """The model-settings.json of a new model folder."""
    return {
        "name": name,
        "implementation": f"models.{cls}",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [-1, -1], "parameters": {"content_type": "np"}}
        ],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "parameters": {"version": "1"},
    }


_MODELS = '''"""The runtime of model {name!r}: replace the body of load() and predict() with yours."""

import numpy as np

from v2d import MLModel
from v2d.codecs import decode_args


class {cls}(MLModel):
    async def load(self) -> bool:
        # Load your model here; its files live next to this one, e.g.
        # self._model = joblib.load(self.settings.parameters.uri)
        self._scale = 1.0
        return True

    @decode_args
    async def predict(self, x: np.ndarray) -> np.ndarray:
        # One input "x" (a 2-D float array), one output "y": the sum of each row.
        return (x * self._scale).sum(axis=1, keepdims=True).astype(np.float32)
'''

_README = """# {name}

A model folder for v2d: `model-settings.json` names the runtime (`models.{cls}` in
`models.py`) and its inputs and outputs.

Serve it, with the folder that holds it as the models folder:

```sh
twistd -n v2d --models {parent}
```

Call it:

```sh
curl -X POST localhost:8080/v2/models/{name}/infer \\
  -d '{{"inputs": [{{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}}]}}'
v2d infer {name} --input request.json
```
"""

_REQUEST = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}


def _class_name(name: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", name)
    cls = "".join(w[:1].upper() + w[1:] for w in words if w) or "Model"
    return cls if cls[0].isalpha() else "Model" + cls


def init(folder: str, name: Optional[str], out: TextIO) -> int:
    """Write a runnable model folder into ``folder`` (which must not hold one already)."""
    folder = os.path.abspath(folder)
    name = name or os.path.basename(folder.rstrip(os.sep)) or "model"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SystemExit(f"v2d init: {name!r} is not a model name (letters, digits, '.', '_', '-')")
    files = {
        "model-settings.json": json.dumps(_settings(name, _class_name(name)), indent=2) + "\n",
        "models.py": _MODELS.format(name=name, cls=_class_name(name)),
        "README.md": _README.format(name=name, cls=_class_name(name), parent=os.path.dirname(folder)),
        "request.json": json.dumps(_REQUEST) + "\n",
    }
    existing = [f for f in files if os.path.exists(os.path.join(folder, f))]
    if existing:
        raise SystemExit(f"v2d init: {folder} already has {', '.join(existing)}; nothing written")
    os.makedirs(folder, exist_ok=True)
    for file_name, text in files.items():
        with open(os.path.join(folder, file_name), "w", encoding="utf-8") as f:
            f.write(text)
    out.write(f"wrote model {name!r} in {folder}: {', '.join(files)}\n")
    out.write(f"serve it: twistd -n v2d --models {os.path.dirname(folder)}\n")
    return OK


def infer(model: str, source: str, url: str, version: Optional[str], timeout: float, out: TextIO) -> int:
    """POST one request to ``url``'s REST endpoint for ``model``; print the response's JSON."""
    try:
        text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    except OSError as e:
        raise SystemExit(f"v2d infer: cannot read {source}: {e.strerror}") from None
    try:
        body = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"v2d infer: {source} is not JSON: {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise SystemExit(f'v2d infer: {source} must hold an inference request, {{"inputs": [...]}}')
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    if version:
        path += f"/versions/{urllib.parse.quote(version, safe='')}"
    request = urllib.request.Request(
        url.rstrip("/") + path + "/infer",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise SystemExit(f"v2d infer: {e.code} from {url}: {detail}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SystemExit(f"v2d infer: cannot reach {url}: {reason}") from None
    out.write(json.dumps(json.loads(answer), indent=2) + "\n")
    return OK


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="v2d",
        description="Tools around the v2d server (the server itself is 'twistd v2d').",
    )
    p.add_argument("--version", action="version", version=f"v2d {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    p_init = commands.add_parser("init", help="write a runnable model folder to start from")
    p_init.add_argument("folder", metavar="DIR", help="the model folder to create (it must not hold one)")
    p_init.add_argument("--name", help="the model's name (default: the folder's name)")
    p_infer = commands.add_parser("infer", help="send one inference request to a running server (REST)")
    p_infer.add_argument("model", metavar="MODEL", help="the model's name")
    p_infer.add_argument(
        "-i",
        "--input",
        required=True,
        metavar="FILE",
        help="a JSON inference request, or - for standard input",
    )
    p_infer.add_argument(
        "-u",
        "--url",
        default=os.environ.get("V2D_URL", "http://127.0.0.1:8080"),
        help="the server's REST address (default: $V2D_URL or http://127.0.0.1:8080)",
    )
    p_infer.add_argument("--model-version", help="a version of the model")
    p_infer.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default: 60)")
    return p


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the command; return the exit status (errors exit with one line)."""
    out = out or sys.stdout
    args = parser().parse_args(list(argv) if argv is not None else None)
    if args.command == "init":
        return init(args.folder, args.name, out)
    if args.command == "infer":
        return infer(args.model, args.input, args.url, args.model_version, args.timeout, out)
    parser().print_help(out)
    return USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
