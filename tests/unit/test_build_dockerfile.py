"""
The Dockerfile and .dockerignore v2d-build generates: content checks, no engine.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Tuple

import pytest

from v2d.build import DEFAULT_BASE_IMAGE, ImageOptions, render_dockerfile, render_dockerignore, scan_runtime
from v2d.build._dockerfile import user_dockerignore_lines

WHEEL = "v2d-0.1.0-py3-none-any.whl"
INSTRUCTIONS = {
    "ARG", "FROM", "ENV", "RUN", "COPY", "LABEL", "WORKDIR", "USER", "EXPOSE",
    "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD",
}  # fmt: skip


def make_runtime(
    root: str,
    models: Tuple[str, ...] = ("sum",),
    settings: Optional[Dict] = None,
    requirements: bool = True,
    conda: Optional[str] = None,
    top_level_model: bool = False,
) -> str:
    folders = [root] if top_level_model else [os.path.join(root, m) for m in models]
    for folder, name in zip(folders, models):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "model-settings.json"), "w") as f:
            json.dump({"name": name, "implementation": "models.Sum"}, f)
        with open(os.path.join(folder, "models.py"), "w") as f:
            f.write("from v2d import MLModel\n\nclass Sum(MLModel):\n    pass\n")
    if settings is not None:
        with open(os.path.join(root, "settings.json"), "w") as f:
            json.dump(settings, f)
    if requirements:
        with open(os.path.join(root, "requirements.txt"), "w") as f:
            f.write("humanize\n")
    if conda:
        with open(os.path.join(root, conda), "w") as f:
            f.write("name: x\ndependencies: [python=3.11, pip]\n")
    return root


def render(root: str, **options) -> str:
    return render_dockerfile(scan_runtime(root), ImageOptions(wheel_name=WHEEL, **options))


def instructions(dockerfile: str) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: List[Tuple[str, str]] = []
    pending = ""
    for line in dockerfile.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, rest = full.strip().partition(" ")
        out.append((keyword, rest.strip()))
    assert not pending, "dangling line continuation"
    return out


def stages(dockerfile: str) -> List[List[Tuple[str, str]]]:
    """Instructions grouped by stage (the global ARGs before the first FROM are dropped)."""
    groups: List[List[Tuple[str, str]]] = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, rest))
    return groups


def final(dockerfile: str, keyword: str) -> List[str]:
    return [rest for k, rest in stages(dockerfile)[-1] if k == keyword]


@pytest.fixture
def runtime_dir(tmp_path) -> str:
    return make_runtime(str(tmp_path / "rt"), models=("sum", "echo"), settings={"server_name": "embedded"})


def test_every_line_is_a_known_instruction(runtime_dir):
    parsed = instructions(render(runtime_dir, pip_cert=True, build_args=("FOO",)))
    assert {k for k, _ in parsed} <= INSTRUCTIONS


def test_two_stages_from_the_base_image_argument(runtime_dir):
    dockerfile = render(runtime_dir, base_image="registry.example/python:3.11")
    assert instructions(dockerfile)[0] == ("ARG", "BASE_IMAGE=registry.example/python:3.11")
    froms = [rest for k, rest in instructions(dockerfile) if k == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]


def test_default_base_image_is_slim_python_of_the_server():
    assert re.fullmatch(r"python:3\.\d+-slim", DEFAULT_BASE_IMAGE)
    import sys

    assert DEFAULT_BASE_IMAGE == f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def test_no_buildkit_only_syntax(runtime_dir):
    dockerfile = render(runtime_dir, pip_cert=True)
    assert "--mount" not in dockerfile
    assert "--chmod" not in dockerfile
    assert "<<" not in dockerfile
    assert "# syntax" not in dockerfile


def test_non_root_numeric_user_in_group_zero(runtime_dir):
    dockerfile = render(runtime_dir)
    assert final(dockerfile, "USER") == ["1000:0"]
    runs = " ".join(final(dockerfile, "RUN"))
    assert "useradd --uid 1000 --gid 0" in runs
    for folder in ("/opt/v2d/envs", "/opt/v2d/home", "/opt/v2d/models"):
        assert re.search(rf"chown 1000:0 [^&]*{folder}", runs)
        assert re.search(rf"chmod 0775 [^&]*{folder}", runs)
    build_runs = " ".join(rest for k, rest in stages(dockerfile)[0] if k == "RUN")
    assert "chmod -R g=u /tmp/v2d-build/runtime" in build_runs
    copies = final(dockerfile, "COPY")
    assert "--from=build --chown=1000:0 /tmp/v2d-build/runtime/ /opt/v2d/models/" in copies


def test_home_and_config_are_set_in_the_environment(runtime_dir):
    envs = " ".join(final(render(runtime_dir), "ENV"))
    assert "HOME=/opt/v2d/home" in envs
    assert "V2D_CONFIG=/opt/v2d/settings.json" in envs
    assert "PYTHONUNBUFFERED=1" in envs
    assert envs.startswith("PATH=/opt/v2d/venv/bin:")


def test_embedded_settings_are_not_environment_variables_or_arguments(runtime_dir):
    """Embedded defaults go through settings.json, so `docker run -e V2D_...` overrides them."""
    dockerfile = render(runtime_dir)
    envs = " ".join(final(dockerfile, "ENV"))
    assert re.findall(r"\bV2D_\w+", envs) == ["V2D_CONFIG"]
    (entrypoint,) = final(dockerfile, "ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert argv == ["/opt/v2d/venv/bin/twistd", "--nodaemon", "--pidfile=", "--logfile=-", "v2d"]
    assert final(dockerfile, "CMD") == ["[]"]
    assert "COPY .v2d-build/settings.json /opt/v2d/settings.json" in [
        f"COPY {rest}" for rest in final(dockerfile, "COPY")
    ]


def test_image_settings_keep_the_folders_and_set_image_paths(tmp_path):
    root = make_runtime(
        str(tmp_path / "rt"), settings={"server_name": "x", "models": "/host/models", "workers": 2}
    )
    settings = scan_runtime(root).image_settings()
    assert settings == {
        "server_name": "x",
        "workers": 2,
        "models": "/opt/v2d/models",
        "envs_dir": "/opt/v2d/envs",
    }


def test_exec_form_entrypoint_and_healthcheck(runtime_dir):
    dockerfile = render(runtime_dir)
    (health,) = final(dockerfile, "HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert "--interval=" in options and "--start-period=" in options
    assert json.loads(command) == ["/opt/v2d/venv/bin/python", "-m", "v2d.build.healthcheck"]
    assert final(dockerfile, "STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(final(dockerfile, "ENTRYPOINT")[0])[0].startswith("/")


@pytest.mark.parametrize(
    "settings, ports",
    [
        ({}, "8080 8081"),
        ({"rest": ["tcp:9000", "unix:/tmp/v2d.sock"]}, "9000 8081"),
        ({"rest": ["tcp:port=9001:interface=0.0.0.0"], "grpc": "[::]:9500"}, "9001 9500"),
        ({"rest": "tcp:9002,ssl:9443", "grpc": None}, "9002 9443"),
        ({"grpc": "none"}, "8080"),
        # MLServer's settings.json: its ports, and its metrics listener
        ({"http_port": 9080, "grpc_port": 9081, "metrics_port": 9082, "debug": True}, "9080 9081 9082"),
    ],
)
def test_exposed_ports_follow_the_embedded_settings(tmp_path, settings, ports):
    root = make_runtime(str(tmp_path / "rt"), settings=settings)
    assert final(render(root), "EXPOSE") == [ports]


def test_pip_cert_reaches_the_build_stage_only(runtime_dir):
    dockerfile = render(runtime_dir, pip_cert=True)
    build, last = stages(dockerfile)
    assert ("COPY", ".v2d-build/pip-cert.pem /tmp/v2d-build/pip-cert.pem") in build
    assert any(k == "ENV" and "PIP_CERT=/tmp/v2d-build/pip-cert.pem" in rest for k, rest in build)
    assert not any("pip-cert" in rest or "PIP_CERT" in rest for _, rest in last)
    # the staged runtime copy drops the support folder before the final stage copies it
    assert any(k == "RUN" and "rm -rf .v2d-build" in rest for k, rest in build)
    assert "pip-cert" not in render(runtime_dir, pip_cert=False)


def test_requirements_and_wheel_installed_in_one_pip_run(runtime_dir):
    build = stages(render(runtime_dir))[0]
    assert ("COPY", "requirements.txt /tmp/v2d-build/requirements.txt") in build
    assert ("COPY", f".v2d-build/{WHEEL} /tmp/v2d-build/{WHEEL}") in build
    pip = [rest for k, rest in build if k == "RUN" and "pip install" in rest]
    assert len(pip) == 1
    assert (
        f"/opt/v2d/venv/bin/python -m pip install /tmp/v2d-build/{WHEEL} -r /tmp/v2d-build/requirements.txt"
        in pip[0]
    )
    assert "getPlugins" in pip[0], "Twisted's plugin cache is written at build time"
    (venv,) = [rest for k, rest in build if k == "RUN" and "-m venv" in rest]
    assert venv.endswith("python3 -m venv /opt/v2d/venv")
    assert "the base image has no python3" in venv


def test_without_requirements(tmp_path):
    root = make_runtime(str(tmp_path / "rt"), requirements=False)
    dockerfile = render(root)
    assert "requirements" not in dockerfile
    assert f"pip install /tmp/v2d-build/{WHEEL}" in dockerfile


@pytest.mark.parametrize("conda_file", ["environment.yaml", "conda.yaml", "environment.yml"])
def test_conda_environment_replaces_the_venv(tmp_path, conda_file):
    root = make_runtime(str(tmp_path / "rt"), conda=conda_file)
    build = stages(render(root))[0]
    assert ("COPY", f"{conda_file} /tmp/v2d-build/{conda_file}") in build
    runs = " ".join(rest for k, rest in build if k == "RUN")
    assert "--prefix /opt/v2d/venv" in runs
    assert "micromamba" in runs and "conda_cmd" in runs
    assert "python3 -m venv" not in runs
    assert "-r /tmp/v2d-build/requirements.txt" in runs


def test_build_args_are_declared_in_the_build_stage(runtime_dir):
    build = stages(render(runtime_dir, build_args=("FOO", "PIP_INDEX_URL")))[0]
    args = [rest for k, rest in build if k == "ARG"]
    assert args.count("PIP_INDEX_URL") == 1
    assert "FOO" in args and "PIP_EXTRA_INDEX_URL" in args


def test_folder_that_is_a_model_goes_below_the_models_dir(tmp_path):
    root = make_runtime(str(tmp_path / "my model"), models=("greeter",), top_level_model=True)
    runtime = scan_runtime(root)
    assert runtime.is_model_folder
    assert "--from=build --chown=1000:0 /tmp/v2d-build/runtime/ /opt/v2d/models/my-model/" in final(
        render(root), "COPY"
    )


def test_labels_name_the_models(runtime_dir):
    (label,) = final(render(runtime_dir), "LABEL")
    assert 'io.v2d.models="echo,sum"' in label


def test_dockerignore_keeps_clutter_out_and_appends_the_folders_own():
    text = render_dockerignore(["data/raw", "*.ckpt"])
    lines = text.splitlines()
    assert lines[0].startswith("# Generated by v2d-build")
    for pattern in ("**/__pycache__", ".git", "Dockerfile", ".dockerignore", ".venv"):
        assert pattern in lines
    assert lines[-2:] == ["data/raw", "*.ckpt"]
    assert ".v2d-build" not in lines, "the build needs the support folder in the context"
    # regenerating from our own file keeps only the folder's patterns
    assert user_dockerignore_lines(text) == ["data/raw", "*.ckpt"]
    assert user_dockerignore_lines(render_dockerignore()) == []
    assert user_dockerignore_lines("# mine\nsecrets/\n\n*.log\n") == ["secrets/", "*.log"]
