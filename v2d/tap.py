"""
``twistd v2d`` options and service construction.

Options become a ``Settings`` (command line > ``V2D_*`` environment > settings.json >
defaults). Parsing also installs Twisted's asyncio reactor, which v2d needs so that
grpc.aio and asyncio runtimes share Twisted's loop.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Dict, List

from twisted.application.service import IService
from twisted.python import usage

from v2d.settings import Settings, SettingsError

__all__ = ["Options", "install_asyncio_reactor", "makeService"]


def install_asyncio_reactor() -> Any:
    """Install the asyncio reactor, or check that it is the one installed."""
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

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    from twisted.internet import reactor

    return reactor


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
            "rest": self["rest"] or None,
            "debug": True if self["debug"] else None,
            "access_log": True if self["access-log"] else None,
            "strict_readiness": False if self["no-strict-readiness"] else None,
        }
        try:
            self["settings"] = Settings.load(self["config"], os.environ, overrides)
        except SettingsError as e:
            raise usage.UsageError(str(e)) from None
        reactor = install_asyncio_reactor()
        parent = getattr(self, "parent", None)
        if parent is not None and "reactorName" in parent and "reactor" not in parent:
            parent["reactor"] = reactor


def makeService(options: Options) -> IService:
    """The v2d service for parsed options."""
    from twisted.internet import reactor

    from v2d.service import V2DService

    return V2DService(options["settings"], reactor)
