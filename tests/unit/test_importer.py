"""Model code in private namespaces."""

from __future__ import annotations

import sys

import pytest

from v2d.importer import ImplementationError, load_implementation


def make(folder, who):
    folder.mkdir(parents=True)
    (folder / "helpers.py").write_text(f"WHO = {who!r}\n")
    (folder / "models.py").write_text(
        "import helpers\nfrom helpers import WHO\n"
        "class Runtime:\n    def who(self):\n        import helpers as again\n"
        "        return helpers.WHO, WHO, again.WHO\n"
    )
    return folder


def test_same_module_names_stay_apart(tmp_path):
    a = make(tmp_path / "a", "a")
    b = make(tmp_path / "b", "b")
    ra, na = load_implementation(str(a), "models.Runtime", "a")
    rb, nb = load_implementation(str(b), "models.Runtime", "b")
    assert ra().who() == ("a", "a", "a")
    assert rb().who() == ("b", "b", "b")
    assert "helpers" not in sys.modules and "models" not in sys.modules
    na.forget()
    nb.forget()
    assert not [m for m in sys.modules if m.startswith(na.package)]


def test_reload_compiles_changed_source(tmp_path):
    a = make(tmp_path / "a", "old")
    r1, n1 = load_implementation(str(a), "models.Runtime")
    (a / "helpers.py").write_text("WHO = 'new'\n")  # same size, same second: no stale bytecode
    n1.forget()
    r2, n2 = load_implementation(str(a), "models.Runtime")
    assert r2().who()[0] == "new"
    n2.forget()


def test_packages_and_relative_imports(tmp_path):
    pkg = tmp_path / "m" / "lib"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .core import VALUE\n")
    (pkg / "core.py").write_text("VALUE = 42\n")
    (tmp_path / "m" / "models.py").write_text("from lib import VALUE\nclass R:\n    value = VALUE\n")
    cls, ns = load_implementation(str(tmp_path / "m"), "models.R")
    assert cls.value == 42
    ns.forget()


@pytest.mark.parametrize(
    "implementation,fragment",
    [
        ("", "missing"),
        ("Runtime", "dotted path"),
        ("nomodule.X", "no module 'nomodule'"),
        ("models.Nope", "no 'Nope'"),
    ],
)
def test_bad_implementations(tmp_path, implementation, fragment):
    a = make(tmp_path / "a", "a")
    with pytest.raises(ImplementationError, match=fragment):
        load_implementation(str(a), implementation)
