"""
Run MLServer's own tests of its public runtime API against v2d.

MLServer's tests are not part of v2d: this script takes them from an MLServer source
checkout (``--source``; the files below exist in MLServer 1.7.x), rewrites their
``mlserver`` imports to ``v2d``, gives them fixtures of their own (``harness_conftest.py`` next
to this script, written for v2d) and runs them with pytest in a virtualenv it makes
once (v2d from this checkout, editable, plus pytest-asyncio, pytest-cases, fastapi and
pandas, which the tests import). It prints pytest's summary and, with ``--expected``,
checks every failure against the list of deliberate differences
(``expected_failures.txt``: one pytest node id prefix a line, ``#`` comments say why).

    python tests/mlserver_conformance/run.py --source ../MLServer
    python tests/mlserver_conformance/run.py --source ../MLServer --expected -- -x -q

docs/mlserver.md lists the deliberate differences for users.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import List, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))

#: MLServer's test files of its public runtime API (paths inside its ``tests/``).
TEST_FILES = [
    "codecs/test_base.py",
    "codecs/test_base64.py",
    "codecs/test_datetime.py",
    "codecs/test_decorator.py",
    "codecs/test_numpy.py",
    "codecs/test_pandas.py",
    "codecs/test_string.py",
    "codecs/test_utils.py",
    "test_model.py",
    "test_types.py",
    "test_settings.py",
    "test_utils.py",
]
#: Of test_utils.py only the public helper's test is run (the rest test MLServer's
#: event-loop manager, which v2d does not have: Twisted owns the loop); conftest.py
#: deselects the others.
SUPPORT_FILES = ["fixtures.py"]
#: What MLServer 1.7's tests were written against (numpy 1.x, pandas 2.x), and their own imports.
REQUIREMENTS = [
    "pytest>=8,<8.4",
    "pytest-asyncio>=0.23",
    "pytest-cases>=3.8",
    "fastapi>=0.110",
    "numpy>=1.26,<2",
    "pandas>=2.0,<3",
]

_IMPORT = re.compile(r"\b(from|import)\s+mlserver\b")
_STRING = re.compile(r"([\"'])mlserver\.")


def rewrite(source: str) -> str:
    """``mlserver`` imports (and patched dotted names) made into ``v2d``'s."""
    source = _IMPORT.sub(lambda m: f"{m.group(1)} v2d", source)
    return _STRING.sub(lambda m: f"{m.group(1)}v2d.", source)


def venv_python(cache: str) -> str:
    """A virtualenv with v2d (editable, this checkout) and the tests' own imports."""
    venv = os.path.join(cache, "venv")
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".requirements")
    wanted = "\n".join(REQUIREMENTS + [CHECKOUT])
    if os.path.exists(marker) and open(marker).read() == wanted:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "-e", CHECKOUT, *REQUIREMENTS], check=True)
    with open(marker, "w") as f:
        f.write(wanted)
    return python


def lay_out(source: str, into: str) -> List[str]:
    """Copy and rewrite the tests into ``into``/tests; return pytest's arguments."""
    src_tests = os.path.join(source, "tests")
    tests = os.path.join(into, "tests")
    os.makedirs(os.path.join(tests, "codecs"))
    for package in ("", "codecs"):
        open(os.path.join(tests, package, "__init__.py"), "w").close()
    for name in TEST_FILES + SUPPORT_FILES:
        with open(os.path.join(src_tests, name), encoding="utf-8") as f:
            text = rewrite(f.read())
        with open(os.path.join(tests, name), "w", encoding="utf-8") as f:
            f.write(text)
    shutil.copytree(os.path.join(src_tests, "testdata"), os.path.join(tests, "testdata"),
                    ignore=shutil.ignore_patterns("*.tar.gz", ".cache"))
    shutil.copy(os.path.join(HERE, "harness_conftest.py"), os.path.join(tests, "conftest.py"))
    with open(os.path.join(into, "pytest.ini"), "w") as f:
        f.write("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    return [os.path.join("tests", name) for name in TEST_FILES]


def read_expected() -> List[Tuple[str, str]]:
    """(node id prefix, reason) of each deliberate difference (the comment above it)."""
    out = []
    reason = ""
    with open(os.path.join(HERE, "expected_failures.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("#"):
                reason = line.lstrip("# ")
            elif line:
                out.append((line, reason))
    return out


def failures(junit: str) -> Tuple[int, Set[str]]:
    """(tests run, node ids that failed or errored) from a JUnit XML report."""
    root = ET.parse(junit).getroot()
    failed, total = set(), 0
    for case in root.iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            failed.add(f"{module}.py::{case.get('name')}")
    return total, failed


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="an MLServer source checkout")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/v2d-conformance"))
    parser.add_argument("--keep", action="store_true", help="keep the rewritten tests")
    parser.add_argument("--expected", action="store_true",
                        help="fail unless every failure is a listed deliberate difference")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    opts = parser.parse_args(argv)
    python = venv_python(opts.cache)
    work = tempfile.mkdtemp(prefix="v2d-mlserver-tests-")
    try:
        args = lay_out(os.path.abspath(opts.source), work)
        junit = os.path.join(work, "junit.xml")
        env = dict(os.environ, PYTHONPATH=CHECKOUT)
        status = subprocess.run(
            [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN",
             "--continue-on-collection-errors", f"--junitxml={junit}", *args, *opts.pytest_args],
            cwd=work, env=env,
        ).returncode
        if not os.path.exists(junit):
            return status or 1
        total, failed = failures(junit)
        expected = read_expected()
        for node in sorted(failed):
            reason = next((r for p, r in expected if node.startswith(p)), None)
            verdict = f"deliberate: {reason}" if reason else "NOT a listed difference"
            print(f"failed: {node}  [{verdict}]")
        print(f"{total - len(failed)} of {total} MLServer tests pass against v2d")
        if not opts.expected:
            return 0
        unexplained = [n for n in failed if not any(n.startswith(p) for p, _ in expected)]
        return 1 if unexplained else 0
    finally:
        if opts.keep:
            print(f"rewritten tests kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
