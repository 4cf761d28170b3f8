"""
A real Docker engine and a local base image for tests about images.

Use it from any test that needs Docker::

    from tests.support.docker_engine import base_image, docker_client

    def test_something():
        client = docker_client()      # a docker.DockerClient, engine alive
        tag = base_image(client)      # a local Debian bookworm image with python3
        client.containers.run(tag, ["python3", "-V"], remove=True)

``docker_client()`` finds an engine in this order and caches the client per process:

1. ``DOCKER_HOST`` if it is set (then it must answer);
2. the suite's own engine socket, ``<cache>/docker.sock`` (``<cache>`` is
   ``$V2D_TEST_DOCKER_DIR``, else ``$XDG_CACHE_HOME/v2d-tests/docker``, else
   ``~/.cache/v2d-tests/docker``), if a dockerd already listens there;
3. the default socket ``/var/run/docker.sock`` if an engine answers there;
4. otherwise it starts ``dockerd`` itself (root and Debian's ``docker.io`` needed;
   ``.ci/setup-docker.sh`` installs it) with its data in ``<cache>/data`` and its
   socket at ``<cache>/docker.sock``; that engine is stopped when the test process
   exits (set ``V2D_TEST_DOCKER_KEEP=1`` to leave it running for the next run).

``base_image(client, packages=())`` returns the tag of a minimal Debian bookworm
(python3 3.11, python3-venv, python3-pip, ca-certificates, plus ``packages``) made
with ``debootstrap`` and ``docker import``, because Docker Hub cannot be reached from
the test machines. The tag encodes the recipe, so the image is built once (about a
minute) and then found by tag in later runs, as long as the engine's data is kept.
Packages such as ``systemd`` can be added for tests that need them; each distinct
list is its own image.

When a facility is missing (no dockerd, not root, no debootstrap), the test is
skipped with the reason; under CI (``CI=true``) it fails instead, because CI is
expected to provide everything.

``python -m tests.support.docker_engine`` starts the engine (and leaves it running),
builds the base image and prints ``DOCKER_HOST=...``; it is what a developer runs to
look at the test images by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, List, NoReturn, Optional, Sequence

__all__ = [
    "BASE_PACKAGES",
    "base_image",
    "cache_dir",
    "docker_client",
    "docker_host",
    "unavailable",
]

#: What every base image holds besides Debian's minimal base.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
#: Bump when the way base images are made changes (it is part of the tag).
RECIPE_VERSION = "1"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SOCKET = "/var/run/docker.sock"
START_TIMEOUT = 60.0

_client: Any = None
_started: Optional[subprocess.Popen] = None


def unavailable(reason: str) -> NoReturn:
    """Skip the current test with ``reason``, or fail it under CI."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Docker tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def cache_dir() -> str:
    """Where the suite's engine keeps its socket and data."""
    explicit = os.environ.get("V2D_TEST_DOCKER_DIR")
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "v2d-tests", "docker")


def _suite_socket() -> str:
    return os.path.join(cache_dir(), "docker.sock")


def _pings(socket_path: str, timeout: float = 5.0) -> bool:
    """An engine answers ``GET /_ping`` on this unix socket."""
    if not os.path.exists(socket_path):
        return False
    connection = http.client.HTTPConnection("localhost", timeout=timeout)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(socket_path)
        connection.sock = sock
        connection.request("GET", "/_ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """An exclusive lock shared by every test process using the same cache dir."""
    os.makedirs(cache_dir(), exist_ok=True)
    with open(os.path.join(cache_dir(), name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _start_dockerd(keep: bool) -> str:
    """Start dockerd on the suite's socket; return ``unix://...``."""
    global _started
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        unavailable("no Docker engine answers and dockerd is not installed (run .ci/setup-docker.sh)")
    if os.geteuid() != 0:
        unavailable("no Docker engine answers and starting dockerd needs root")
    directory = cache_dir()
    sock = _suite_socket()
    # The exec root holds containerd's sockets: keep its path short (sun_path is 108 bytes).
    exec_root = os.path.join(
        tempfile.gettempdir(), "v2d-test-dockerd-" + hashlib.sha256(directory.encode()).hexdigest()[:8]
    )
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    log_path = os.path.join(directory, "dockerd.log")
    command = [
        dockerd,
        "--data-root", os.path.join(directory, "data"),
        "--exec-root", exec_root,
        "--pidfile", os.path.join(directory, "dockerd.pid"),
        "--host", "unix://" + sock,
    ]  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not _pings(sock, timeout=2.0):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with open(log_path, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            unavailable(f"dockerd did not start (exit status {process.poll()}); its log ends:\n{tail}")
        time.sleep(0.2)
    if not keep:
        _started = process
        atexit.register(_stop_started)
    return "unix://" + sock


def _stop_started() -> None:
    """Stop the dockerd this process started: TERM, wait, KILL."""
    global _started
    process, _started = _started, None
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def docker_host(start: bool = True, keep: Optional[bool] = None) -> str:
    """The ``DOCKER_HOST`` of an engine that answers (see the module docstring)."""
    explicit = os.environ.get("DOCKER_HOST")
    if explicit:
        return explicit
    with _lock("engine"):
        if _pings(_suite_socket()):
            return "unix://" + _suite_socket()
        if _pings(DEFAULT_SOCKET):
            return "unix://" + DEFAULT_SOCKET
        if not start:
            unavailable("no Docker engine answers")
        if keep is None:
            keep = os.environ.get("V2D_TEST_DOCKER_KEEP", "") not in ("", "0")
        return _start_dockerd(keep)


def docker_client() -> Any:
    """A ``docker.DockerClient`` of a live engine, started if need be (cached)."""
    global _client
    if _client is not None:
        return _client
    try:
        import docker
    except ImportError:
        unavailable("the docker Python package is not installed")
    host = docker_host()
    try:
        client = docker.DockerClient(base_url=host, timeout=600)
        client.ping()
    except docker.errors.DockerException as e:
        unavailable(f"the Docker engine at {host} does not answer: {e}")
    _client = client
    return client


def _image_tag(packages: Sequence[str]) -> str:
    recipe = "\n".join([RECIPE_VERSION, SUITE, *sorted(set(BASE_PACKAGES) | set(packages))])
    return f"v2d-test-base:{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def base_image(client: Any, packages: Sequence[str] = ()) -> str:
    """The tag of a local bookworm base image with python3 (and ``packages``), made once."""
    import docker

    tag = _image_tag(packages)
    with _lock("base-image"):
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            unavailable("debootstrap is not installed (run .ci/setup-docker.sh)")
        if os.geteuid() != 0:
            unavailable("making the base image with debootstrap needs root")
        include = ",".join(sorted(set(BASE_PACKAGES) | set(packages)))
        mirror = os.environ.get("V2D_TEST_DEBIAN_MIRROR", DEFAULT_MIRROR)
        work = tempfile.mkdtemp(prefix="v2d-test-rootfs-", dir=cache_dir())
        try:
            rootfs = os.path.join(work, "rootfs")
            result = subprocess.run(
                [debootstrap, "--variant=minbase", f"--include={include}", SUITE, rootfs, mirror],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr)[-3000:]
                unavailable(f"debootstrap failed (exit status {result.returncode}):\n{output}")
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in os.listdir(os.path.join(rootfs, leftover)):
                    path = os.path.join(rootfs, leftover, entry)
                    if os.path.isfile(path) and entry != "lock":
                        os.unlink(path)
            archive = os.path.join(work, "rootfs.tar")
            subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", archive, "."], check=True)
            repository, _, version = tag.partition(":")
            client.api.import_image_from_file(
                archive,
                repository=repository,
                tag=version,
                changes=[
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "ENV LANG=C.UTF-8",
                    'CMD ["python3"]',
                ],
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        client.images.get(tag)
        return tag


def _main(argv: List[str]) -> int:
    """Start (and keep) the engine, make the base image, print DOCKER_HOST."""
    packages = argv[1:]
    os.environ.setdefault("V2D_TEST_DOCKER_KEEP", "1")
    host = docker_host()
    os.environ["DOCKER_HOST"] = host
    tag = base_image(docker_client(), packages)
    print(f"DOCKER_HOST={host}")
    print(f"base image: {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
