"""
The wheel of the running v2d that v2d-build puts into the build context.

It is installed for real (``pip install --no-deps --target``) and imported by a fresh
interpreter, so the test shows pip accepts it and the package inside is whole.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import zipfile

import pytest

import v2d
from v2d.build import build_v2d_wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("wheel")
    return os.path.join(str(folder), build_v2d_wheel(str(folder)))


def test_name_and_layout(wheel):
    assert os.path.basename(wheel) == f"v2d-{v2d.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"v2d-{v2d.__version__}.dist-info/METADATA").decode()
        wheel_info = zf.read(f"v2d-{v2d.__version__}.dist-info/WHEEL").decode()
    for required in (
        "v2d/__init__.py",
        "v2d/settings.py",
        "v2d/build/healthcheck.py",
        "v2d/py.typed",
        "twisted/plugins/v2d_plugin.py",
    ):
        assert required in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "twisted/plugins/__init__.py" not in names, "twisted.plugins stays Twisted's own package"
    assert f"Version: {v2d.__version__}" in meta
    assert "Requires-Dist: twisted" in meta.replace("Twisted", "twisted")
    assert "Root-Is-Purelib: true" in wheel_info


def test_record_matches_the_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        record = zf.read(f"v2d-{v2d.__version__}.dist-info/RECORD").decode()
        rows = list(csv.reader(io.StringIO(record)))
        assert {row[0] for row in rows} == set(zf.namelist())
        for path, digest, size in rows:
            if path.endswith("RECORD"):
                assert digest == "" and size == ""
                continue
            data = zf.read(path)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}"
            assert int(size) == len(data)


def test_same_files_same_bytes(wheel, tmp_path):
    again = os.path.join(str(tmp_path), build_v2d_wheel(str(tmp_path)))
    with open(wheel, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read(), "an unchanged v2d must keep Docker's layer cache valid"


def test_pip_installs_it(wheel, tmp_path):
    target = str(tmp_path / "site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    assert os.path.isfile(os.path.join(target, "twisted", "plugins", "v2d_plugin.py"))
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import v2d, v2d.build.healthcheck; print(v2d.__file__, v2d.__version__)",
        ],
        cwd=target,
        env=dict(os.environ, PYTHONPATH=target),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out[0].startswith(target)
    assert out[1] == v2d.__version__


def test_files_only_the_installed_copy_has_are_added(tmp_path, monkeypatch):
    """v2d imported from a checkout lacking install-time generated files: they come from site-packages."""
    site = tmp_path / "site"
    generated = site / "v2d" / "_generated_only_when_installed.py"
    generated.parent.mkdir(parents=True)
    generated.write_text("X = 1\n")
    (site / "v2d" / "__init__.py").write_text("")
    dist_info = site / f"v2d-{v2d.__version__}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: v2d\nVersion: {v2d.__version__}\n")
    (dist_info / "RECORD").write_text(
        "v2d/__init__.py,,\nv2d/_generated_only_when_installed.py,,\nv2d/__pycache__/x.cpython-311.pyc,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    from v2d.build._wheel import v2d_package_files

    files = dict(v2d_package_files())
    assert files["v2d/_generated_only_when_installed.py"] == str(generated)
    # the imported copy wins for files both have
    assert files["v2d/__init__.py"] == v2d.__file__
    assert not any("__pycache__" in name for name in files)
