"""Reloading an in-process model hundreds of times through the repository API keeps RSS flat."""

from __future__ import annotations

import os

import pytest

from tests.support.daemon import Daemon
from tests.support.model_folder import ECHO, write_model

pytestmark = pytest.mark.integration

MIB = 1 << 20
BODY = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2]}]}


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reload(d: Daemon, times: int) -> None:
    for _ in range(times):
        status, out, _ = d.post("/v2/repository/models/echo/load", {})
        assert status == 200, out
        status, out, _ = d.post("/v2/models/echo/infer", BODY)
        assert status == 200 and out["outputs"][0]["data"] == [1, 2], out


def test_reloads_keep_memory_flat(tmp_path):
    write_model(tmp_path, "echo", "models.Echo", ECHO)
    with Daemon(str(tmp_path), grpc=False) as d:
        assert d.process is not None
        reload(d, 100)
        start = rss(d.process.pid)
        reload(d, 500)
        grown = rss(d.process.pid) - start
    # before the fix each reload kept ~13-23 KiB: 500 reloads grew by 6-11 MiB
    assert grown < 2 * MIB, f"RSS grew {grown / MIB:.1f} MiB over 500 reloads"
