"""
``twistd v2d`` options and service construction.

Options become a ``Settings`` (command line > ``V2D_*`` and ``MLSERVER_*`` environment
> settings.json > defaults). Started without ``--models`` and ``--config`` in a folder
holding ``settings.json`` (or with ``MLSERVER_MODELS_DIR`` naming one), v2d serves it as
``mlserver start`` would. Parsing also installs Twisted's asyncio reactor, which v2d
needs so that grpc.aio and asyncio runtimes share Twisted's loop.

A bad option or setting ends the command with v2d's own lines only (one per problem)
and exit status 1, not twistd's usage text.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any, Dict, List

from twisted.application.service import IService
from twisted.python import usage

from v2d._twisted import reap_processes
from v2d.settings import SETTINGS_FILENAME, Settings, SettingsError, mlserver_start_folder, read_env_file

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
    signal.set_wakeup_fd(fd)
    reap_processes()  # children that exited while uvloop held the wakeup fd


def _non_negative(option: str, kind: Any = int, what: str = "a whole number") -> Any:
    """A coercer for ``--option``: ``kind`` (int or float), 0 or more; the error names the option."""

    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = -1
        if not number >= 0:
            raise ValueError(f"--{option} must be {what}, 0 or more, got {value!r}")
        return number

    coerce.coerceDoc = "Must be 0 or more."  # type: ignore[attr-defined]
    return coerce


#: The repeatable restricted-API options (settings of the same names).
_RESTRICTED = ("http_restricted_api", "grpc_restricted_protocol")

#: The keys of the repeatable CORS options (``cors_settings`` fields).
_CORS_LISTS = ("allow_origins", "allow_methods", "allow_headers", "expose_headers")


class Options(usage.Options):
    """Command-line options of ``twistd v2d``; docs/settings.md describes each."""

    synopsis = "[options]"
    longdesc = (
        "Serve every model folder (a folder with model-settings.json) under --models over the "
        "Open Inference Protocol. Each option can also be set in settings.json (--config) and as "
        "an environment variable V2D_<NAME> (e.g. V2D_MODELS, V2D_REST, V2D_WORKERS); the command "
        "line wins over the environment, which wins over settings.json. MLServer's settings.json "
        "fields and MLSERVER_<NAME> variables are taken too (v2d's names win over MLServer's), and "
        "without --models in a folder holding settings.json, v2d serves it as 'mlserver start .'."
    )

    optParameters: List[List[Any]] = [
        [
            "models",
            "m",
            None,
            "Folder holding the model folders [default: ./models; '.' when the working "
            "directory holds settings.json].",
        ],
        ["grpc", None, None, "gRPC listen address host:port, or 'none' [default: 0.0.0.0:8081]."],
        [
            "config",
            "c",
            None,
            "A settings.json file (v2d's or MLServer's fields) [default: ./settings.json when "
            "--models is not given].",
        ],
        [
            "metrics",
            None,
            None,
            "A separate listen endpoint (strports) for Prometheus metrics, as MLServer's "
            "metrics_port; without it they are served on the REST endpoints [default: none].",
        ],
        [
            "metrics-path",
            None,
            None,
            "Path of the metrics, or 'none' to turn metrics off [default: /metrics].",
        ],
        [
            "root-path",
            None,
            None,
            "The path prefix a proxy in front serves v2d under (MLServer's root_path) [default: none].",
        ],
        [
            "cors-allow-origin-regex",
            None,
            None,
            "CORS: a regular expression matching the whole of each allowed origin.",
        ],
        [
            "cors-max-age",
            None,
            None,
            "CORS: seconds browsers may cache a preflight answer [default: 600].",
            _non_negative("cors-max-age"),
        ],
        [
            "workers",
            "w",
            None,
            "Worker processes per model; 0 runs models in-process [default: 0].",
            _non_negative("workers"),
        ],
        ["envs-dir", None, None, "Where model environments are unpacked [default: ~/.cache/v2d/envs]."],
        [
            "max-body-size",
            None,
            None,
            "Largest REST request body in bytes [default: 256 MiB].",
            _non_negative("max-body-size"),
        ],
        [
            "grpc-max-message-size",
            None,
            None,
            "Largest gRPC message in bytes [default: 512 MiB].",
            _non_negative("grpc-max-message-size"),
        ],
        ["grpc-tls-cert", None, None, "gRPC TLS: the server's certificate chain (PEM file) [default: none]."],
        ["grpc-tls-key", None, None, "gRPC TLS: the server's private key (PEM file)."],
        [
            "grpc-tls-client-ca",
            None,
            None,
            "gRPC mutual TLS: CA certificates (PEM file); clients must present a certificate "
            "signed by one of them [default: no client certificates asked for].",
        ],
        [
            "grpc-engine",
            None,
            None,
            "What serves gRPC: h2 (HTTP/2 in Twisted, the least CPU and latency per call) or "
            "grpcio (grpc.aio on the event loop) [default: h2].",
        ],
        [
            "shutdown-timeout",
            None,
            None,
            "Seconds to drain requests on shutdown [default: 30].",
            _non_negative("shutdown-timeout", float, "a number of seconds"),
        ],
        [
            "retain-memory",
            None,
            None,
            "Bytes of freed memory kept for reuse, so big tensors do not pay page faults on "
            "every request; 0 returns it to the system at once [default: 512 MiB].",
            _non_negative("retain-memory"),
        ],
        [
            "blocked-loop-warning",
            None,
            None,
            "Log a warning naming the model when one of its calls holds the event loop longer "
            "than this many seconds; 0 never [default: 1].",
            _non_negative("blocked-loop-warning", float, "a number of seconds"),
        ],
        [
            "max-bodies-in-flight",
            None,
            None,
            "Bytes the REST request bodies in flight may hold between them; beyond, 503 with "
            "Retry-After [default: 1 GiB].",
            _non_negative("max-bodies-in-flight"),
        ],
        [
            "request-read-timeout",
            None,
            None,
            "Seconds a REST request (headers and body) has to arrive from its first byte, else "
            "408; 0 for no limit [default: 60].",
            _non_negative("request-read-timeout", float, "a number of seconds"),
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
        ["debug", None, "Log every HTTP request, as MLServer's debug does."],
        ["access-log", None, "Log every HTTP request."],
        ["no-strict-readiness", None, "Report the server ready even when some model failed to load."],
        [
            "no-load-at-startup",
            None,
            "Start with no model loaded; load them through the repository API "
            "(MLServer's load_models_at_startup: false).",
        ],
        ["cors-allow-credentials", None, "CORS: allow cookies and credentials in cross-origin requests."],
    ]

    def __init__(self) -> None:
        super().__init__()
        for key in ("rest",) + _CORS_LISTS + _RESTRICTED:
            self[key] = []

    def opt_rest(self, endpoint: str) -> None:
        """REST listen endpoint, a strports string; repeatable [default: tcp:8080]."""
        self["rest"].append(endpoint)

    def opt_http_restricted_api(self, restriction: str) -> None:
        """REST: serve the named API groups only to requests carrying a header,
        GROUP[,GROUP...]:KEY=VALUE (e.g. model-repository:admin-key=SECRET); repeatable."""
        self["http_restricted_api"].append(restriction)

    def opt_grpc_restricted_protocol(self, restriction: str) -> None:
        """gRPC: serve the named API groups only to calls carrying metadata,
        GROUP[,GROUP...]:KEY=VALUE (e.g. model-repository:admin-key=SECRET); repeatable."""
        self["grpc_restricted_protocol"].append(restriction)

    def opt_cors_allow_origin(self, origin: str) -> None:
        """CORS: an origin allowed to make cross-origin requests, or '*'; repeatable."""
        self["allow_origins"].append(origin)

    def opt_cors_allow_method(self, method: str) -> None:
        """CORS: a method allowed in cross-origin requests, or '*'; repeatable [default: GET]."""
        self["allow_methods"].append(method)

    def opt_cors_allow_header(self, header: str) -> None:
        """CORS: a request header allowed in cross-origin requests, or '*'; repeatable."""
        self["allow_headers"].append(header)

    def opt_cors_expose_header(self, header: str) -> None:
        """CORS: a response header browsers may read; repeatable."""
        self["expose_headers"].append(header)

    def opt_version(self) -> None:
        """Print v2d's version and its key dependencies', then exit."""
        print(version_text())
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        """Parse; a bad option or setting exits with v2d's lines only (twistd would add its usage text)."""
        try:
            super().parseOptions(options)
        except SettingsError as e:
            raise SystemExit("\n".join(f"v2d: {line}" for line in e.lines)) from None
        except usage.UsageError as e:
            message = str(e).replace("Parameter type enforcement failed: ", "")
            raise SystemExit(f"v2d: {message} (twistd v2d --help lists the options)") from None

    def postOptions(self) -> None:
        environ = {k: v for k, v in read_env_file(".env").items() if k.startswith("MLSERVER_")}
        environ.update(os.environ)
        config = self["config"]
        defaults: Dict[str, Any] = {}
        folder = mlserver_start_folder(self["models"], config, environ)
        if folder is not None:
            config = os.path.join(folder, SETTINGS_FILENAME)
            defaults["models"] = folder
        self["found_config"] = config if folder is not None else None
        cors: Dict[str, Any] = {key: self[key] for key in _CORS_LISTS if self[key]}
        if self["cors-allow-origin-regex"] is not None:
            cors["allow_origin_regex"] = self["cors-allow-origin-regex"]
        if self["cors-max-age"] is not None:
            cors["max_age"] = self["cors-max-age"]
        if self["cors-allow-credentials"]:
            cors["allow_credentials"] = True
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
            "blocked_loop_warning": self["blocked-loop-warning"],
            "max_bodies_in_flight": self["max-bodies-in-flight"],
            "request_read_timeout": self["request-read-timeout"],
            "rest": self["rest"] or None,
            "debug": True if self["debug"] else None,
            "access_log": True if self["access-log"] else None,
            "strict_readiness": False if self["no-strict-readiness"] else None,
            "load_models_at_startup": False if self["no-load-at-startup"] else None,
            "metrics": self["metrics"],
            "metrics_path": self["metrics-path"],
            "root_path": self["root-path"],
            "cors_settings": cors or None,
            "grpc_tls_cert": self["grpc-tls-cert"],
            "grpc_tls_key": self["grpc-tls-key"],
            "grpc_tls_client_ca": self["grpc-tls-client-ca"],
            "grpc_engine": self["grpc-engine"],
        }
        overrides.update({key: self[key] or None for key in _RESTRICTED})
        settings = self["settings"] = Settings.load(config, environ, overrides, defaults)
        # A bare port is a TCP port, as for ``twistd web --listen``.
        settings.rest = [f"tcp:{d}" if d.strip().isdigit() else d for d in settings.rest]
        if settings.metrics and settings.metrics.strip().isdigit():
            settings.metrics = f"tcp:{settings.metrics.strip()}"
        reactor = install_asyncio_reactor(self["settings"].event_loop)
        parent = getattr(self, "parent", None)
        if parent is not None and "reactorName" in parent and "reactor" not in parent:
            parent["reactor"] = reactor
        check_endpoints(reactor, self["settings"])


def _tidy_help(options: List[List[Any]]) -> None:
    """Drop the final period of a help text twistd follows with ". <coercer's rule>"."""
    for option in options:
        if len(option) > 4 and getattr(option[4], "coerceDoc", None) and str(option[3]).endswith("."):
            option[3] = option[3][:-1]


_tidy_help(Options.optParameters)


def missing_models_folder(settings: Settings) -> str:
    """Why the server must not start for want of its models folder, or ''."""
    if settings.load_models_at_startup and not os.path.isdir(settings.models):
        return (
            f"field 'models': no folder {settings.models!r} (create it, or name the folder holding "
            "your model folders with --models)"
        )
    return ""


def version_text() -> str:
    """``v2d X`` and the versions of what it runs on, one line."""
    import platform
    from importlib import metadata

    from v2d import __version__

    parts = []
    for name in ("twisted", "klein", "grpcio", "hpack", "protobuf", "numpy"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    parts.append(f"Python {platform.python_version()}")
    return f"v2d {__version__} ({', '.join(parts)})"


def check_endpoints(reactor: Any, settings: Settings) -> None:
    """Raise a ``SettingsError`` naming every listen endpoint that is not a strports description."""
    from twisted.internet import endpoints

    problems = []
    named = [("rest", d) for d in settings.rest] + (
        [("metrics", settings.metrics)] if settings.metrics else []
    )
    for name, description in named:
        try:
            endpoints.serverFromString(reactor, description)
        except (ValueError, TypeError) as e:
            problems.append(f"field '{name}': {description!r} is not a listen endpoint (strports): {e}")
        except Exception:
            pass  # e.g. systemd: with no inherited socket yet; listening says what is wrong
    if problems:
        raise SettingsError(*problems)


def makeService(options: Options) -> IService:
    """The v2d service for parsed options (in the daemon's own process)."""
    from twisted.internet import reactor
    from twisted.logger import Logger

    from v2d.memory import retain_freed_memory
    from v2d.service import V2DService

    settings = options["settings"]
    missing = missing_models_folder(settings)
    if missing:
        raise SystemExit(f"v2d: {missing}")
    if options.get("found_config"):
        Logger().info(
            "serving {folder} with its {config}, as mlserver start would",
            folder=os.path.dirname(options["found_config"]),
            config=options["found_config"],
        )
    if retain_freed_memory(settings.retain_memory):
        Logger().info(
            "freed memory up to {mib} MiB is kept for reuse (--retain-memory)",
            mib=settings.retain_memory >> 20,
        )
    return V2DService(settings, reactor)
