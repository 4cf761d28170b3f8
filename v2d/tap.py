"""
``twistd v2d`` options and service construction.

Options become a ``Settings`` (command line > ``V2D_*`` environment > settings.json >
defaults). Parsing also installs Twisted's asyncio reactor, which v2d needs so that
grpc.aio and asyncio runtimes share Twisted's loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any, Dict, List

from twisted.application.service import IService
from twisted.python import usage

from v2d.settings import Settings, SettingsError

__all__ = ["Options", "install_asyncio_reactor", "makeService", "new_event_loop"]


def install_asyncio_reactor(event_loop: str = "auto") -> Any:
    """
    Install the asyncio reactor on a new loop of kind ``event_loop`` (``uvloop``,
    ``asyncio``, or ``auto``: uvloop when it is installed), or check that an asyncio
    reactor is the one installed.
    """
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        if not isinstance(reactor, AsyncioSelectorReactor):
            raise usage.UsageError(
                f"v2d runs on Twisted's asyncio reactor, but {type(reactor).__name__} is already "
                "installed: run it without --reactor, or with --reactor=asyncio"
            )
        return reactor
    from twisted.internet import asyncioreactor

    loop = new_event_loop(event_loop)
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    if not isinstance(loop, asyncio.SelectorEventLoop):
        reactor.callWhenRunning(_keep_twisted_signal_wakeup, loop)
    return reactor


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new asyncio loop: uvloop's (``uvloop``, or ``auto`` where installed) or the standard one."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise usage.UsageError("--event-loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _keep_twisted_signal_wakeup(loop: asyncio.AbstractEventLoop) -> None:
    """
    Twisted learns that a child process exited through the signal wakeup fd it set at
    start-up (``signal.set_wakeup_fd``); uvloop sets its own once it runs, for signal
    handlers added with ``loop.add_signal_handler`` (v2d adds none). Without Twisted's,
    exits of worker processes would go unnoticed, so it is put back as soon as the
    loop runs. Signals still wake the loop (Twisted's fd is one of its readers) and
    Python's handlers (Twisted's SIGTERM/SIGINT) still run.
    """
    twisted_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(twisted_fd)
    if twisted_fd != -1:
        loop.call_soon(_set_wakeup_fd, twisted_fd)


def _set_wakeup_fd(fd: int) -> None:
    from twisted.internet import process

    signal.set_wakeup_fd(fd)
    process.reapAllProcesses()  # children that exited while uvloop held the wakeup fd


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


_positive_int.coerceDoc = "Must be 0 or more."  # type: ignore[attr-defined]


class Options(usage.Options):
    """Command-line options of ``twistd v2d``; see API.md."""

    synopsis = "[options]"
    longdesc = (
        "Serve every model folder (a folder with model-settings.json) under --models over the "
        "Open Inference Protocol. Each option can also be set in settings.json (--config) and as "
        "an environment variable V2D_<NAME> (e.g. V2D_MODELS, V2D_REST, V2D_WORKERS); the command "
        "line wins over the environment, which wins over settings.json."
    )

    optParameters: List[List[Any]] = [
        ["models", "m", None, "Folder holding the model folders [default: ./models]."],
        ["grpc", None, None, "gRPC listen address host:port, or 'none' [default: 0.0.0.0:8081]."],
        ["config", "c", None, "A settings.json file."],
        [
            "workers",
            "w",
            None,
            "Worker processes per model; 0 runs models in-process [default: 0].",
            _positive_int,
        ],
        ["envs-dir", None, None, "Where model environments are unpacked [default: ~/.cache/v2d/envs]."],
        [
            "max-body-size",
            None,
            None,
            "Largest REST request body in bytes [default: 256 MiB].",
            _positive_int,
        ],
        [
            "grpc-max-message-size",
            None,
            None,
            "Largest gRPC message in bytes [default: 512 MiB].",
            _positive_int,
        ],
        ["shutdown-timeout", None, None, "Seconds to drain requests on shutdown [default: 30].", float],
        [
            "retain-memory",
            None,
            None,
            "Bytes of freed memory kept for reuse, so big tensors do not pay page faults on "
            "every request; 0 returns it to the system at once [default: 512 MiB].",
            _positive_int,
        ],
        [
            "event-loop",
            None,
            None,
            "The asyncio loop under Twisted: uvloop, asyncio, or auto (uvloop where installed) "
            "[default: auto].",
        ],
    ]
    optFlags = [
        ["debug", None, "Log more."],
        ["access-log", None, "Log every HTTP request."],
        ["no-strict-readiness", None, "Report the server ready even when some model failed to load."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["rest"] = []

    def opt_rest(self, endpoint: str) -> None:
        """REST listen endpoint, a strports string; repeatable [default: tcp:8080]."""
        self["rest"].append(endpoint)

    def postOptions(self) -> None:
        overrides: Dict[str, Any] = {
            "models": self["models"],
            "grpc": self["grpc"],
            "workers": self["workers"],
            "envs_dir": self["envs-dir"],
            "max_body_size": self["max-body-size"],
            "grpc_max_message_size": self["grpc-max-message-size"],
            "shutdown_timeout": self["shutdown-timeout"],
            "event_loop": self["event-loop"],
            "retain_memory": self["retain-memory"],
            "rest": self["rest"] or None,
            "debug": True if self["debug"] else None,
            "access_log": True if self["access-log"] else None,
            "strict_readiness": False if self["no-strict-readiness"] else None,
        }
        try:
            self["settings"] = Settings.load(self["config"], os.environ, overrides)
        except SettingsError as e:
            raise usage.UsageError(str(e)) from None
        reactor = install_asyncio_reactor(self["settings"].event_loop)
        parent = getattr(self, "parent", None)
        if parent is not None and "reactorName" in parent and "reactor" not in parent:
            parent["reactor"] = reactor


def makeService(options: Options) -> IService:
    """The v2d service for parsed options (in the daemon's own process)."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from v2d.memory import retain_freed_memory
    from v2d.service import V2DService

    settings = options["settings"]
    if retain_freed_memory(settings.retain_memory):
        Logger().info(
            "freed memory up to {mib} MiB is kept for reuse (--retain-memory)",
            mib=settings.retain_memory >> 20,
        )
    return V2DService(settings, reactor)
