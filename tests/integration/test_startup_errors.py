"""
Start-up problems an operator can cause, through the real ``twistd v2d``: each ends
with one clear line and exit status 1, never a traceback or a usage dump; and the small
conveniences (a bare port, ``--version``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import List, Tuple

import pytest

from tests.support.daemon import Daemon, free_port, package_root, twistd_command

pytestmark = pytest.mark.integration


def run_twistd(args: List[str], cwd: str, timeout: float = 60.0) -> Tuple[int, str]:
    """(exit status, everything it printed) of a twistd v2d that is expected to stop by itself."""
    env = dict(os.environ, PYTHONPATH=package_root())
    done = subprocess.run(
        twistd_command() + ["-n", "--pidfile=", "--logfile=-", "v2d", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


def lines_with(output: str, needle: str) -> List[str]:
    return [line for line in output.splitlines() if needle in line]


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    return str(folder)


def test_rest_port_in_use(models, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out = run_twistd(
            ["--models", models, "--rest", f"tcp:{port}:interface=127.0.0.1", "--grpc", "none"], str(tmp_path)
        )
    assert status == 1
    expected = (f"v2d failed to start: cannot listen on 127.0.0.1:{port} (REST): address already in use; "
                "is another server using the port?")
    assert len(lines_with(out, expected)) == 1, out
    assert "Traceback" not in out


def test_grpc_port_in_use(models, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out = run_twistd(
            ["--models", models, "--rest", f"tcp:{free_port()}:interface=127.0.0.1",
             "--grpc", f"127.0.0.1:{port}"], str(tmp_path)
        )
    assert status == 1
    expected = f"v2d failed to start: cannot listen on 127.0.0.1:{port} (gRPC): the address is in use"
    assert len(lines_with(out, expected)) == 1, out
    assert "Traceback" not in out


def test_bad_endpoint(models, tmp_path):
    status, out = run_twistd(["--models", models, "--rest", "bogus:1"], str(tmp_path))
    assert status == 1
    assert out.strip() == (
        "v2d: field 'rest': 'bogus:1' is not a listen endpoint (strports): Unknown endpoint type: 'bogus'"
    )


def test_missing_models_folder(tmp_path):
    missing = str(tmp_path / "nowhere")
    status, out = run_twistd(["--models", missing, "--grpc", "none"], str(tmp_path))
    assert status == 1
    assert out.strip() == (
        f"v2d: field 'models': no folder {missing!r} (create it, or name the folder holding your "
        "model folders with --models)"
    )


def test_bad_settings_fields_all_named_at_once(models, tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"workers": "many", "server_nme": "x"}))
    status, out = run_twistd(["--models", models, "--config", str(config)], str(tmp_path))
    assert status == 1
    lines = out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("v2d: ") for line in lines), out
    assert any("workers" in line for line in lines) and any("server_nme" in line for line in lines)
    assert "Usage" not in out and "--help" not in out.replace("twistd v2d --help lists", "")


def test_version(tmp_path):
    status, out = run_twistd(["--version"], str(tmp_path))
    assert status == 0
    from v2d import __version__

    assert out.startswith(f"v2d {__version__} (twisted ")
    assert "numpy" in out and "hpack " in out and "Python" in out


def test_a_bare_port_is_a_tcp_port(models):
    port = free_port()
    argv = twistd_command() + ["-n", "--pidfile=", "--logfile=-", "v2d", "--models", models,
                               "--rest", str(port), "--grpc", "none"]
    daemon = Daemon(models, argv=argv, grpc=False)
    daemon.http_port = port  # the helper reads ports from tcp: descriptions only
    with daemon as d:
        assert d.get("/v2/health/live")[0] == 200
