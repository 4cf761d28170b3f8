"""
Custom handlers and custom metrics from a model in its own environment: a venv of a
Python other than the server's, holding numpy (and ``inflection``) but neither
Twisted nor prometheus_client, packed as the model's ``environment_tarball``.

The runtime imports ``custom_handler``, ``register`` and ``log`` there; its handler
answers over REST and its metric shows on the server's ``/metrics``.
"""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest

from tests.integration.test_environments import wait_settled
from tests.integration.test_environments import write_model as write_model_settings
from tests.support.daemon import Daemon

pytestmark = pytest.mark.integration

RUNTIME = """
import importlib.util
import sys

from v2d import MLModel, log, register
from v2d.handlers import custom_handler
from v2d.types import InferenceResponse


class Counter(MLModel):
    def load(self):
        register("env_handler_items", "Items the environment's runtime counted")
        return True

    @custom_handler(rest_path="/env/count")
    def count(self, payload: list) -> dict:
        log(env_handler_items=len(payload))
        seen = [m for m in ("twisted", "prometheus_client") if importlib.util.find_spec(m)]
        return {"count": len(payload), "python": "%d.%d" % sys.version_info[:2], "server_packages": seen}

    def predict(self, payload):
        return InferenceResponse(model_name=self.name, outputs=[])
"""


def test_handlers_and_metrics_from_an_environment_without_the_servers_packages(
    env_tarball, other_python, tmp_path  # noqa: F811
):
    _, version = other_python
    folder = write_model_settings(
        str(tmp_path),
        "counter",
        {"implementation": "models.Counter", "parameters": {"environment_tarball": "env.tar.gz"}},
        RUNTIME,
    )
    shutil.copy(env_tarball, os.path.join(folder, "env.tar.gz"))
    with Daemon(str(tmp_path), "--envs-dir", str(tmp_path / "envs"), grpc=False) as d:
        states = wait_settled(d, ["counter"])
        assert states["counter"]["state"] == "READY", d.log()
        status, body, _ = d.post("/env/count", [1, 2, 3])
        assert status == 200, body
        assert body == {"count": 3, "python": "%d.%d" % version, "server_packages": []}
        assert d.post("/env/count", [1])[0] == 200
        with urllib.request.urlopen(d.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    assert 'env_handler_items_count{model_name="counter",model_version=""} 2.0' in text
    assert "# HELP env_handler_items Items the environment's runtime counted" in text
