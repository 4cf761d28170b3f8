"""
Talking to the Docker engine: connecting, choosing the builder, building.

The engine is reached with the ``docker`` SDK (``DOCKER_HOST`` and friends, else the
default socket). The SDK speaks only the classic builder API, so:

- BuildKit is used when the engine offers it (a Linux engine with API 1.39 or newer)
  *and* a ``docker`` command-line client that drives BuildKit is on ``PATH``
  (``docker buildx``, or a 18.09-22.x client with ``DOCKER_BUILDKIT=1``). The context
  is the same tar, given on the client's standard input.
- Otherwise the classic builder is used through the SDK.

``--builder`` forces either. Both build the same Dockerfile (it uses no BuildKit-only
syntax). A failing build raises ``BuildFailed`` carrying the tail of the build log.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from typing import IO, TYPE_CHECKING, Deque, Dict, List, Optional, TextIO, Tuple

import attrs

if TYPE_CHECKING:
    import docker

__all__ = [
    "BuildError",
    "BuildFailed",
    "BuildkitClient",
    "EngineUnavailable",
    "build_with_buildkit",
    "build_with_classic",
    "connect",
    "engine_offers_buildkit",
    "find_buildkit_client",
]

#: Lines of build output kept for the error message of a failed build.
LOG_TAIL = 30
#: Seconds a single read from the engine may take during a build (pip can be quiet long).
BUILD_READ_TIMEOUT = 3600


class BuildError(RuntimeError):
    """Base class of the errors v2d-build reports to its user."""


class EngineUnavailable(BuildError):
    """No Docker engine answers."""


class BuildFailed(BuildError):
    """A build step failed; ``log_tail`` holds the last lines of the build's output."""

    def __init__(self, message: str, log_tail: List[str]) -> None:
        super().__init__(message)
        self.log_tail = log_tail

    def __str__(self) -> str:
        tail = "\n".join("  | " + line for line in self.log_tail)
        return f"{self.args[0]}\nlast lines of the build log:\n{tail}" if tail else self.args[0]


def _where() -> str:
    return os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"


def connect() -> "docker.DockerClient":
    """A client of the engine that ``DOCKER_HOST`` (or the default) names, checked alive."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - docker is a dependency of v2d
        raise EngineUnavailable("the docker Python package is missing: pip install 'docker>=7.0'") from None
    try:
        client = docker.from_env(timeout=BUILD_READ_TIMEOUT)
        client.ping()
    except DockerException as e:
        raise EngineUnavailable(
            f"cannot reach a Docker engine at {_where()}: {_short(e)}\n"
            "Start Docker (e.g. `systemctl start docker`), or set DOCKER_HOST to a running engine."
        ) from None
    except OSError as e:
        raise EngineUnavailable(f"cannot reach a Docker engine at {_where()}: {e}") from None
    return client


def _short(error: Exception) -> str:
    """The gist of a connection error (the SDK wraps it several times)."""
    text = str(error)
    for phrase in ("No such file or directory", "Connection refused", "Permission denied", "timed out"):
        if phrase.lower() in text.lower():
            return phrase
    return text


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _log_lines(text: str) -> List[str]:
    """Lines of build output worth showing: colour codes dropped, blank lines skipped."""
    return [line for line in _ANSI.sub("", text).splitlines() if line.strip()]


def _version_tuple(text: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def engine_offers_buildkit(client: "docker.DockerClient") -> bool:
    """The engine can build with BuildKit (Linux, API 1.39 or newer)."""
    info = client.version()
    return info.get("Os", "linux") == "linux" and _version_tuple(info.get("ApiVersion", "0")) >= (1, 39)


@attrs.frozen
class BuildkitClient:
    """A ``docker`` command-line client able to drive BuildKit."""

    executable: str
    #: "buildx" (``docker buildx build``) or "builtin" (``DOCKER_BUILDKIT=1 docker build``).
    kind: str

    def command(self) -> List[str]:
        """The build command up to its options."""
        if self.kind == "buildx":
            return [self.executable, "buildx", "build", "--load"]
        return [self.executable, "build"]


def _docker_executables() -> List[str]:
    seen: List[str] = []
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = shutil.which("docker", path=folder or ".")
        if candidate and os.path.realpath(candidate) not in [os.path.realpath(s) for s in seen]:
            seen.append(candidate)
    return seen


def find_buildkit_client() -> Optional[BuildkitClient]:
    """The first ``docker`` client on PATH that can drive BuildKit, if any."""
    for executable in _docker_executables():
        try:
            buildx = subprocess.run(
                [executable, "buildx", "version"], capture_output=True, timeout=30, stdin=subprocess.DEVNULL
            )
            if buildx.returncode == 0:
                return BuildkitClient(executable, "buildx")
            version = subprocess.run(
                [executable, "version", "--format", "{{.Client.Version}}"],
                capture_output=True,
                timeout=30,
                text=True,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        # A client too old for the engine still prints its own version first.
        client_version = _version_tuple(version.stdout.strip() or "0")
        if (18, 9) <= client_version < (23,):
            return BuildkitClient(executable, "builtin")
    return None


def _failed_step(lines: List[str]) -> Optional[str]:
    """The build step that was running when the build failed, if the log shows it."""
    for line in reversed(lines):
        match = re.match(r"\s*(Step \d+/\d+ : .*)", line)
        if match:
            return match.group(1)
        match = re.match(r"#\d+ \[[^\]]+\] (.*)", line)
        if match:
            return match.group(1)
    return None


def _fail(reason: str, history: List[str], tail: List[str]) -> BuildFailed:
    step = _failed_step(history)
    message = f"the image build failed: {reason}"
    if step:
        message += f"\nfailing step: {step}"
    return BuildFailed(message, tail)


def build_with_classic(
    client: "docker.DockerClient",
    context: IO[bytes],
    tag: str,
    no_cache: bool = False,
    build_args: Optional[Dict[str, str]] = None,
    log: Optional[TextIO] = None,
) -> str:
    """Build with the classic builder through the SDK; return the image id."""
    from docker.errors import APIError

    tail: Deque[str] = collections.deque(maxlen=LOG_TAIL)
    steps: List[str] = []
    image_id: Optional[str] = None
    try:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            nocache=no_cache,
            buildargs=build_args or {},
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                text = chunk["stream"]
                if log is not None:
                    log.write(text)
                    log.flush()
                for line in _log_lines(text):
                    tail.append(line)
                    if line.startswith("Step "):
                        steps.append(line)
            if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                reason = (detail.get("message") or chunk.get("error") or "unknown error").strip()
                raise _fail(reason, steps, list(tail))
    except APIError as e:
        raise _fail(str(e.explanation or e), steps, list(tail)) from None
    if image_id is None:
        image_id = client.images.get(tag).id
    return image_id


def build_with_buildkit(
    buildkit: BuildkitClient,
    context: IO[bytes],
    tag: str,
    no_cache: bool = False,
    build_args: Optional[Dict[str, str]] = None,
    log: Optional[TextIO] = None,
) -> str:
    """Build with BuildKit through the ``docker`` client; return the image id."""
    command = buildkit.command() + ["--progress=plain", "--tag", tag]
    if no_cache:
        command.append("--no-cache")
    for key, value in (build_args or {}).items():
        command += ["--build-arg", f"{key}={value}"]
    with _tempfile_name() as iidfile:
        command += ["--iidfile", iidfile, "-"]
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        tail: Deque[str] = collections.deque(maxlen=LOG_TAIL)
        steps: List[str] = []
        try:
            process = subprocess.Popen(
                command, stdin=context, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
            )
        except OSError as e:
            raise BuildFailed(f"cannot run {buildkit.executable}: {e}", []) from None
        assert process.stdout is not None
        for line in process.stdout:
            if log is not None:
                log.write(line)
                log.flush()
            line = _ANSI.sub("", line).rstrip()
            if not line:
                continue
            tail.append(line)
            if re.match(r"#\d+ \[[^\]]+\] ", line):
                steps.append(line)
        code = process.wait()
        if code != 0:
            errors = [line for line in tail if "ERROR" in line or "error:" in line.lower()]
            reason = errors[-1].strip() if errors else f"{buildkit.executable} exited with status {code}"
            raise _fail(reason, steps, list(tail))
        with open(iidfile) as f:
            return f.read().strip()


class _tempfile_name:
    """A temporary file name that is removed afterwards (the client writes it)."""

    def __enter__(self) -> str:
        import tempfile

        fd, self.path = tempfile.mkstemp(prefix="v2d-build-iid-")
        os.close(fd)
        return self.path

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
