"""
The Debian package builds, is lintian clean, and installs, serves, removes and purges
on a real systemd.

``packaging/build-deb.sh`` runs ``dpkg-buildpackage -us -uc -b`` on a copy of the tree
(dh-virtualenv bundles v2d and its dependencies under /opt/venvs/v2d). The package is
then installed in a Debian bookworm container whose PID 1 is systemd (the local base
image of tests/support/docker_engine.py plus systemd), so that the postinst's user
creation, unit enabling and starting are the real thing: ``v2d.service`` must answer
``/v2/health/ready`` and serve inference, the socket-activated ``v2d.socket`` +
``v2d-activated.service`` pair must start on the first connection, a stop must drain
and end the worker processes, and remove/purge must leave the expected traces only.

The tests in this module run in order against one container (each step builds on the
previous one), which keeps the whole at about three minutes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest

from tests.support.docker_engine import base_image, docker_client, unavailable

pytestmark = [pytest.mark.packaging, pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: What the test image adds to the base image: systemd as PID 1 and the tools the test uses.
MACHINE_PACKAGES = ("systemd", "systemd-sysv", "adduser", "curl", "procps")
#: Flags under which systemd runs as PID 1 in a container on this kind of host
#: (``--privileged`` does not work here).
SYSTEMD_RUN_OPTIONS: dict = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined"],
    "cgroupns": "host",
    "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    "tmpfs": {"/run": "", "/run/lock": ""},
    "environment": {"container": "docker"},
    "stop_signal": "SIGRTMIN+3",
    # Everything the test sends goes to the container's own loopback.
    "network_mode": "none",
}
INFER_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}


class Machine:
    """A booted systemd container: run shell commands in it, copy files into it."""

    def __init__(self, container: Any) -> None:
        self.container = container

    def sh(self, command: str, timeout: int = 120) -> Tuple[int, str]:
        """Run ``command`` with sh -c; return (exit status, stdout+stderr)."""
        rc, output = self.container.exec_run(
            ["timeout", str(timeout), "sh", "-c", command], stdout=True, stderr=True
        )
        return rc, output.decode("utf-8", "replace")

    def ok(self, command: str, timeout: int = 120) -> str:
        """Run ``command``; it must succeed; return its output."""
        rc, output = self.sh(command, timeout)
        assert rc == 0, f"{command!r} exited with {rc}:\n{output}"
        return output

    def put(self, source: Path, target_dir: str, name: str | None = None) -> None:
        """Copy a file or a folder into ``target_dir`` (which must exist)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(source), arcname=name or source.name)
        self.container.put_archive(target_dir, buffer.getvalue())

    def http(self, method: str, path: str, body: Any = None, retry_seconds: int = 0) -> Tuple[int, str]:
        """An HTTP request to the container's own loopback port 8080; (status, body)."""
        parts = ["curl", "-s", "-o", "/tmp/body", "-w", "%{http_code}", "-X", method]
        if retry_seconds:
            parts += ["--retry", str(retry_seconds), "--retry-delay", "1", "--retry-connrefused"]
            parts += ["--retry-all-errors"]
        if body is not None:
            parts += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        parts.append(f"http://127.0.0.1:8080{path}")
        rc, status = self.sh(" ".join(shlex.quote(p) for p in parts) + "; true")
        _, text = self.sh("cat /tmp/body 2>/dev/null; rm -f /tmp/body")
        return (int(status) if status.strip().isdigit() else 0), text

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        status, body = 0, ""
        while time.monotonic() < deadline:
            status, body = self.http("GET", "/v2/health/ready")
            if status == 200:
                return
            time.sleep(0.5)
        journal = self.sh("journalctl --no-pager -n 60 -u v2d.service -u v2d-activated.service")[1]
        raise AssertionError(f"/v2/health/ready answered {status} {body!r}; journal:\n{journal}")

    def unit(self, name: str, prop: str) -> str:
        return self.ok(f"systemctl show -p {prop} --value {name}").strip()


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (run .ci/setup-packaging.sh)")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v2d_*.deb, built from this tree with dpkg-buildpackage (or ``$V2D_TEST_DEB`` if set)."""
    prebuilt = os.environ.get("V2D_TEST_DEB")
    if prebuilt:
        return Path(prebuilt)
    require_tools("dpkg-buildpackage", "dh_virtualenv", "dpkg-deb")
    outdir = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        ["sh", str(ROOT / "packaging" / "build-deb.sh"), str(outdir)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    (path,) = outdir.glob("v2d_*.deb")
    return path


def machine_image(client: Any) -> str:
    """The test image: the suite's base image plus MACHINE_PACKAGES, made once.

    Layering the packages on the shared base image with apt takes well under a minute;
    only where the build cannot reach the Debian mirror is a whole second image made
    with debootstrap (several minutes).
    """
    import docker

    base = base_image(client)
    recipe = "\n".join([base, *MACHINE_PACKAGES])
    tag = f"v2d-test-systemd:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    dockerfile = (
        f"FROM {base}\n"
        "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        f"--no-install-recommends {' '.join(MACHINE_PACKAGES)} && rm -rf /var/lib/apt/lists/*\n"
        'CMD ["/lib/systemd/systemd"]\n'
    )
    try:
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True)
        return tag
    except docker.errors.BuildError:
        return base_image(client, MACHINE_PACKAGES)


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    """A container with systemd as PID 1, booted."""
    client = docker_client()
    image = machine_image(client)
    container = client.containers.run(
        image, ["/lib/systemd/systemd"], detach=True, name=None, **SYSTEMD_RUN_OPTIONS
    )
    try:
        box = Machine(container)
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            # Until systemd has set up its private bus this fails at once; then it waits.
            state = box.sh("systemctl is-system-running --wait", timeout=90)[1].strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            logs = container.logs().decode("utf-8", "replace")[-3000:]
            unavailable(f"systemd did not boot in the container ({state!r}):\n{logs}")
        yield box
    finally:
        container.remove(force=True)


def test_package_contents(deb: Path) -> None:
    assert re.fullmatch(r"v2d_\d[^_]*_\w+\.deb", deb.name)
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in (
        "/etc/v2d/settings.json",
        "/etc/default/v2d",
        "/var/lib/v2d/models/",
        "/lib/systemd/system/v2d.service",
        "/lib/systemd/system/v2d.socket",
        "/lib/systemd/system/v2d-activated.service",
        "/usr/bin/v2d-build",
        "/opt/venvs/v2d/bin/twistd",
    ):
        assert expected in paths, expected
    assert any(p.endswith("/site-packages/twisted/plugins/dropin.cache") for p in paths)
    assert any(p.endswith("/site-packages/twisted/plugins/v2d_plugin.py") for p in paths)
    assert any(p.endswith("/site-packages/v2d/build/cli.py") for p in paths)
    assert paths & {"/usr/share/doc/v2d/deployment.md", "/usr/share/doc/v2d/deployment.md.gz"}
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "/etc/v2d/settings.json" in conffiles
    # The units shipped are the ones in packaging/systemd/, byte for byte.
    extracted = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(extracted)) as tar:
        for name in ("v2d.service", "v2d.socket", "v2d-activated.service"):
            member = tar.extractfile(f"./lib/systemd/system/{name}")
            assert member is not None
            assert member.read() == (ROOT / "packaging" / "systemd" / name).read_bytes()


def test_lintian_clean(deb: Path) -> None:
    """Only the tags overridden (and explained) in packaging/debian/v2d.lintian-overrides."""
    require_tools("lintian")
    result = subprocess.run(["lintian", "--fail-on", "warning", str(deb)], capture_output=True, text=True)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWX]: ", line)]
    assert tags == [] and result.returncode == 0, result.stdout + result.stderr


def test_install_enables_and_starts_the_service(machine: Machine, deb: Path) -> None:
    machine.put(deb, "/root", "v2d.deb")
    machine.ok("dpkg -i /root/v2d.deb", timeout=300)
    assert machine.ok("systemctl is-enabled v2d.service").strip() == "enabled"
    assert machine.sh("systemctl is-enabled v2d.socket")[1].strip() == "disabled"
    machine.wait_ready()
    assert machine.ok("systemctl is-active v2d.service").strip() == "active"
    main_pid = machine.unit("v2d.service", "MainPID")
    assert machine.ok(f"ps -o user= -p {main_pid}").strip() == "v2d"
    assert "twistd" in machine.ok(f"cat /proc/{main_pid}/cmdline | tr '\\0' ' '")
    assert machine.ok("stat -c %U /var/lib/v2d/models").strip() == "v2d"
    assert machine.ok("command -v v2d-build").strip() == "/usr/bin/v2d-build"
    assert "--dockerfile-only" in machine.ok("v2d-build --help")
    # Logs go to the journal; the shipped plugin cache is used as it is.
    journal = machine.ok("journalctl --no-pager -u v2d.service")
    assert "REST listening" in journal
    assert "plugin cache" not in journal, journal


def test_installed_units_verify_clean(machine: Machine) -> None:
    rc, output = machine.sh("systemd-analyze verify v2d.service v2d.socket v2d-activated.service")
    assert rc == 0 and output.strip() == "", output
    score = machine.ok("systemd-analyze security --no-pager v2d.service | tail -n 1")
    assert re.search(r"exposure level for v2d\.service: [01]\.\d", score), score


def test_serves_inference_with_worker_processes(machine: Machine) -> None:
    machine.put(ROOT / "examples" / "models" / "numpy-add", "/var/lib/v2d/models")
    machine.ok("echo V2D_WORKERS=1 >> /etc/default/v2d && systemctl restart v2d.service")
    machine.wait_ready()
    status, body = machine.http("POST", "/v2/models/numpy-add/infer", INFER_BODY)
    assert status == 200, body
    (output,) = json.loads(body)["outputs"]
    assert output["name"] == "y" and output["data"] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # The model runs in a worker process: the service has more than its main process.
    main_pid = machine.unit("v2d.service", "MainPID")
    children = machine.ok(f"ps -o pid= --ppid {main_pid}").split()
    assert children, "no worker process under the daemon"


def test_stop_drains_and_ends_the_workers(machine: Machine) -> None:
    machine.ok("systemctl stop v2d.service", timeout=90)
    assert machine.unit("v2d.service", "Result") == "success"
    # SIGTERM to the main process only (KillMode=mixed): the daemon ends its own workers,
    # so nothing of the service's cgroup is left for systemd to kill.
    assert machine.sh("pgrep -u v2d")[0] == 1, machine.sh("ps -fu v2d")[1]
    journal = machine.ok("journalctl --no-pager -u v2d.service")
    assert "Sent signal SIGKILL" not in journal and "Killing process" not in journal, journal[-3000:]


def test_socket_activation(machine: Machine) -> None:
    machine.ok("systemctl start v2d.socket")
    assert machine.sh("systemctl is-active v2d-activated.service")[1].strip() == "inactive"
    # The first connection starts v2d-activated.service, which adopts the socket.
    status, body = machine.http("GET", "/v2/health/ready", retry_seconds=30)
    assert status == 200, body
    assert machine.ok("systemctl is-active v2d-activated.service").strip() == "active"
    main_pid = machine.unit("v2d-activated.service", "MainPID")
    assert "systemd:domain=INET:index=0" in machine.ok(f"cat /proc/{main_pid}/cmdline | tr '\\0' ' '")
    status, body = machine.http("POST", "/v2/models/numpy-add/infer", INFER_BODY)
    assert status == 200, body
    # Stopping the service keeps the port: the next connection starts it again.
    machine.ok("systemctl stop v2d-activated.service", timeout=90)
    status, body = machine.http("GET", "/v2/health/live", retry_seconds=30)
    assert status == 200, body
    machine.ok("systemctl stop v2d.socket v2d-activated.service", timeout=90)


def test_remove_keeps_configuration_and_purge_removes_everything(machine: Machine) -> None:
    machine.ok("systemctl start v2d.service")
    machine.wait_ready()
    machine.ok("dpkg -r v2d", timeout=180)
    assert machine.sh("systemctl is-active v2d.service")[1].strip() != "active"
    for gone in ("/opt/venvs/v2d", "/lib/systemd/system/v2d.service", "/usr/bin/v2d-build"):
        assert machine.sh(f"test -e {gone}")[0] != 0, machine.sh(f"find {gone} -type f | head")[1]
    assert machine.sh("test -f /etc/v2d/settings.json")[0] == 0, "a conffile survives remove"
    machine.ok("dpkg -P v2d", timeout=180)
    for gone in ("/etc/v2d", "/etc/default/v2d", "/var/lib/v2d", "/var/cache/v2d"):
        assert machine.sh(f"test -e {gone}")[0] != 0, gone
    assert machine.sh("getent passwd v2d")[0] != 0, "purge removes the system user"
    assert machine.sh("dpkg -s v2d")[0] != 0
