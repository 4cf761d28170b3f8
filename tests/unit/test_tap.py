"""``twistd v2d`` options, without installing any reactor."""

from __future__ import annotations

import pytest

import v2d.tap
from v2d.tap import Options


@pytest.fixture(autouse=True)
def no_reactor(monkeypatch):
    monkeypatch.setattr(v2d.tap, "install_asyncio_reactor", lambda event_loop="auto": object())
    for var in ("V2D_CONFIG", "V2D_WORKERS", "V2D_REST", "V2D_GRPC", "V2D_MODELS"):
        monkeypatch.delenv(var, raising=False)


def test_options_become_settings():
    options = Options()
    options.parseOptions(
        [
            "--models",
            "m",
            "--rest",
            "tcp:1",
            "--rest",
            "unix:/s",
            "--grpc",
            "none",
            "--workers",
            "2",
            "--envs-dir",
            "e",
        ]
    )
    s = options["settings"]
    assert (s.models, s.rest, s.grpc, s.workers, s.envs_dir) == ("m", ["tcp:1", "unix:/s"], None, 2, "e")


def test_environment_fills_in(monkeypatch):
    monkeypatch.setenv("V2D_WORKERS", "3")
    options = Options()
    options.parseOptions([])
    assert options["settings"].workers == 3


@pytest.mark.parametrize("argv", [["--workers", "-1"], ["--workers", "x"], ["--config", "/nonexistent.json"]])
def test_bad_options(argv):
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(argv)
    assert str(exit.value.code).startswith("v2d: ")


def test_plugin_is_light():
    import ast
    import pathlib

    source = pathlib.Path(v2d.tap.__file__).parent.parent / "twisted" / "plugins" / "v2d_plugin.py"
    if not source.exists():
        pytest.skip("running against an installed copy")
    tree = ast.parse(source.read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported == ["twisted.application.service"]


def test_event_loop_option():
    options = Options()
    options.parseOptions(["--event-loop", "asyncio"])
    assert options["settings"].event_loop == "asyncio"
    options = Options()
    options.parseOptions([])
    assert options["settings"].event_loop == "auto"
    with pytest.raises(SystemExit, match="event_loop"):
        Options().parseOptions(["--event-loop", "tokio"])


def test_new_event_loop_kinds():
    import asyncio

    from v2d.tap import new_event_loop

    plain = new_event_loop("asyncio")
    try:
        assert isinstance(plain, asyncio.SelectorEventLoop)
    finally:
        plain.close()
    uvloop = pytest.importorskip("uvloop")
    fast = new_event_loop("auto")
    try:
        assert isinstance(fast, uvloop.Loop)
    finally:
        fast.close()
