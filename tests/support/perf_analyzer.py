"""
Find and run Triton's perf_analyzer (as set up by .ci/setup-perf-analyzer.sh).

The PyPI wheel's binary needs a newer glibc than Debian 12 has; the set-up script puts
it with a private Debian 13 C runtime behind a launcher script. This module finds that
launcher (or a perf_analyzer that runs as it is) and runs it, so tests and benchmarks
share one way of calling it. Standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import List, Optional

__all__ = ["default_home", "find_perf_analyzer", "parse_client_stats", "run_perf_analyzer"]


def default_home() -> str:
    """Where .ci/setup-perf-analyzer.sh installs unless PERF_ANALYZER_HOME says otherwise."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("PERF_ANALYZER_HOME") or os.path.join(cache, "v2d", "perf-analyzer")


def _runs(command: List[str]) -> bool:
    try:
        result = subprocess.run(
            command + ["--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def find_perf_analyzer() -> Optional[List[str]]:
    """
    The command that starts perf_analyzer, or None: ``$V2D_PERF_ANALYZER`` if set, the
    set-up script's launcher, or a ``perf_analyzer`` on PATH that runs.
    """
    candidates = []
    if os.environ.get("V2D_PERF_ANALYZER"):
        candidates.append(os.environ["V2D_PERF_ANALYZER"])
    candidates.append(os.path.join(default_home(), "perf_analyzer"))
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK) and _runs([candidate]):
            return [candidate]
    return None


def run_perf_analyzer(
    command: List[str], model: str, protocol: str, url: str, *extra: str, timeout: float = 300.0
) -> subprocess.CompletedProcess:
    """Run ``perf_analyzer -m MODEL -i PROTOCOL -u URL EXTRA...``; output captured as text."""
    argv = command + ["-m", model, "-i", protocol, "-u", url, *extra]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def parse_client_stats(stdout: str) -> dict:
    """The ``Client:`` section's request count and throughput (infer/sec) from perf_analyzer's report."""
    stats = {}
    count = re.search(r"Request count:\s*(\d+)", stdout)
    if count:
        stats["request_count"] = int(count.group(1))
    throughput = re.search(r"Throughput:\s*([0-9.]+)\s*infer/sec", stdout)
    if throughput:
        stats["throughput"] = float(throughput.group(1))
    latency = re.search(r"Avg latency:\s*(\d+)\s*usec", stdout.split("Client:")[-1])
    if latency:
        stats["avg_latency_us"] = int(latency.group(1))
    return stats
