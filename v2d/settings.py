"""
Server settings and model settings.

``Settings`` is the daemon's configuration: command line > ``V2D_<NAME>`` environment
variables > ``settings.json`` > defaults. ``ModelSettings`` is a model's
``model-settings.json``, with ``V2D_MODEL_<FIELD>`` variables overriding fields for a
single-model image.

Imported by worker children (Python 3.9 and up): standard library and v2d.types only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional

from v2d.types import DATATYPES, MetadataTensor, Parameters

__all__ = [
    "ModelParameters",
    "ModelSettings",
    "Settings",
    "SettingsError",
    "default_envs_dir",
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
    """A settings file or variable is invalid; the message names the field."""


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
        kind_name = {list: "a list", dict: "an object"}.get(kind, f"a {kind.__name__}")
        raise SettingsError(f"{where}: field '{name}' must be {kind_name}, got {value!r}") from None
    return value


#: The asyncio loops the server can run on: ``auto`` is uvloop where it is installed.
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


@dataclass
class Settings:
    """The server's settings; see API.md for each option."""

    models: str = "./models"
    rest: List[str] = field(default_factory=lambda: ["tcp:8080"])
    grpc: Optional[str] = "0.0.0.0:8081"
    workers: int = 0
    envs_dir: str = field(default_factory=default_envs_dir)
    max_body_size: int = 256 * MiB
    grpc_max_message_size: int = 512 * MiB
    grpc_tls_cert: Optional[str] = None
    grpc_tls_key: Optional[str] = None
    shutdown_timeout: float = 30.0
    server_name: str = "v2d"
    strict_readiness: bool = True
    access_log: bool = False
    debug: bool = False
    event_loop: str = "auto"
    retain_memory: int = 512 * MiB

    _KINDS = {
        "models": str,
        "rest": list,
        "grpc": str,
        "workers": int,
        "envs_dir": str,
        "max_body_size": int,
        "grpc_max_message_size": int,
        "grpc_tls_cert": str,
        "grpc_tls_key": str,
        "shutdown_timeout": float,
        "server_name": str,
        "strict_readiness": bool,
        "access_log": bool,
        "debug": bool,
        "event_loop": str,
        "retain_memory": int,
    }

    @classmethod
    def field_names(cls) -> List[str]:
        """Every setting's name, as in settings.json (``V2D_`` + upper case in the env)."""
        return [f.name for f in fields(cls)]

    @classmethod
    def load(
        cls,
        config_path: Optional[str] = None,
        environ: Optional[Mapping[str, str]] = None,
        overrides: Optional[Mapping[str, Any]] = None,
    ) -> "Settings":
        """
        Merge defaults, ``settings.json`` at ``config_path``, ``V2D_*`` variables from
        ``environ`` and ``overrides`` (the command line), later ones winning.
        """
        environ = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        if config_path is None:
            config_path = environ.get("V2D_CONFIG")
        if config_path:
            try:
                with open(config_path, "rb") as f:
                    from_file = json.load(f)
            except OSError as e:
                raise SettingsError(f"cannot read settings file {config_path}: {e.strerror}") from None
            except ValueError as e:
                raise SettingsError(f"{config_path}: invalid JSON: {e}") from None
            if not isinstance(from_file, dict):
                raise SettingsError(f"{config_path}: must hold a JSON object")
            for key, value in from_file.items():
                if key not in cls._KINDS:
                    raise SettingsError(f"{config_path}: unknown field '{key}'")
                values[key] = _coerce(config_path, key, cls._KINDS[key], value)
        for key, kind in cls._KINDS.items():
            var = "V2D_" + key.upper()
            if var in environ:
                raw = environ[var]
                value = raw if kind in (str, list) and not raw.startswith("[") else _parse_env_value(raw)
                values[key] = _coerce(var, key, kind, value)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = _coerce("command line", key, cls._KINDS[key], value)
        if isinstance(values.get("grpc"), str) and values["grpc"].lower() in ("none", ""):
            values["grpc"] = None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Range checks that span fields."""
        if self.workers < 0:
            raise SettingsError("field 'workers' must be 0 or more")
        if self.max_body_size <= 0:
            raise SettingsError("field 'max_body_size' must be positive")
        if self.grpc_max_message_size <= 0:
            raise SettingsError("field 'grpc_max_message_size' must be positive")
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise SettingsError("fields 'grpc_tls_cert' and 'grpc_tls_key' go together")
        if not self.rest:
            raise SettingsError("field 'rest' needs at least one endpoint")
        if self.retain_memory < 0:
            raise SettingsError("field 'retain_memory' must be 0 or more")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"field 'event_loop' must be one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}"
            )


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
        for key in ("name", "implementation", "platform", "max_batch_size", "max_batch_time",
                    "warm_workers", "cache_enabled"):
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
        try:
            with open(path, "rb") as f:
                values = json.load(f)
        except OSError as e:
            raise SettingsError(f"cannot read {path}: {e.strerror}") from None
        except ValueError as e:
            raise SettingsError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{path}: must hold a JSON object")
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
