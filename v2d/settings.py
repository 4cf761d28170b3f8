"""
Server settings and model settings.

``Settings`` is the daemon's configuration: command line > ``V2D_<NAME>`` (and
MLServer's ``MLSERVER_<NAME>``) environment variables > ``settings.json`` > defaults.
``settings.json`` may use MLServer's field names next to v2d's; those v2d cannot honour
are named, each with what to do instead. ``ModelSettings`` is a model's
``model-settings.json``, with ``V2D_MODEL_<FIELD>`` variables overriding fields for a
single-model image.

Imported by worker children (Python 3.9 and up): standard library and v2d.types only.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from v2d.restricted import Restrictions
from v2d.types import DATATYPES, MetadataTensor, Parameters

__all__ = [
    "SETTINGS_FILENAME",
    "CORSSettings",
    "ModelParameters",
    "ModelSettings",
    "Settings",
    "SettingsError",
    "default_envs_dir",
    "grpc_address",
    "mlserver_start_folder",
    "read_env_file",
    "tcp_endpoint",
]

MiB = 1024 * 1024
#: The name of a model's settings file in its folder.
SETTINGS_FILE = "model-settings.json"


def _is_relative_local(uri: str) -> bool:
    """Whether ``uri`` is a relative path (no scheme such as s3:// or file:)."""
    if os.path.isabs(uri):
        return False
    scheme, sep, _ = uri.partition(":")
    return not (sep and scheme.isidentifier() and len(scheme) > 1)


class SettingsError(ValueError):
    """A settings file or variable is invalid; one line per problem, each naming its field."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def default_envs_dir() -> str:
    """Where unpacked environments are cached unless told otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "v2d", "envs")


def _parse_env_value(raw: str) -> Any:
    """An environment variable's value: JSON where it parses, else the plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _coerce(where: str, name: str, kind: Any, value: Any) -> Any:
    """Check and convert one field's value, with an error naming the field."""
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
                return False
            if isinstance(value, int):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if kind is list:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [str(v) for v in value]
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        kind_name = {
            list: "a list",
            dict: "an object",
            int: "an integer",
            float: "a number",
            bool: "true or false",
            str: "a string",
        }.get(kind, f"a {kind.__name__}")
        raise SettingsError(f"{where}: field '{name}' must be {kind_name}, got {value!r}") from None
    return value


#: The asyncio loops the server can run on: ``auto`` is uvloop where it is installed.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
GRPC_ENGINES = ("h2", "grpcio")

#: Where a value came from; the higher wins: command line > environment > settings.json > defaults.
_DEFAULT, _FILE, _ENV, _COMMAND_LINE = 0, 1, 2, 3

#: Settings that ``none`` (or an empty string, or ``null``) turns off.
_NULLABLE = ("grpc", "metrics", "metrics_path")


def _env_value(kind: Any, raw: str) -> Any:
    """A variable's value for a field of ``kind``: strings and lists as written, JSON otherwise."""
    if kind in (str, list) and not raw.startswith("["):
        return raw
    return _parse_env_value(raw)


def read_env_file(path: str) -> Dict[str, str]:
    """
    The ``NAME=value`` lines of a ``.env`` file (as MLServer reads from its working
    directory): ``#`` comments, an optional ``export``, optional quotes. Missing: empty.
    """
    values: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return values
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[name.strip()] = value
    return values


#: The settings file MLServer reads from the folder it serves.
SETTINGS_FILENAME = "settings.json"


def mlserver_start_folder(
    models: Optional[str], config: Optional[str], environ: Mapping[str, str]
) -> Optional[str]:
    """
    The folder to serve as ``mlserver start FOLDER`` would (its settings.json the
    config, itself the models root unless that file says otherwise), or None: when
    neither the models folder nor a config is given, the folder named by
    ``MLSERVER_MODELS_DIR`` (as MLServer's images start) or else the working directory,
    if it holds settings.json.
    """
    if models or config or environ.get("V2D_CONFIG") or environ.get("V2D_MODELS"):
        return None
    folder = environ.get("MLSERVER_MODELS_DIR") or "."
    return folder if os.path.isfile(os.path.join(folder, SETTINGS_FILENAME)) else None


def tcp_endpoint(host: str, port: int) -> str:
    """The strports description of TCP ``port`` on ``host`` (colons escaped, for IPv6)."""
    escaped = host.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
    return f"tcp:{port}:interface={escaped}"


def grpc_address(host: str, port: int) -> str:
    """gRPC's ``host:port`` (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class CORSSettings:
    """Cross-origin resource sharing on REST: MLServer's ``cors_settings``, same fields and defaults."""

    allow_origins: List[str] = field(default_factory=list)
    allow_origin_regex: Optional[str] = None
    allow_credentials: bool = False
    allow_methods: List[str] = field(default_factory=lambda: ["GET"])
    allow_headers: List[str] = field(default_factory=list)
    expose_headers: List[str] = field(default_factory=list)
    max_age: int = 600

    _KINDS = {
        "allow_origins": list,
        "allow_origin_regex": str,
        "allow_credentials": bool,
        "allow_methods": list,
        "allow_headers": list,
        "expose_headers": list,
        "max_age": int,
    }

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], where: str = "cors_settings", problems: Optional[List[str]] = None
    ) -> "CORSSettings":
        """Check and build; each bad field is a line in ``problems`` (raised at once without it)."""
        found: List[str] = []
        kwargs = cls.checked(values, where, found)
        cors = cls(**kwargs)
        if cors.allow_origin_regex is not None:
            try:
                re.compile(cors.allow_origin_regex)
            except re.error as e:
                found.append(
                    f"{where}: field 'cors_settings.allow_origin_regex' is not a regular expression: {e}"
                )
        if cors.max_age < 0:
            found.append(f"{where}: field 'cors_settings.max_age' must be 0 or more")
        if problems is None and found:
            raise SettingsError(*found)
        if problems is not None:
            problems.extend(found)
        return cors

    @classmethod
    def checked(cls, values: Mapping[str, Any], where: str, problems: List[str]) -> Dict[str, Any]:
        """The known fields of ``values``, converted (``null`` ones left out); bad ones become problems."""
        out: Dict[str, Any] = {}
        for key, value in values.items():
            name = f"cors_settings.{key}"
            if key not in cls._KINDS:
                problems.append(
                    f"{where}: unknown field '{name}'; remove it "
                    f"(the CORS fields are {', '.join(cls._KINDS)})"
                )
            elif value is not None:
                try:
                    out[key] = _coerce(where, name, cls._KINDS[key], value)
                except SettingsError as e:
                    problems.append(str(e))
        return out

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: MLServer's settings that v2d honours under its own names (see ``_mlserver_offers``):
#: MLServer's name -> kind. ``models_dir`` is ``MLSERVER_MODELS_DIR``, the folder MLServer's
#: images serve (``mlserver start $MLSERVER_MODELS_DIR``), an environment variable only.
_MLSERVER_FIELDS: Dict[str, Any] = {
    "host": str,
    "http_port": int,
    "grpc_port": int,
    "metrics_port": int,
    "model_repository_root": str,
    "parallel_workers": int,
    "environments_dir": str,
    "grpc_max_message_length": int,
    "metrics_endpoint": str,
}
_MLSERVER_ENV_ONLY: Dict[str, Any] = {"models_dir": str}

#: MLServer's name -> v2d's, for the fields that only differ by name. Later ones win
#: within a layer (``MLSERVER_MODELS_DIR`` over ``MLSERVER_MODEL_REPOSITORY_ROOT``).
_MLSERVER_RENAMED = {
    "model_repository_root": "models",
    "models_dir": "models",
    "parallel_workers": "workers",
    "environments_dir": "envs_dir",
    "grpc_max_message_length": "grpc_max_message_size",
    "metrics_endpoint": "metrics_path",
}

#: MLServer's settings v2d knows by the same name.
_MLSERVER_SHARED = (
    "debug",
    "server_name",
    "server_version",
    "extensions",
    "root_path",
    "cors_settings",
    "load_models_at_startup",
)

#: Accepted whatever their value.
_ANY = object()

#: MLServer's settings v2d cannot honour: name -> (kind, the value v2d accepts, what to do
#: instead). ``_ANY``: accepted and ignored, whatever the value (harmless).
_MLSERVER_UNSUPPORTED: Dict[str, Tuple[Any, Any, str]] = {
    "parallel_workers_timeout": (
        int,
        5,
        "v2d has no separate grace period for worker processes; set shutdown_timeout "
        "(--shutdown-timeout, seconds to drain requests before models and workers stop) instead",
    ),
    "model_repository_implementation": (
        str,
        None,
        "v2d finds models itself (every folder holding model-settings.json under models); "
        "put each model in such a folder and remove the field",
    ),
    "model_repository_implementation_args": (
        dict,
        {},
        "v2d finds models itself (every folder holding model-settings.json under models); "
        "put each model in such a folder and remove the field",
    ),
    "metrics_dir": (str, _ANY, ""),
    "metrics_rest_server_prefix": (
        str,
        "rest_server",
        "v2d does not export MLServer's per-request REST metrics (rest_server_*), so there is "
        "nothing to prefix; remove the field (v2d's own are model_infer_request_*)",
    ),
    "use_structured_logging": (
        bool,
        False,
        "v2d logs through twistd; for JSON lines give twistd --logger a factory of "
        "twisted.logger.jsonFileLogObserver, and remove the field",
    ),
    "logging_settings": (
        dict,
        None,
        "v2d logs through twistd; use twistd's --logfile, --syslog or --logger, and remove the field",
    ),
    "kafka_enabled": (
        bool,
        False,
        "v2d has no Kafka server; send requests over REST or gRPC (e.g. a consumer that posts "
        "to /v2/models/{name}/infer), and remove the field",
    ),
    "kafka_servers": (str, _ANY, ""),
    "kafka_topic_input": (str, _ANY, ""),
    "kafka_topic_output": (str, _ANY, ""),
    "tracing_server": (
        str,
        None,
        "v2d does not export OpenTelemetry traces; remove the field (request counts and "
        "latencies are on /metrics)",
    ),
    "cache_enabled": (
        bool,
        False,
        "v2d has no response cache; remove the field (or cache in front of the server)",
    ),
    "cache_size": (int, _ANY, ""),
    "gzip_enabled": (bool, _ANY, ""),
}


class _Offers:
    """Each field's values by where they came from; the highest rank wins, v2d's own name on a tie."""

    def __init__(self) -> None:
        self._offers: Dict[str, List[Tuple[int, int, int, Any]]] = {}
        self._count = 0

    def add(self, key: str, rank: int, own_name: bool, value: Any) -> None:
        self._count += 1
        self._offers.setdefault(key, []).append((rank, int(own_name), self._count, value))

    def keys(self) -> List[str]:
        return list(self._offers)

    def ordered(self, key: str) -> List[Any]:
        """The values offered for ``key``, the winner last."""
        return [offer[3] for offer in sorted(self._offers.get(key, []), key=lambda o: o[:3])]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))


@dataclass
class Settings:
    """The server's settings; docs/settings.md describes each."""

    models: str = "./models"
    rest: List[str] = field(default_factory=lambda: ["tcp:8080"])
    grpc: Optional[str] = "0.0.0.0:8081"
    metrics: Optional[str] = None
    metrics_path: Optional[str] = "/metrics"
    workers: int = 0
    load_models_at_startup: bool = True
    envs_dir: str = field(default_factory=default_envs_dir)
    max_body_size: int = 256 * MiB
    grpc_max_message_size: int = 512 * MiB
    grpc_tls_cert: Optional[str] = None
    grpc_tls_key: Optional[str] = None
    grpc_tls_client_ca: Optional[str] = None
    grpc_engine: str = "h2"
    http_restricted_api: List[str] = field(default_factory=list)
    grpc_restricted_protocol: List[str] = field(default_factory=list)
    shutdown_timeout: float = 30.0
    server_name: str = "v2d"
    server_version: Optional[str] = None
    extensions: Optional[List[str]] = None
    root_path: str = ""
    cors_settings: Optional[CORSSettings] = None
    strict_readiness: bool = True
    access_log: bool = False
    debug: bool = False
    event_loop: str = "auto"
    retain_memory: int = 512 * MiB
    blocked_loop_warning: float = 1.0
    max_bodies_in_flight: int = 1024 * MiB
    request_read_timeout: float = 60.0

    _KINDS = {
        "models": str,
        "rest": list,
        "grpc": str,
        "metrics": str,
        "metrics_path": str,
        "workers": int,
        "load_models_at_startup": bool,
        "envs_dir": str,
        "max_body_size": int,
        "grpc_max_message_size": int,
        "grpc_tls_cert": str,
        "grpc_tls_key": str,
        "grpc_tls_client_ca": str,
        "grpc_engine": str,
        "http_restricted_api": list,
        "grpc_restricted_protocol": list,
        "shutdown_timeout": float,
        "server_name": str,
        "server_version": str,
        "extensions": list,
        "root_path": str,
        "cors_settings": dict,
        "strict_readiness": bool,
        "access_log": bool,
        "debug": bool,
        "event_loop": str,
        "retain_memory": int,
        "blocked_loop_warning": float,
        "max_bodies_in_flight": int,
        "request_read_timeout": float,
    }

    @classmethod
    def field_names(cls) -> List[str]:
        """Every setting's name, as in settings.json (``V2D_`` + upper case in the env)."""
        return [f.name for f in fields(cls)]

    @classmethod
    def accepted_field_names(cls) -> List[str]:
        """Every name settings.json may hold: v2d's own and MLServer's."""
        names = cls.field_names()
        return names + [n for n in list(_MLSERVER_FIELDS) + list(_MLSERVER_UNSUPPORTED) if n not in names]

    @property
    def access_logged(self) -> bool:
        """Whether HTTP requests are logged: ``access_log``, or ``debug`` (as MLServer does)."""
        return self.access_log or self.debug

    @classmethod
    def load(
        cls,
        config_path: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None,
        overrides: Optional[Mapping[str, Any]] = None,
        defaults: Optional[Mapping[str, Any]] = None,
        file_values: Optional[Mapping[str, Any]] = None,
    ) -> "Settings":
        """
        Merge ``defaults``, ``settings.json`` at ``config_path``, ``V2D_*`` and
        ``MLSERVER_*`` variables from ``environ`` and ``overrides`` (the command line),
        later ones winning; within one of them v2d's own names win over MLServer's.
        Every problem found is named, one line each, in one ``SettingsError``.
        """
        environ = os.environ if environ is None else environ
        problems: List[str] = []
        offers = _Offers()
        mlserver: Dict[str, Tuple[int, Any]] = {}
        for key, value in (defaults or {}).items():
            offers.add(key, _DEFAULT, True, value)
        if config_path is None:
            config_path = environ.get("V2D_CONFIG")
        if config_path:
            for key, value in _read_json_object(config_path).items():
                cls._take(config_path, key, value, _FILE, offers, mlserver, problems)
        for key, value in (file_values or {}).items():  # a settings.json already read
            cls._take("settings.json", key, value, _FILE, offers, mlserver, problems)
        for key, kind in cls._KINDS.items():
            var = "V2D_" + key.upper()
            if var in environ:
                cls._take(var, key, _env_value(kind, environ[var]), _ENV, offers, mlserver, problems)
        mlserver_kinds = {key: cls._KINDS[key] for key in _MLSERVER_SHARED}
        mlserver_kinds.update(_MLSERVER_FIELDS)
        mlserver_kinds.update(_MLSERVER_ENV_ONLY)
        mlserver_kinds.update({key: kind for key, (kind, _, _) in _MLSERVER_UNSUPPORTED.items()})
        for key, kind in mlserver_kinds.items():
            var = "MLSERVER_" + key.upper()
            if var in environ:
                value = _env_value(kind, environ[var])
                cls._take(var, key, value, _ENV, offers, mlserver, problems, own_name=False, env_only=True)
        for key, value in (overrides or {}).items():
            if value is not None:
                cls._take("command line", key, value, _COMMAND_LINE, offers, mlserver, problems)
        _mlserver_offers(mlserver, offers)
        values: Dict[str, Any] = {}
        for key in offers.keys():
            ordered = offers.ordered(key)
            if key == "cors_settings":
                values[key] = _merged_cors(ordered)
            else:
                values[key] = ordered[-1]
        for key in _NULLABLE:
            if key in values and _is_null(values[key]):
                values[key] = None
        if isinstance(values.get("cors_settings"), dict):
            values["cors_settings"] = CORSSettings.from_dict(values["cors_settings"], "cors_settings", [])
        if not problems:
            settings = cls(**values)
            problems.extend(settings.problems())
        if problems:
            raise SettingsError(*problems)
        return settings

    @classmethod
    def _take(
        cls,
        where: str,
        key: str,
        value: Any,
        rank: int,
        offers: _Offers,
        mlserver: Dict[str, Tuple[int, Any]],
        problems: List[str],
        own_name: bool = True,
        env_only: bool = False,
    ) -> None:
        """Check one field from ``where`` and offer it (v2d's name) or keep it (MLServer's)."""
        try:
            if key in cls._KINDS:
                if value is None and key not in _NULLABLE and key not in ("server_version", "extensions"):
                    return
                if key == "cors_settings":
                    value = cls._cors(where, value, problems)
                else:
                    value = _coerce(where, key, cls._KINDS[key], value)
                offers.add(key, rank, own_name, value)
            elif key in _MLSERVER_FIELDS or (env_only and key in _MLSERVER_ENV_ONLY):
                kind = _MLSERVER_FIELDS.get(key) or _MLSERVER_ENV_ONLY[key]
                value = _coerce(where, key, kind, value)
                if key.endswith("_port") and value is not None and not 0 <= value <= 65535:
                    raise SettingsError(f"{where}: field '{key}' must be a port number (0 to 65535)")
                if value is not None or key == "metrics_endpoint":
                    mlserver[key] = (rank, value)
            elif key in _MLSERVER_UNSUPPORTED:
                kind, accepted, advice = _MLSERVER_UNSUPPORTED[key]
                if accepted is _ANY:
                    return
                converted = value if value is None or kind is dict else _coerce(where, key, kind, value)
                if converted != accepted and not (accepted == {} and converted is None):
                    problems.append(
                        f"{where}: field '{key}' = {json.dumps(value)} is not supported: {advice}"
                    )
            else:
                problems.append(_unknown(where, key, cls.accepted_field_names()))
        except SettingsError as e:
            problems.extend(e.lines)

    @staticmethod
    def _cors(where: str, value: Any, problems: List[str]) -> Optional[Dict[str, Any]]:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: field 'cors_settings' must be an object, got {value!r}")
        checked = CORSSettings.checked(value, where, problems)
        CORSSettings.from_dict(checked, where, problems)
        return checked

    def validate(self) -> None:
        """Raise a ``SettingsError`` naming every problem."""
        problems = self.problems()
        if problems:
            raise SettingsError(*problems)

    def problems(self) -> List[str]:
        """Range checks, and checks that span fields: one line per problem."""
        found = []
        if self.workers < 0:
            found.append("field 'workers' must be 0 or more")
        if self.max_body_size <= 0:
            found.append("field 'max_body_size' must be positive")
        if self.grpc_max_message_size <= 0:
            found.append("field 'grpc_max_message_size' must be positive")
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            found.append("fields 'grpc_tls_cert' and 'grpc_tls_key' go together")
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            found.append("field 'grpc_tls_client_ca' needs 'grpc_tls_cert' and 'grpc_tls_key' (TLS)")
        for name in ("http_restricted_api", "grpc_restricted_protocol"):
            try:
                Restrictions.parse(getattr(self, name), f"field '{name}'")
            except ValueError as e:
                found.append(str(e))
        if not self.rest:
            found.append("field 'rest' needs at least one endpoint")
        if self.retain_memory < 0:
            found.append("field 'retain_memory' must be 0 or more")
        if self.max_bodies_in_flight <= 0:
            found.append("field 'max_bodies_in_flight' must be positive")
        if self.request_read_timeout < 0:
            found.append("field 'request_read_timeout' must be 0 (no limit) or more")
        for name, choices in (("grpc_engine", GRPC_ENGINES), ("event_loop", EVENT_LOOPS)):
            value = getattr(self, name)
            if value not in choices:
                found.append(f"field '{name}' must be one of {', '.join(choices)}, got {value!r}")
        if self.metrics_path is not None and not self.metrics_path.startswith("/"):
            found.append(f"field 'metrics_path' must start with '/', got {self.metrics_path!r}")
        if self.root_path and not self.root_path.startswith("/"):
            found.append(f"field 'root_path' must be empty or start with '/', got {self.root_path!r}")
        elif self.root_path.rstrip("/") == "/v2" or self.root_path.startswith("/v2/"):
            found.append(f"field 'root_path' cannot be under /v2, got {self.root_path!r}")
        return found


def _read_json_object(path: str, what: str = "settings file ") -> Dict[str, Any]:
    """The JSON object in ``path``; a ``SettingsError`` naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except OSError as e:
        raise SettingsError(f"cannot read {what}{path}: {e.strerror}") from None
    except ValueError as e:
        raise SettingsError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: must hold a JSON object")
    return doc


def _unknown(where: str, key: str, known: List[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{where}: unknown field '{key}': neither a v2d nor an MLServer setting{hint}; remove it"


def _mlserver_offers(mlserver: Mapping[str, Tuple[int, Any]], offers: _Offers) -> None:
    """Offer v2d's fields for MLServer's: ``host`` and the ports become endpoints, others are renamed."""
    host_rank, host = mlserver.get("host", (_DEFAULT, "0.0.0.0"))
    for port_field, target, default_port in (("http_port", "rest", 8080), ("grpc_port", "grpc", 8081)):
        if port_field in mlserver or "host" in mlserver:
            rank, port = mlserver.get(port_field, (_DEFAULT, default_port))
            if target == "rest":
                offers.add(target, max(rank, host_rank), False, [tcp_endpoint(host, port)])
            else:
                offers.add(target, max(rank, host_rank), False, grpc_address(host, port))
    if "metrics_port" in mlserver:
        rank, port = mlserver["metrics_port"]
        offers.add("metrics", max(rank, host_rank), False, tcp_endpoint(host, port))
    for name, target in _MLSERVER_RENAMED.items():
        if name in mlserver:
            rank, value = mlserver[name]
            offers.add(target, rank, False, value)


def _merged_cors(ordered: List[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """``cors_settings`` from every layer, field by field (``null`` turns CORS off below it)."""
    merged: Optional[Dict[str, Any]] = None
    for value in ordered:
        if isinstance(value, CORSSettings):
            value = value.to_dict()
        merged = None if value is None else {**(merged or {}), **value}
    return merged


@dataclass
class ModelParameters:
    """
    The ``parameters`` object of model-settings.json.

    Keys it does not name are kept in ``extra`` and read as attributes too
    (``settings.parameters.threshold``), as MLServer's ``ModelParameters`` allows.
    """

    uri: Optional[str] = None
    version: Optional[str] = None
    environment_tarball: Optional[str] = None
    environment_path: Optional[str] = None
    content_type: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    #: MLServer's ``parameters.format`` (a hint some runtime packages read).
    format: Optional[str] = None

    _KINDS = {
        "uri": str,
        "version": str,
        "environment_tarball": str,
        "environment_path": str,
        "content_type": str,
        "extra": dict,
        "format": str,
    }
    #: MLServer's fields for its inference pools, accepted and without effect in v2d.
    _IGNORED = ("inference_pool_gid", "autogenerate_inference_pool_gid")

    def __post_init__(self) -> None:
        if self.extra is None:
            self.extra = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(f"model parameters have no '{name}'")

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]], where: str = "parameters") -> "ModelParameters":
        """Validate and build; unknown keys are kept in ``extra``."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise SettingsError(f"{where}: field 'parameters' must be an object")
        known: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in values.items():
            if key in cls._KINDS:
                known[key] = _coerce(where, f"parameters.{key}", cls._KINDS[key], value)
            elif key in cls._IGNORED:
                continue
            else:
                extra[key] = value
        params = cls(**known)
        if params.extra is None:
            params.extra = {}
        params.extra.update(extra)
        return params

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # pydantic's spellings, as MLServer's runtimes use them.

    @classmethod
    def model_validate(cls, obj: Any) -> "ModelParameters":
        """From a mapping (a ModelParameters is returned as it is)."""
        return obj if isinstance(obj, ModelParameters) else cls.from_dict(obj)

    parse_obj = model_validate

    def model_dump(self, **kwargs: Any) -> Dict[str, Any]:
        """The JSON form."""
        return self.to_dict()

    dict = model_dump


def _tensors(where: str, name: str, value: Any) -> List[MetadataTensor]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SettingsError(f"{where}: field '{name}' must be a list")
    out = []
    for i, item in enumerate(value):
        here = f"{name}[{i}]"
        if isinstance(item, MetadataTensor):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise SettingsError(f"{where}: field '{here}' must be an object")
        for key in ("name", "datatype", "shape"):
            if key not in item:
                raise SettingsError(f"{where}: field '{here}.{key}' is missing")
        if item["datatype"] not in DATATYPES:
            raise SettingsError(f"{where}: field '{here}.datatype': unknown datatype {item['datatype']!r}")
        shape = item["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise SettingsError(f"{where}: field '{here}.shape' must be a list of integers")
        params = item.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise SettingsError(f"{where}: field '{here}.parameters' must be an object")
        out.append(
            MetadataTensor(
                name=str(item["name"]),
                datatype=item["datatype"],
                shape=list(shape),
                parameters=Parameters.from_dict(dict(params) if params else None),
            )
        )
    return out


@dataclass
class ModelSettings:
    """
    A model's settings (model-settings.json); see docs/reference.md.

    Built from the file by the repository, or in code as MLServer's is:
    ``ModelSettings(name="m", implementation=MyRuntime, parameters={"uri": "./m.bin"})``
    (``parameters`` and ``inputs``/``outputs`` may be plain mappings; ``implementation``
    a class or a dotted path). A relative local ``parameters.uri`` read from a file is
    made absolute against the model's folder.
    """

    name: str = ""
    implementation: Any = ""
    versions: List[str] = field(default_factory=list)
    platform: str = ""
    inputs: List[MetadataTensor] = field(default_factory=list)
    outputs: List[MetadataTensor] = field(default_factory=list)
    max_batch_size: int = 0
    max_batch_time: float = 0.0
    parallel_workers: Optional[int] = None
    parameters: ModelParameters = field(default_factory=ModelParameters)
    #: The model's folder (where ``implementation`` and relative paths resolve).
    folder: Optional[str] = None
    #: Keys of model-settings.json this version of v2d does not know.
    unknown_fields: List[str] = field(default_factory=list)
    #: MLServer's per-model switches, accepted; v2d keeps no response cache and
    #: starts workers warm (see docs/mlserver.md).
    warm_workers: bool = False
    cache_enabled: bool = False
    #: v2d's own: run a synchronous load/predict/unload in the server's threads.
    run_in_thread: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.parameters, ModelParameters):
            self.parameters = ModelParameters.from_dict(self.parameters)
        if any(not isinstance(t, MetadataTensor) for t in self.inputs):
            self.inputs = _tensors("model settings", "inputs", self.inputs)
        if any(not isinstance(t, MetadataTensor) for t in self.outputs):
            self.outputs = _tensors("model settings", "outputs", self.outputs)

    @property
    def implementation_(self) -> str:
        """``implementation`` as a dotted path (MLServer's name), also when it is a class."""
        impl = self.implementation
        if isinstance(impl, str):
            return impl
        return f"{impl.__module__}.{impl.__qualname__}"

    @property
    def _source(self) -> Optional[str]:
        """The model-settings.json this came from (MLServer's name), from ``folder``."""
        return os.path.join(self.folder, SETTINGS_FILE) if self.folder else None

    @_source.setter
    def _source(self, path: Optional[str]) -> None:
        self.folder = os.path.dirname(path) if path else None

    _SCALARS = {
        "name": str,
        "platform": str,
        "max_batch_size": int,
        "max_batch_time": float,
        "parallel_workers": int,
        "warm_workers": bool,
        "cache_enabled": bool,
        "run_in_thread": bool,
    }

    @property
    def version(self) -> Optional[str]:
        """The model's version: ``parameters.version``, else the last of ``versions``."""
        if self.parameters.version:
            return self.parameters.version
        return self.versions[-1] if self.versions else None

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], folder: Optional[str] = None, where: str = "model-settings.json"
    ) -> "ModelSettings":
        """Validate and build; errors name the field."""
        if not isinstance(values, Mapping):
            raise SettingsError(f"{where}: must hold a JSON object")
        kwargs: Dict[str, Any] = {"folder": folder}
        unknown = []
        for key, value in values.items():
            if key in cls._SCALARS:
                kwargs[key] = _coerce(where, key, cls._SCALARS[key], value)
            elif key == "implementation":
                kwargs[key] = value if isinstance(value, type) else _coerce(where, key, str, value)
            elif key == "_source":
                if value:
                    kwargs["folder"] = os.path.dirname(os.path.abspath(str(value)))
            elif key == "model" and "name" not in values:
                kwargs["name"] = _coerce(where, key, str, value)  # the form MLServer's docs show
            elif key == "versions":
                if value is not None and not isinstance(value, list):
                    raise SettingsError(f"{where}: field 'versions' must be a list")
                kwargs["versions"] = [str(v) for v in value or []]
            elif key in ("inputs", "outputs"):
                kwargs[key] = _tensors(where, key, value)
            elif key == "parameters":
                kwargs["parameters"] = ModelParameters.from_dict(value, where)
            else:
                unknown.append(key)
        kwargs["unknown_fields"] = unknown
        for key in (
            "name",
            "implementation",
            "platform",
            "max_batch_size",
            "max_batch_time",
            "warm_workers",
            "cache_enabled",
            "run_in_thread",
        ):
            if kwargs.get(key) is None:
                kwargs.pop(key, None)
        settings = cls(**kwargs)
        folder = settings.folder
        if not settings.name and folder:
            settings.name = os.path.basename(os.path.normpath(folder))
        uri = settings.parameters.uri
        if folder and uri and _is_relative_local(uri):
            settings.parameters.uri = settings.resolve_path(uri)
        settings.validate(where)
        return settings

    # pydantic's spellings, as MLServer's code uses them.

    @classmethod
    def model_validate(cls, obj: Any) -> "ModelSettings":
        """From a mapping as in model-settings.json (a ModelSettings is returned as it is)."""
        if isinstance(obj, ModelSettings):
            return obj
        return cls.from_dict(obj, where="model settings")

    parse_obj = model_validate

    @classmethod
    def parse_file(cls, path: str) -> "ModelSettings":
        """From a model-settings.json file (no environment overrides)."""
        return cls.from_file(path)

    def model_dump(self, **kwargs: Any) -> Dict[str, Any]:
        """The JSON form (``implementation`` as a dotted path)."""
        return self.to_dict()

    dict = model_dump

    def model_dump_json(self, **kwargs: Any) -> str:
        """The JSON form as text."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_file(cls, path: str, environ: Optional[Mapping[str, str]] = None) -> "ModelSettings":
        """Read a model-settings.json; ``environ`` (if given) overrides fields."""
        values = _read_json_object(path, what="")
        if environ:
            values = cls.apply_environ(values, environ)
        return cls.from_dict(values, folder=os.path.dirname(os.path.abspath(path)), where=path)

    @staticmethod
    def environ_overrides(environ: Mapping[str, str]) -> Dict[str, Any]:
        """
        The ``V2D_MODEL_<FIELD>`` (and MLServer's ``MLSERVER_MODEL_<FIELD>``) variables as
        model-settings.json fields; ``V2D_`` wins when both name a field. As in MLServer,
        a field of ``parameters`` may be named directly (``MLSERVER_MODEL_URI``).
        """
        out: Dict[str, Any] = {}
        for prefix in ("MLSERVER_MODEL_", "V2D_MODEL_"):  # later wins
            for var, raw in environ.items():
                if var.upper().startswith(prefix) and len(var) > len(prefix):
                    key = var[len(prefix) :].lower()
                    if key in ModelParameters._KINDS and key != "extra":
                        out.setdefault("parameters", {})[key] = raw
                        continue
                    value = raw if key in ("name", "implementation", "platform") else _parse_env_value(raw)
                    if key == "parameters" and isinstance(value, dict) and isinstance(out.get(key), dict):
                        value = {**out[key], **value}
                    out[key] = value
        return out

    @classmethod
    def apply_environ(cls, values: Mapping[str, Any], environ: Mapping[str, str]) -> Dict[str, Any]:
        """``values`` with ``V2D_MODEL_*`` overrides applied (``parameters`` merged)."""
        merged = dict(values)
        for key, value in cls.environ_overrides(environ).items():
            if key == "parameters" and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged

    def validate(self, where: str = "model-settings.json") -> None:
        """Range checks."""
        if not self.name:
            raise SettingsError(f"{where}: field 'name' is missing")
        if self.max_batch_size < 0:
            raise SettingsError(f"{where}: field 'max_batch_size' must be 0 or more")
        if self.max_batch_time < 0:
            raise SettingsError(f"{where}: field 'max_batch_time' must be 0 or more")
        if self.parallel_workers is not None and self.parallel_workers < 0:
            raise SettingsError(f"{where}: field 'parallel_workers' must be 0 or more")

    def resolve_path(self, path: str) -> str:
        """A path from the settings, relative to the model's folder."""
        if os.path.isabs(path) or not self.folder:
            return path
        return os.path.normpath(os.path.join(self.folder, path))

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (as in model-settings.json)."""
        return {
            "name": self.name,
            "implementation": self.implementation_,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "max_batch_size": self.max_batch_size,
            "max_batch_time": self.max_batch_time,
            "parallel_workers": self.parallel_workers,
            "parameters": self.parameters.to_dict(),
        }
