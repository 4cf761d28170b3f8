"""
Soak: does v2d's memory stay flat under a long run?

Three runs, each against a fresh ``twistd -n v2d`` (through ``tests.support.daemon``)
serving a model that echoes its input:

- ``in-process``: 100,000 REST inference requests, the model in the server
  (``--workers 0``);
- ``workers 1``: the same with the model in one worker process (``--workers 1``);
- ``reload churn``: 1,000 reloads of the in-process model through the repository API
  (``POST /v2/repository/models/echo/load``), a request served after each.

Each run prints the resident memory (RSS) of the server's whole process tree: after a
warm-up (``start``), after the run (``end``) and the largest seen during it
(``peak``), and the growth from start to end. The target is a growth under 5 %; the
exit status is 1 when a run misses it.

Run, from the repository root, in the project's venv::

    python benchmarks/soak.py            # 100k + 100k requests, 1,000 reloads: a few minutes
    python benchmarks/soak.py --quick    # 10k + 10k requests, 200 reloads
    python benchmarks/soak.py --requests 50000 --reloads 500 --clients 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.servers import RSSSampler, process_tree_rss  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.model_folder import ECHO, write_model  # noqa: E402

MIB = 1 << 20
TARGET = 0.05
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [float(i) for i in range(16)]}]}
).encode()


def _client(port: int, count: int, errors: List[str]) -> None:
    """``count`` inference requests over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    try:
        for _ in range(count):
            conn.request("POST", "/v2/models/echo/infer", BODY, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(f"infer answered {response.status}")
    except (OSError, http.client.HTTPException) as e:
        errors.append(f"infer failed: {e}")
    finally:
        conn.close()


def requests(d: Daemon, total: int, clients: int) -> None:
    """``total`` requests from ``clients`` concurrent connections; raises on any failure."""
    errors: List[str] = []
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=_client, args=(d.http_port, n, errors)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]}")


def reloads(d: Daemon, count: int) -> None:
    """Reload the model ``count`` times, a request after each."""
    for _ in range(count):
        status, out, _ = d.post("/v2/repository/models/echo/load", {}, timeout=30)
        if status != 200:
            raise RuntimeError(f"reload answered {status}: {out}")
        requests(d, 1, 1)


def soak(
    label: str, models: str, args: List[str], warm: Callable[[Daemon], None], run: Callable[[Daemon], None]
) -> Dict[str, Any]:
    """Start a server, warm it up, run; the RSS figures."""
    with Daemon(models, *args, grpc=False) as d:
        assert d.process is not None
        warm(d)
        time.sleep(0.5)
        start = process_tree_rss(d.process.pid)
        began = time.monotonic()
        with RSSSampler(d.process.pid) as sampler:
            run(d)
            time.sleep(0.5)
            end = process_tree_rss(d.process.pid)
        seconds = time.monotonic() - began
    growth = (end - start) / start
    return {
        "run": label,
        "start": start,
        "end": end,
        "peak": sampler.peak,
        "growth": growth,
        "seconds": seconds,
        "ok": growth < TARGET,
    }


def _row(r: Dict[str, Any]) -> str:
    return (
        f"| {r['run']} | {r['start'] / MIB:.1f} | {r['end'] / MIB:.1f} | {r['peak'] / MIB:.1f} | "
        f"{r['growth'] * 100:+.2f} % | {r['seconds']:.0f} | {'yes' if r['ok'] else 'NO'} |"
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k requests per run, 200 reloads")
    parser.add_argument("--requests", type=int, help="requests per run [100000; --quick 10000]")
    parser.add_argument("--reloads", type=int, help="reloads in the churn [1000; --quick 200]")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections [8]")
    parser.add_argument("--json", help="write the results here too")
    opts = parser.parse_args(argv)
    total = opts.requests or (10_000 if opts.quick else 100_000)
    churn = opts.reloads or (200 if opts.quick else 1_000)
    warm_requests = max(2_000, total // 20)

    with tempfile.TemporaryDirectory(prefix="v2d-soak-") as models:
        write_model(models, "echo", "models.Echo", ECHO)
        runs = [
            (
                "in-process",
                ["--workers", "0"],
                lambda d: requests(d, warm_requests, opts.clients),
                lambda d: requests(d, total, opts.clients),
            ),
            (
                "workers 1",
                ["--workers", "1"],
                lambda d: requests(d, warm_requests, opts.clients),
                lambda d: requests(d, total, opts.clients),
            ),
            (
                "reload churn",
                ["--workers", "0"],
                lambda d: reloads(d, max(50, churn // 20)),
                lambda d: reloads(d, churn),
            ),
        ]
        results = []
        print(
            f"soak: {total} requests per run ({opts.clients} connections), {churn} reloads; "
            f"target: RSS growth under {TARGET * 100:.0f} %",
            flush=True,
        )
        print("| run | start MiB | end MiB | peak MiB | growth | seconds | under target |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |", flush=True)
        for label, args, warm, run in runs:
            result = soak(label, models, args, warm, run)
            results.append(result)
            print(_row(result), flush=True)
    if opts.json:
        with open(opts.json, "w") as f:
            summary = {"requests": total, "reloads": churn, "clients": opts.clients, "runs": results}
            json.dump(summary, f, indent=2)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
