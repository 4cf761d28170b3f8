"""
The image's HEALTHCHECK: ``python -m v2d.build.healthcheck``.

Slim images carry no curl, so the check is Python. It reads the server's settings
the way the server does (``V2D_*`` variables over ``settings.json`` named by
``V2D_CONFIG``), so a REST endpoint moved at ``docker run`` is still the one checked,
and asks the first REST endpoint it can reach for ``GET /v2/health/ready``.
Exit status 0 when it answers 200, 1 otherwise (Docker's convention).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import sys
from typing import Optional, Sequence

from v2d.build._runtime import split_strports
from v2d.settings import Settings, SettingsError

__all__ = ["check", "main"]

READY_PATH = "/v2/health/ready"


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def _parse(description: str) -> "tuple[str, list[str], dict[str, str]]":
    parts = split_strports(description.strip())
    if len(parts) == 1 and parts[0].isdigit():
        return "tcp", [parts[0]], {}
    args = [p for p in parts[1:] if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0].lower(), args, kwargs


def _connection(description: str, timeout: float) -> Optional[http.client.HTTPConnection]:
    """A connection to a strports endpoint, or None if it is not one we can reach."""
    kind, args, kwargs = _parse(description)
    if kind in ("tcp", "tcp6", "ssl"):
        port = kwargs.get("port") or (args[0] if args else "")
        if not port.isdigit():
            return None
        host = kwargs.get("interface", "")
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if kind == "ssl":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
        return http.client.HTTPConnection(host, int(port), timeout=timeout)
    if kind == "unix":
        path = kwargs.get("address") or (args[0] if args else "")
        return _UnixHTTPConnection(path, timeout) if path else None
    return None


def check(endpoints: Sequence[str], timeout: float = 4.0) -> "tuple[bool, str]":
    """(ready, what happened) for the first endpoint that can be checked."""
    for description in endpoints:
        connection = _connection(description, timeout)
        if connection is None:
            continue
        try:
            connection.request("GET", READY_PATH)
            status = connection.getresponse().status
        except OSError as e:
            return False, f"{description}: {e}"
        finally:
            connection.close()
        return status == 200, f"{description}: {READY_PATH} answered {status}"
    return True, "no REST endpoint that can be checked from inside the container; assuming healthy"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Check the running server; return the exit status."""
    try:
        settings = Settings.load()
    except SettingsError as e:
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    ready, message = check(settings.rest)
    print(("healthy: " if ready else "unhealthy: ") + message, file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
