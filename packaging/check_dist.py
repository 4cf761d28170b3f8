"""
Build v2d's sdist and wheel and check that they are complete and installable.

Run from anywhere: ``python packaging/check_dist.py [--outdir DIR] [--venv DIR]``.

1. ``python -m build`` makes the sdist, then the wheel *from that sdist*, so a file
   missing from ``MANIFEST.in`` breaks the wheel here rather than on a user's machine.
2. The sdist must hold the protos, ``packaging/``, the tests and the examples; the wheel
   must hold the twistd plugin (and no ``twisted/__init__.py`` or plugin cache, which
   would shadow Twisted's own package or go stale).
3. The wheel is installed into a fresh virtual environment, Twisted's plugin cache is
   regenerated, and ``twistd --help`` must list ``v2d`` and ``twistd v2d --help`` must
   succeed.

Exit status 0 when everything holds; otherwise the problems are printed and it is 1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, List, Sequence

ROOT = Path(__file__).resolve().parent.parent

# (description, predicate over member names relative to the archive's top folder)
SDIST_REQUIRED = (
    ("setup.py", lambda names: "setup.py" in names),
    ("MANIFEST.in", lambda names: "MANIFEST.in" in names),
    ("tox.ini", lambda names: "tox.ini" in names),
    ("the twistd plugin", lambda names: "twisted/plugins/v2d_plugin.py" in names),
    ("protos/*.proto", lambda names: any(n.startswith("protos/") and n.endswith(".proto") for n in names)),
    ("packaging/systemd/v2d.service", lambda names: "packaging/systemd/v2d.service" in names),
    ("packaging/systemd/v2d.socket", lambda names: "packaging/systemd/v2d.socket" in names),
    ("packaging/debian/control", lambda names: "packaging/debian/control" in names),
    (
        "packaging/kubernetes/*.yaml",
        lambda names: any(n.startswith("packaging/kubernetes/") and n.endswith(".yaml") for n in names),
    ),
    ("tests/**/*.py", lambda names: any(n.startswith("tests/") and n.endswith(".py") for n in names)),
    ("examples/**", lambda names: any(n.startswith("examples/") for n in names)),
)

WHEEL_REQUIRED = ("twisted/plugins/v2d_plugin.py", "v2d/__init__.py", "v2d/py.typed")
WHEEL_FORBIDDEN = ("twisted/__init__.py", "twisted/plugins/__init__.py", "twisted/plugins/dropin.cache")

REGENERATE_PLUGIN_CACHE = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, echoing it, and return its completed process (output captured)."""
    print("+", " ".join(str(a) for a in argv), flush=True)
    return subprocess.run(list(argv), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def build_dists(outdir: Path, source: Path = ROOT) -> tuple[Path, Path]:
    """Build the sdist, then the wheel from it; return their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in list(outdir.glob("v2d-*.tar.gz")) + list(outdir.glob("v2d-*.whl")):
        old.unlink()
    result = run([sys.executable, "-m", "build", "--outdir", str(outdir), str(source)])
    if result.returncode != 0:
        raise SystemExit(f"python -m build failed:\n{result.stdout}\n{result.stderr}")
    (sdist,) = outdir.glob("v2d-*.tar.gz")
    (wheel,) = outdir.glob("v2d-*.whl")
    return sdist, wheel


def sdist_names(sdist: Path) -> List[str]:
    """Member names of an sdist, relative to its top folder."""
    with tarfile.open(sdist) as tar:
        return [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]


def wheel_names(wheel: Path) -> List[str]:
    """Member names of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def check_sdist(names: Iterable[str]) -> List[str]:
    """Problems with an sdist's contents (empty when complete)."""
    present = set(names)
    problems = [f"sdist lacks {what}" for what, holds in SDIST_REQUIRED if not holds(present)]
    problems += [f"sdist carries {n}" for n in present if n.endswith(("dropin.cache", ".pyc"))]
    return problems


def check_wheel(names: Iterable[str]) -> List[str]:
    """Problems with a wheel's contents (empty when complete)."""
    present = set(names)
    problems = [f"wheel lacks {n}" for n in WHEEL_REQUIRED if n not in present]
    problems += [f"wheel carries {n}" for n in WHEEL_FORBIDDEN if n in present]
    return problems


def check_installed(wheel: Path, venv: Path) -> List[str]:
    """Install the wheel into a fresh venv and check that twistd finds the v2d plugin."""
    if venv.exists():
        run(["rm", "-rf", str(venv)])
    result = run([sys.executable, "-m", "venv", str(venv)])
    if result.returncode != 0:
        return [f"could not create a virtualenv: {result.stderr}"]
    bindir = venv / "bin"
    python = bindir / "python"
    result = run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)])
    if result.returncode != 0:
        return [f"pip install of the wheel failed:\n{result.stdout}\n{result.stderr}"]
    problems: List[str] = []
    # Run from a neutral folder so that the source tree is not on sys.path.
    with tempfile.TemporaryDirectory() as cwd:
        result = run([str(python), "-c", REGENERATE_PLUGIN_CACHE], cwd=cwd)
        if result.returncode != 0:
            problems.append(f"regenerating the plugin cache failed: {result.stderr}")
        plugin_dirs = list(venv.glob("lib/python*/site-packages/twisted/plugins"))
        if not any((d / "dropin.cache").exists() for d in plugin_dirs):
            problems.append("the plugin cache was not written next to v2d_plugin.py")
        result = run([str(bindir / "twistd"), "--help"], cwd=cwd)
        if result.returncode != 0 or "v2d" not in result.stdout.split("Commands:")[-1]:
            problems.append(f"twistd --help does not list v2d:\n{result.stdout}\n{result.stderr}")
        result = run([str(bindir / "twistd"), "v2d", "--help"], cwd=cwd)
        if result.returncode != 0 or "--models" not in result.stdout:
            problems.append(f"twistd v2d --help failed:\n{result.stdout}\n{result.stderr}")
        if not os.access(bindir / "v2d-build", os.X_OK):
            problems.append("the v2d-build console script is not installed")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    parser.add_argument("--venv", type=Path, default=None, help="where to make the fresh venv")
    parser.add_argument("--no-install", action="store_true", help="check the archives only")
    args = parser.parse_args(argv)

    sdist, wheel = build_dists(args.outdir.resolve())
    problems = check_sdist(sdist_names(sdist)) + check_wheel(wheel_names(wheel))
    if not args.no_install:
        if args.venv is None:
            with tempfile.TemporaryDirectory() as tmp:
                problems += check_installed(wheel, Path(tmp) / "venv")
        else:
            problems += check_installed(wheel, args.venv.resolve())
    for problem in problems:
        print("PROBLEM:", problem, file=sys.stderr)
    print(f"{sdist.name}, {wheel.name}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
