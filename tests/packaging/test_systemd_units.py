"""
The systemd units under packaging/systemd/ verify clean and stay hardened.

``systemd-analyze verify`` checks each unit in a scratch root (``--root``) that holds
the host's system units, our units in ``etc/systemd/system`` and a stand-in for
``/opt/venvs/v2d/bin/twistd`` (verify insists that ExecStart= exists): it must exit 0
and print nothing, since unknown keys and bad values are only warnings.
``systemd-analyze security --offline`` rates the services; the score must stay at or
below the one recorded in docs/deployment.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
UNIT_NAMES = ("v2d.service", "v2d-activated.service", "v2d.socket")
SERVICES = ("v2d.service", "v2d-activated.service")
TWISTD = "opt/venvs/v2d/bin/twistd"


def unavailable(reason: str) -> None:
    """Skip, or fail under CI where every facility must be present."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def host_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    unavailable("the host has no systemd unit directory (install systemd: .ci/setup-packaging.sh)")
    raise AssertionError("unreachable")


@pytest.fixture
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        unavailable("systemd-analyze is not installed (install systemd: .ci/setup-packaging.sh)")
    return str(path)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A scratch root with the system's units, ours, and a stand-in twistd."""
    root = tmp_path / "root"
    shutil.copytree(host_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    target = root / "etc/systemd/system"
    target.mkdir(parents=True)
    for name in UNIT_NAMES:
        shutil.copy(UNITS / name, target / name)
    for command in (root / TWISTD, root / "bin/kill"):  # ExecStart's and ExecReload's
        command.parent.mkdir(parents=True, exist_ok=True)
        command.write_text("#!/bin/sh\nexit 0\n")
        command.chmod(0o755)
    return root


def verify(analyze: str, root: Path, *names: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [analyze, "verify", f"--root={root}", *names],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )


def parse_unit(name: str) -> Dict[str, Dict[str, List[str]]]:
    """A unit file as section -> key -> values (keys may repeat)."""
    sections: Dict[str, Dict[str, List[str]]] = {}
    current: Dict[str, List[str]] = {}
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_units_verify_clean(analyze: str, unit_root: Path) -> None:
    result = verify(analyze, unit_root, *UNIT_NAMES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_verify_would_report_a_mistake(analyze: str, unit_root: Path) -> None:
    """The check above can fail: a misspelt key is reported (only as a warning)."""
    unit = unit_root / "etc/systemd/system/v2d.service"
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes"))
    result = verify(analyze, unit_root, "v2d.service")
    assert "ProtectHomes" in result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_security_exposure_is_recorded_and_kept(analyze: str, unit_root: Path, service: str) -> None:
    result = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={unit_root}", "--no-pager", service],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    documented = re.search(
        r"systemd-analyze security.*?exposure level\D*(\d+\.\d)",
        (ROOT / "docs" / "deployment.md").read_text(),
        re.S,
    )
    assert documented, "docs/deployment.md records no systemd-analyze security score"
    assert score <= float(documented.group(1)), f"{service} exposure {score} is worse than documented"
    assert score <= 2.0


@pytest.mark.parametrize("service", SERVICES)
def test_service_runs_twistd_in_the_foreground_and_hardened(service: str) -> None:
    unit = parse_unit(service)["Service"]
    (exec_start,) = unit["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == "/" + TWISTD
    assert "--nodaemon" in argv and "--pidfile=" in argv and "--logfile=-" in argv
    assert argv[argv.index("v2d") + 1 :][:2] == ["--config", "/etc/v2d/settings.json"]
    assert unit["KillMode"] == ["mixed"]
    assert unit["Type"] == ["simple"]
    assert unit["User"] == ["v2d"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[key] == [value], key
    assert unit["StateDirectory"] == ["v2d v2d/models"]
    assert unit["CacheDirectory"] == ["v2d v2d/envs"]


def test_socket_activation_pairs_the_socket_with_its_service() -> None:
    socket = parse_unit("v2d.socket")
    activated = parse_unit("v2d-activated.service")
    plain = parse_unit("v2d.service")
    assert socket["Socket"]["Service"] == ["v2d-activated.service"]
    # domain=INET in the strports description needs an IPv4 listening address.
    assert re.fullmatch(r"(0\.0\.0\.0|127\.0\.0\.1):\d+", socket["Socket"]["ListenStream"][0])
    assert activated["Service"]["ExecStart"][0].endswith("--rest systemd:domain=INET:index=0")
    assert "--rest" not in plain["Service"]["ExecStart"][0]
    assert "Install" not in activated, "the activated service is started by its socket only"
    assert socket["Install"]["WantedBy"] == ["sockets.target"]
    assert plain["Install"]["WantedBy"] == ["multi-user.target"]
    # The two ways of running hold the same port: each stops the other.
    assert "v2d.socket" in plain["Unit"]["Conflicts"][0].split()
    assert "v2d.service" in socket["Unit"]["Conflicts"][0].split()


def test_service_variants_differ_only_where_they_must() -> None:
    """v2d-activated.service is v2d.service plus the socket; the hardening is shared."""
    plain, activated = parse_unit("v2d.service"), parse_unit("v2d-activated.service")
    ignore = {"ExecStart"}
    assert {k: v for k, v in plain["Service"].items() if k not in ignore} == {
        k: v for k, v in activated["Service"].items() if k not in ignore
    }


def test_default_settings_are_valid_json_for_the_unit_paths() -> None:
    import json

    settings = json.loads((ROOT / "packaging" / "settings.json").read_text())
    assert settings["models"] == "/var/lib/v2d/models"
    assert settings["envs_dir"] == "/var/cache/v2d/envs"
    # Every key is a field of v2d.settings.Settings.
    from v2d.settings import Settings

    assert set(settings) <= set(Settings.field_names())
    loaded = Settings.load(config_path=str(ROOT / "packaging" / "settings.json"), environ={})
    assert loaded.models == "/var/lib/v2d/models" and loaded.rest == ["tcp:8080"]


def test_reload_sends_sighup_to_the_main_process() -> None:
    """``systemctl reload v2d``: SIGHUP reloads the models whose folders changed."""
    for name in ("v2d.service", "v2d-activated.service"):
        assert parse_unit(name)["Service"]["ExecReload"] == ["/bin/kill -HUP $MAINPID"], name
