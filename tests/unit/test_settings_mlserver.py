"""
MLServer's settings.json fields and MLSERVER_* variables: what each becomes, which name
and layer wins, the lines naming what v2d cannot honour, and ``twistd v2d`` started in
a folder that holds settings.json. No reactor is installed.
"""

from __future__ import annotations

import json
import os

import pytest

import v2d.tap
from v2d.settings import CORSSettings, Settings, SettingsError, read_env_file, tcp_endpoint
from v2d.tap import Options


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    monkeypatch.setattr(v2d.tap, "install_asyncio_reactor", lambda event_loop="auto": object())
    for var in list(os.environ):
        if var.startswith(("V2D_", "MLSERVER_")):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def write(path, doc):
    path.write_text(json.dumps(doc))
    return str(path)


def load(tmp_path, doc, environ=None, overrides=None):
    return Settings.load(write(tmp_path / "settings.json", doc), environ or {}, overrides)


def problems(tmp_path, doc, environ=None):
    with pytest.raises(SettingsError) as error:
        load(tmp_path, doc, environ)
    return error.value.lines


# -- what each field becomes ---------------------------------------------------------


def test_mlserver_test_settings(tmp_path):
    # as in MLServer's own tests (tests/testdata/settings.json)
    s = load(
        tmp_path,
        {
            "debug": True,
            "host": "127.0.0.1",
            "parallel_workers": 2,
            "cors_settings": {"allow_origins": ["*"]},
        },
    )
    assert s.rest == ["tcp:8080:interface=127.0.0.1"]
    assert s.grpc == "127.0.0.1:8081"
    assert s.metrics is None
    assert (s.workers, s.debug, s.access_logged) == (2, True, True)
    assert s.cors_settings == CORSSettings(allow_origins=["*"])


def test_ports_and_host(tmp_path):
    s = load(tmp_path, {"http_port": 8087, "grpc_port": 8088, "metrics_port": 8089})
    assert (s.rest, s.grpc, s.metrics) == (
        ["tcp:8087:interface=0.0.0.0"],
        "0.0.0.0:8088",
        "tcp:8089:interface=0.0.0.0",
    )
    s = load(tmp_path, {"host": "::1", "http_port": 1, "grpc_port": 2, "metrics_port": 3})
    assert (s.rest, s.grpc, s.metrics) == (["tcp:1:interface=\\:\\:1"], "[::1]:2", "tcp:3:interface=\\:\\:1")
    assert tcp_endpoint("127.0.0.1", 80) == "tcp:80:interface=127.0.0.1"


def test_renamed_fields(tmp_path):
    s = load(
        tmp_path,
        {
            "model_repository_root": "repo",
            "environments_dir": "envs",
            "grpc_max_message_length": 1024,
            "metrics_endpoint": "/prom",
            "server_name": "mine",
            "server_version": "7",
            "extensions": ["x"],
            "root_path": "/ml",
            "load_models_at_startup": False,
        },
    )
    assert (s.models, s.envs_dir, s.grpc_max_message_size, s.metrics_path) == ("repo", "envs", 1024, "/prom")
    assert (s.server_name, s.server_version, s.extensions, s.root_path) == ("mine", "7", ["x"], "/ml")
    assert s.load_models_at_startup is False


def test_nulls_mean_mlserver_defaults_or_off(tmp_path):
    s = load(tmp_path, {"grpc_max_message_length": None, "metrics_endpoint": None, "cors_settings": None})
    assert s.grpc_max_message_size == Settings().grpc_max_message_size
    assert s.metrics_path is None and s.cors_settings is None


def test_parallel_workers_only_when_written(tmp_path):
    # MLServer's default is 1 but only a value written in the file counts
    assert load(tmp_path, {"host": "127.0.0.1"}).workers == 0
    assert load(tmp_path, {"parallel_workers": 0}).workers == 0


def test_cors_settings_defaults_as_mlserver(tmp_path):
    cors = load(tmp_path, {"cors_settings": {}}).cors_settings
    assert cors == CORSSettings()
    assert (cors.allow_methods, cors.max_age, cors.allow_credentials) == (["GET"], 600, False)


# -- precedence ------------------------------------------------------------------------


def test_v2d_name_wins_within_a_layer(tmp_path):
    s = load(
        tmp_path,
        {
            "rest": ["tcp:1"],
            "http_port": 2,
            "grpc": "none",
            "grpc_port": 3,
            "workers": 4,
            "parallel_workers": 5,
            "models": "m",
            "model_repository_root": "r",
        },
    )
    assert (s.rest, s.grpc, s.workers, s.models) == (["tcp:1"], None, 4, "m")


def test_higher_layer_wins_whatever_the_name(tmp_path):
    env = {"MLSERVER_HTTP_PORT": "9000", "MLSERVER_PARALLEL_WORKERS": "3"}
    s = load(tmp_path, {"rest": ["tcp:1"], "host": "127.0.0.1", "workers": 1}, env)
    assert s.rest == ["tcp:9000:interface=127.0.0.1"] and s.workers == 3
    s = load(tmp_path, {"http_port": 2}, env, {"rest": ["tcp:5"], "workers": 6})
    assert (s.rest, s.workers) == (["tcp:5"], 6)


def test_v2d_variables_win_over_mlserver_ones(tmp_path):
    env = {
        "MLSERVER_PARALLEL_WORKERS": "3",
        "V2D_WORKERS": "2",
        "MLSERVER_DEBUG": "true",
        "V2D_DEBUG": "false",
    }
    s = Settings.load(None, env)
    assert (s.workers, s.debug) == (2, False)
    s = Settings.load(
        None, {"MLSERVER_DEBUG": "1", "MLSERVER_SERVER_NAME": "n", "MLSERVER_EXTENSIONS": '["e"]'}
    )
    assert (s.debug, s.server_name, s.extensions) == (True, "n", ["e"])


def test_models_dir_variable(tmp_path):
    env = {"MLSERVER_MODELS_DIR": "/opt/mlserver", "MLSERVER_MODEL_REPOSITORY_ROOT": "/r"}
    assert Settings.load(None, env).models == "/opt/mlserver"
    assert Settings.load(None, {**env, "V2D_MODELS": "/v"}).models == "/v"
    # only a variable: in settings.json it is an unknown field
    assert "unknown field 'models_dir'" in problems(tmp_path, {"models_dir": "x"})[0]


def test_cors_settings_from_variables_and_command_line(tmp_path):
    env = {"MLSERVER_CORS_SETTINGS": json.dumps({"allow_origins": ["http://a"], "max_age": 5})}
    s = load(tmp_path, {"cors_settings": {"allow_methods": ["POST"]}}, env, {"cors_settings": {"max_age": 9}})
    assert s.cors_settings == CORSSettings(allow_origins=["http://a"], allow_methods=["POST"], max_age=9)


def test_dotenv_file(tmp_path):
    (tmp_path / ".env").write_text(
        "# MLServer reads this\nMLSERVER_HTTP_PORT=9100\nexport MLSERVER_SERVER_NAME='quoted name'\n"
        "MLSERVER_DEBUG=true # a comment\nnot a line\n"
    )
    assert read_env_file(str(tmp_path / ".env")) == {
        "MLSERVER_HTTP_PORT": "9100",
        "MLSERVER_SERVER_NAME": "quoted name",
        "MLSERVER_DEBUG": "true",
    }
    assert read_env_file(str(tmp_path / "missing")) == {}
    options = Options()
    options.parseOptions(["--models", "m"])
    s = options["settings"]
    assert (s.rest, s.server_name, s.debug) == (["tcp:9100:interface=0.0.0.0"], "quoted name", True)


# -- what v2d cannot honour -----------------------------------------------------------------


def test_unsupported_fields_at_default_or_harmless_are_accepted(tmp_path):
    load(
        tmp_path,
        {
            "parallel_workers_timeout": 5,
            "model_repository_implementation": None,
            "model_repository_implementation_args": {},
            "metrics_dir": "/somewhere/.metrics",
            "metrics_rest_server_prefix": "rest_server",
            "use_structured_logging": False,
            "logging_settings": None,
            "kafka_enabled": False,
            "kafka_servers": "k:9092",
            "kafka_topic_input": "in",
            "kafka_topic_output": "out",
            "tracing_server": None,
            "cache_enabled": False,
            "cache_size": 10,
            "gzip_enabled": False,
        },
    )


def test_everything_wrong_is_named_at_once(tmp_path):
    path = str(tmp_path / "settings.json")
    lines = problems(
        tmp_path,
        {
            "http_port": 8080,
            "kafka_enabled": True,
            "cache_enabled": True,
            "tracing_server": "otel:4317",
            "parallel_workers_timeout": 10,
            "logging_settings": "logging.json",
            "http_prot": 1,
            "nonsense": 2,
            "grpc_port": "x",
            "cors_settings": {"allow_origin_regex": "(", "allow_everything": True},
        },
    )
    assert [line.split(": ", 1)[0] for line in lines] == [path] * 10
    text = "\n".join(lines)
    assert "field 'kafka_enabled' = true is not supported: v2d has no Kafka server" in text
    assert "field 'cache_enabled' = true is not supported: v2d has no response cache" in text
    assert "field 'tracing_server' = \"otel:4317\" is not supported" in text
    assert "field 'parallel_workers_timeout' = 10 is not supported" in text and "shutdown_timeout" in text
    assert "field 'logging_settings' = \"logging.json\" is not supported" in text and "--logfile" in text
    assert (
        "unknown field 'http_prot': neither a v2d nor an MLServer setting (did you mean 'http_port'?)" in text
    )
    assert "unknown field 'nonsense'" in text
    assert "field 'grpc_port' must be an integer, got 'x'" in text
    assert "field 'cors_settings.allow_origin_regex' is not a regular expression" in text
    assert "unknown field 'cors_settings.allow_everything'" in text


def test_unsupported_variables_are_named(tmp_path):
    with pytest.raises(SettingsError) as error:
        Settings.load(None, {"MLSERVER_KAFKA_ENABLED": "true", "MLSERVER_CACHE_ENABLED": "false"})
    assert error.value.lines == [
        "MLSERVER_KAFKA_ENABLED: field 'kafka_enabled' = true is not supported: v2d has no Kafka server; "
        "send requests over REST or gRPC (e.g. a consumer that posts to /v2/models/{name}/infer), "
        "and remove the field"
    ]
    # other MLSERVER_ variables (e.g. MLServer's model settings) are not v2d's business here
    Settings.load(None, {"MLSERVER_MODEL_NAME": "x", "MLSERVER_SOMETHING": "y"})


@pytest.mark.parametrize(
    "doc,line",
    [
        ({"http_port": 70000}, "field 'http_port' must be a port number (0 to 65535)"),
        ({"root_path": "ml"}, "field 'root_path' must be empty or start with '/'"),
        ({"root_path": "/v2"}, "field 'root_path' cannot be under /v2"),
        ({"metrics_endpoint": "metrics"}, "field 'metrics_path' must start with '/'"),
        ({"cors_settings": ["*"]}, "field 'cors_settings' must be an object"),
    ],
)
def test_bad_values(tmp_path, doc, line):
    assert line in "\n".join(problems(tmp_path, doc))


# -- twistd v2d: exit lines and the settings.json of the working directory ------------------


def test_exit_lines_without_usage_text(tmp_path):
    write(tmp_path / "s.json", {"kafka_enabled": True, "bogus": 1})
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--config", "s.json"])
    assert exit.value.code.splitlines() == [
        "v2d: s.json: field 'kafka_enabled' = true is not supported: v2d has no Kafka server; send requests "
        "over REST or gRPC (e.g. a consumer that posts to /v2/models/{name}/infer), and remove the field",
        "v2d: s.json: unknown field 'bogus': neither a v2d nor an MLServer setting; remove it",
    ]
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--nope"])
    assert exit.value.code == "v2d: option --nope not recognized (twistd v2d --help lists the options)"
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--cors-max-age", "soon"])
    assert exit.value.code.startswith("v2d: --cors-max-age must be a whole number, 0 or more, got 'soon'")


def test_settings_json_in_working_directory(tmp_path):
    write(tmp_path / "settings.json", {"http_port": 9001, "debug": True})
    options = Options()
    options.parseOptions([])
    s = options["settings"]
    assert (s.models, s.rest, s.debug) == (".", ["tcp:9001:interface=0.0.0.0"], True)
    assert options["found_config"] == "./settings.json"
    write(tmp_path / "settings.json", {"model_repository_root": "repo"})
    options = Options()
    options.parseOptions([])
    assert options["settings"].models == "repo"


def test_settings_json_only_without_models_or_config(tmp_path, monkeypatch):
    write(tmp_path / "settings.json", {"http_port": 9001})
    options = Options()
    options.parseOptions(["--models", "m"])
    assert options["settings"].rest == ["tcp:8080"] and options["found_config"] is None
    write(tmp_path / "other.json", {"workers": 2})
    options = Options()
    options.parseOptions(["--config", "other.json"])
    assert (options["settings"].workers, options["settings"].models) == (2, "./models")
    monkeypatch.setenv("V2D_MODELS", "m")
    options = Options()
    options.parseOptions([])
    assert options["settings"].rest == ["tcp:8080"]


def test_no_settings_json_keeps_the_defaults(tmp_path):
    options = Options()
    options.parseOptions([])
    assert options["settings"].models == "./models" and options["found_config"] is None


def test_mlserver_models_dir_is_served_as_mlserver_start(tmp_path, monkeypatch):
    folder = tmp_path / "opt"
    folder.mkdir()
    write(folder / "settings.json", {"model_repository_root": "elsewhere", "grpc_port": 9002})
    monkeypatch.setenv("MLSERVER_MODELS_DIR", str(folder))
    options = Options()
    options.parseOptions([])
    s = options["settings"]
    assert (s.models, s.grpc) == (str(folder), "0.0.0.0:9002")


def test_new_options(tmp_path):
    write(tmp_path / "settings.json", {"cors_settings": {"allow_origins": ["http://a"]}})
    options = Options()
    options.parseOptions(
        [
            "--metrics",
            "tcp:9102",
            "--metrics-path",
            "/m",
            "--root-path",
            "/p",
            "--no-load-at-startup",
            "--cors-allow-origin",
            "http://b",
            "--cors-allow-origin",
            "http://c",
            "--cors-allow-origin-regex",
            "https://.*",
            "--cors-allow-method",
            "*",
            "--cors-allow-header",
            "X-A",
            "--cors-expose-header",
            "X-B",
            "--cors-allow-credentials",
            "--cors-max-age",
            "7",
        ]
    )
    s = options["settings"]
    assert (s.metrics, s.metrics_path, s.root_path, s.load_models_at_startup) == (
        "tcp:9102",
        "/m",
        "/p",
        False,
    )
    assert s.cors_settings == CORSSettings(
        allow_origins=["http://b", "http://c"],
        allow_origin_regex="https://.*",
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["X-A"],
        expose_headers=["X-B"],
        max_age=7,
    )
    options = Options()
    options.parseOptions(["--metrics-path", "none"])
    assert options["settings"].metrics_path is None


def test_bad_endpoints_are_named():
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--rest", "tcp:x", "--rest", "tcp:1", "--metrics", "bogus:1"])
    assert exit.value.code.splitlines() == [
        "v2d: field 'rest': 'tcp:x' is not a listen endpoint (strports): "
        "invalid literal for int() with base 10: 'x'",
        "v2d: field 'metrics': 'bogus:1' is not a listen endpoint (strports): Unknown endpoint type: 'bogus'",
    ]
