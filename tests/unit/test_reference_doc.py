"""docs/reference.md lists every option ``twistd v2d --help`` prints, and no other."""

from __future__ import annotations

import os
import re

from v2d.tap import Options

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "reference.md")


def help_options() -> set:
    return set(re.findall(r"--([a-z][a-z0-9-]+)", str(Options())))


def reference_options() -> set:
    with open(REFERENCE, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## `twistd v2d` (the server)", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    return {name for row in rows for name in re.findall(r"`--([a-z][a-z0-9-]+)", row.split("|")[1])}


def test_every_option_of_the_help_is_in_the_reference():
    missing = help_options() - reference_options()
    assert not missing, f"docs/reference.md lacks: {', '.join(sorted(missing))}"


def test_the_reference_lists_no_option_the_server_lacks():
    extra = reference_options() - help_options()
    assert not extra, f"docs/reference.md lists options twistd v2d does not have: {', '.join(sorted(extra))}"
