"""
Helpers for tests of images made by ``v2d-build``: running the command of the v2d
under test, the host's CA bundle for pip, and a container of an image with its REST
port published on 127.0.0.1.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from tests.support.daemon import http_json, package_root

__all__ = ["Container", "build_args", "host_ca_bundle", "ready_containers", "v2d_build"]


def host_ca_bundle() -> Optional[str]:
    """The CA bundle this machine trusts (pip inside the build needs it behind a TLS proxy)."""
    candidates = [
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def v2d_build(args: List[str], host: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the v2d-build command of the v2d under test."""
    env = dict(os.environ, DOCKER_HOST=host, PYTHONPATH=package_root())
    return subprocess.run(
        [sys.executable, "-m", "v2d.build", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def build_args(base: str) -> List[str]:
    args = ["--base-image", base]
    cert = host_ca_bundle()
    if cert:
        args += ["--pip-cert", cert]
    return args


class Container:
    """One running container of the image, its REST and gRPC ports published on 127.0.0.1."""

    def __init__(
        self,
        engine: Any,
        tag: str,
        env: Optional[Dict[str, str]] = None,
        rest_port: int = 8080,
        grpc_port: int = 8081,
        **options: Any,
    ) -> None:
        self.container = engine.containers.run(
            tag,
            detach=True,
            user="12345:0",
            environment=env or {},
            ports={f"{rest_port}/tcp": ("127.0.0.1", None), f"{grpc_port}/tcp": ("127.0.0.1", None)},
            **options,
        )
        self.container.reload()
        self.port = int(self.container.ports[f"{rest_port}/tcp"][0]["HostPort"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_address = f"127.0.0.1:{self.container.ports[f'{grpc_port}/tcp'][0]['HostPort']}"

    def logs(self) -> str:
        return self.container.logs().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.container.reload()
            if self.container.status == "exited":
                pytest.fail(f"the container exited:\n{self.logs()}")
            try:
                if http_json("GET", self.url + "/v2/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the server was not ready within {timeout}s:\n{self.logs()}")

    def remove(self) -> None:
        self.container.remove(force=True)


def ready_containers(engine: Any, tag: str) -> Iterator[Callable[..., Container]]:
    """
    For a fixture: yields ``start(env=None, **options)``, which runs a container of
    ``tag`` (options as for ``Container``) and waits until it is ready; every container
    started is removed afterwards.
    """
    made: List[Container] = []

    def start(env: Optional[Dict[str, str]] = None, **options: Any) -> Container:
        c = Container(engine, tag, env, **options)
        made.append(c)
        c.wait_ready()
        return c

    yield start
    for c in made:
        c.remove()
