"""
Load generators: Triton's perf_analyzer, and where it cannot run, wrk (REST) and h2load
(gRPC) from Debian.

perf_analyzer is set up by ``.ci/setup-perf-analyzer.sh`` (PyPI perf-analyzer 2.60 with
a private Debian 13 C runtime, since its wheel needs glibc >= 2.38) and found by
``tests/support/perf_analyzer.py``; ``perf_analyzer()`` runs the script when it is missing.

Every run gives a ``Measurement``: inferences per second, p50 and p99 latency (ms),
whether the load generator called the result stable, and (with a ``CPUMeter``) the CPU
seconds the server's process tree and the load generator itself used over the measured
run, with the number of requests answered in it. perf_analyzer runs with ``-v``:
when it cannot reach its stability criterion within ``max_trials`` windows (a busy
machine), it writes no CSV, and the mean of its last three windows is reported
instead, marked unstable, with the average latency in place of p50 and no p99.
"""

from __future__ import annotations

import csv
import math
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

__all__ = ["CPUMeter", "H2load", "Load", "Measurement", "PerfAnalyzer", "Wrk", "perf_analyzer"]


@dataclass
class Measurement:
    """What one load run measured."""

    throughput: float = 0.0  # inferences per second
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    avg_ms: Optional[float] = None
    stable: bool = True
    error: str = ""
    note: str = ""
    command: List[str] = field(default_factory=list)
    # the measured run: its length, the requests answered in it (perf_analyzer: rate x
    # length, an estimate), the CPU seconds of the server's process tree and of the
    # load generator over it
    window_s: float = 0.0
    requests: float = 0.0
    server_cpu_s: Optional[float] = None
    loadgen_cpu_s: Optional[float] = None

    @property
    def ok(self) -> bool:
        return not self.error and self.throughput > 0

    def per_1k(self, cpu_s: Optional[float]) -> Optional[float]:
        """CPU seconds per 1,000 requests, from ``cpu_s`` over the measured run."""
        if cpu_s is None or not self.requests:
            return None
        return cpu_s * 1000.0 / self.requests

    @property
    def server_cpu_per_1k(self) -> Optional[float]:
        return self.per_1k(self.server_cpu_s)

    @property
    def loadgen_cpu_per_1k(self) -> Optional[float]:
        return self.per_1k(self.loadgen_cpu_s)

    @property
    def loadgen_cores(self) -> Optional[float]:
        """The load generator's CPU over the run's length: 1.0 is one core kept busy."""
        if self.loadgen_cpu_s is None or not self.window_s:
            return None
        return self.loadgen_cpu_s / self.window_s


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CPUMeter:
    """CPU seconds over one measured run: the server's process tree (utime + stime of
    the server and every descendant, from /proc) and the load generator (this
    process's reaped children: the load generator is the only one started and waited
    for within the run).

    ``begin`` just before the load generator starts, ``end`` once it has exited and
    been waited for, ``fill`` puts the figures in the run's ``Measurement``.
    """

    def __init__(self, server_pid: Optional[int]) -> None:
        self.server_pid = server_pid
        self._start = (0.0, 0.0, 0.0)
        self.window_s = 0.0
        self.server_cpu_s: Optional[float] = None
        self.loadgen_cpu_s: Optional[float] = None

    def _now(self) -> tuple:
        from benchmarks.servers import process_tree_cpu

        server = process_tree_cpu(self.server_pid) if self.server_pid else 0.0
        return time.monotonic(), server, _children_cpu()

    def begin(self) -> None:
        self._start = self._now()

    def end(self) -> None:
        t1, server1, children1 = self._now()
        t0, server0, children0 = self._start
        self.window_s = t1 - t0
        self.server_cpu_s = server1 - server0 if self.server_pid else None
        self.loadgen_cpu_s = children1 - children0

    def fill(self, m: Measurement) -> Measurement:
        """The run's figures into ``m``; without a request count from the load generator
        (perf_analyzer), the count is its rate times the run's length."""
        m.window_s = self.window_s
        m.requests = m.requests or m.throughput * self.window_s
        m.server_cpu_s = self.server_cpu_s
        m.loadgen_cpu_s = self.loadgen_cpu_s
        return m


def _measured_run(
    cmd: List[str], timeout: float, meter: Optional[CPUMeter]
) -> "subprocess.CompletedProcess[str]":
    """``cmd`` run to its end (output captured), with ``meter`` around it."""
    if meter is not None:
        meter.begin()
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        if meter is not None:
            meter.end()


@dataclass
class Load:
    """One load to apply: model, transport, concurrency and what to send."""

    model: str
    transport: str  # "rest" or "grpc"
    concurrency: int
    rest_format: str = "json"  # "json" or "binary" (the binary tensor extension)
    input_data: str = "zero"  # a perf_analyzer --input-data JSON file, or "zero"
    shape: Optional[str] = None  # perf_analyzer --shape, e.g. "x:1,262144"
    elements: int = 16  # FP32 elements of input x
    big: bool = False  # a big tensor: a bounded request count rather than time windows


def perf_analyzer(install: bool = True) -> Optional[List[str]]:
    """The command that runs perf_analyzer (tests/support/perf_analyzer.py finds it), or None.

    With ``install``, a missing perf_analyzer is set up by .ci/setup-perf-analyzer.sh first.
    """
    from tests.support.perf_analyzer import find_perf_analyzer

    command = find_perf_analyzer()
    script = os.path.join(ROOT, ".ci", "setup-perf-analyzer.sh")
    if command is None and install and os.path.exists(script):
        subprocess.run(["bash", script], check=False, stdin=subprocess.DEVNULL)
        command = find_perf_analyzer()
    return command


_PASS = re.compile(r"Pass \[\d+\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec")
_AVG = re.compile(r"Avg latency: (\d+) usec \(standard deviation")

#: perf_analyzer keeps every request's inputs and every response's outputs until it
#: exits (about four copies of the tensor per request, as measured), so big-tensor runs
#: send a bounded number of requests (--request-count), sized for this much memory ...
MEMORY_BUDGET = 4 << 30
COPIES_PER_REQUEST = 4
#: ... and any run whose perf_analyzer grows past this is stopped.
RSS_LIMIT = 8 << 30


class PerfAnalyzer:
    """Runs perf_analyzer at one concurrency and reads its CSV (or its windows).

    Small tensors: "time_windows" mode (``measurement_interval_ms`` windows until
    ``stability_percentage`` holds over three, at most ``max_trials``).

    Big tensors (``Load.big``): a probe of 2c requests (the warm-up, and a first rate),
    then "count_windows" mode: windows of a fixed number of requests, about
    ``count_window_s`` of work each and few enough that all trials fit MEMORY_BUDGET,
    with the same stability rule.
    """

    name = "perf_analyzer"

    def __init__(
        self,
        command: List[str],
        measurement_interval_ms: int = 3000,
        stability_percentage: int = 25,
        max_trials: int = 5,
        count_window_s: float = 1.0,
        timeout: float = 120.0,
    ) -> None:
        self.base = list(command)
        self.measurement_interval_ms = measurement_interval_ms
        self.stability_percentage = stability_percentage
        self.max_trials = max_trials
        self.count_window_s = count_window_s
        self.timeout = timeout

    def settings(self) -> str:
        """The measurement settings, as documented with the table."""
        return (
            f"small tensors: time_windows {self.measurement_interval_ms} ms, stability "
            f"{self.stability_percentage}%, max {self.max_trials} trials; big tensors: "
            f"count_windows of ~{self.count_window_s:g} s of requests (memory-bounded), same stability rule"
        )

    def command(self, load: Load, url: str, csv_path: str, count: int = 0, window: int = 0) -> List[str]:
        cmd = self.base + [
            "-m",
            load.model,
            "-u",
            url,
            "-i",
            "http" if load.transport == "rest" else "grpc",
            "--concurrency-range",
            f"{load.concurrency}:{load.concurrency}",
            "--input-data",
            load.input_data,
            "-f",
            csv_path,
            "-v",
        ]
        if count:
            cmd += ["--request-count", str(count)]
        else:
            if window:
                cmd += ["--measurement-mode", "count_windows", "--measurement-request-count", str(window)]
            else:
                cmd += [
                    "--measurement-mode",
                    "time_windows",
                    "--measurement-interval",
                    str(self.measurement_interval_ms),
                ]
            cmd += [
                "--stability-percentage",
                str(self.stability_percentage),
                "--max-trials",
                str(self.max_trials),
            ]
        if load.shape:
            cmd += ["--shape", load.shape]
        if load.transport == "rest":
            cmd += ["--input-tensor-format", load.rest_format, "--output-tensor-format", load.rest_format]
        return cmd

    def run(self, load: Load, url: str, meter: Optional[CPUMeter] = None) -> Measurement:
        """One measurement; ``meter`` (if any) is around the measuring perf_analyzer run
        (not the big tensors' probe). perf_analyzer reports no request count: the
        meter's count is the rate times the run's length (start-up and all trials)."""
        if not load.big:
            return self._run(self.command, load, url, meter)
        # Big tensors: perf_analyzer's memory grows with every request, so the windows
        # are counted in requests ("count_windows"), as many as fit the memory budget
        # over all trials and about ``count_window_s`` of work each. A probe of 2c
        # requests warms up and gives the first rate (concurrency / average latency, an
        # upper bound: it leaves out the client's own time between requests).
        most = max(4, MEMORY_BUDGET // max(1, COPIES_PER_REQUEST * load.elements * 4))
        probe = self._run(self.command, load, url, None, count=min(most, max(2, 2 * load.concurrency)))
        if not probe.ok or not probe.avg_ms:
            return probe
        rate = load.concurrency / (probe.avg_ms / 1000.0)
        per_window = min(most // (self.max_trials + 1), int(rate * self.count_window_s))
        per_window = max(2, load.concurrency, per_window)
        return self._run(self.command, load, url, meter, window=per_window)

    def _run(
        self,
        make: Callable[..., List[str]],
        load: Load,
        url: str,
        meter: Optional[CPUMeter],
        **counts: int,
    ) -> Measurement:
        with tempfile.TemporaryDirectory(prefix="v2d-bench-pa-") as tmp:
            csv_path = os.path.join(tmp, "out.csv")
            out_path = os.path.join(tmp, "out.txt")
            cmd = make(load, url, csv_path, **counts)
            note = ""
            with open(out_path, "w+") as out:
                if meter is not None:
                    meter.begin()
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp
                )
                deadline = time.monotonic() + self.timeout
                while proc.poll() is None:
                    if time.monotonic() > deadline:
                        note = f"timed out after {self.timeout:.0f}s"
                    elif _tree_rss(proc.pid) > RSS_LIMIT:
                        note = f"perf_analyzer grew past {RSS_LIMIT >> 30} GiB"
                    if note:
                        proc.kill()
                        proc.wait()
                        break
                    time.sleep(0.2)
                if meter is not None:
                    meter.end()
                out.seek(0)
                output = out.read()
            if os.path.exists(csv_path) and not note:
                m = self._from_csv(csv_path, cmd)
            else:
                m = self._from_passes(output, cmd, note)
            avg = _AVG.search(output)
            if avg and m.avg_ms is None:
                m.avg_ms = int(avg.group(1)) / 1000.0
            return meter.fill(m) if meter is not None else m

    @staticmethod
    def _from_csv(path: str, cmd: List[str]) -> Measurement:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return Measurement(error="empty perf_analyzer CSV", command=cmd)
        row = rows[-1]

        def ms(key: str) -> Optional[float]:
            value = row.get(key)
            return float(value) / 1000.0 if value not in (None, "") else None

        return Measurement(
            throughput=float(row["Inferences/Second"]),
            p50_ms=ms("p50 latency"),
            p99_ms=ms("p99 latency"),
            command=cmd,
        )

    @staticmethod
    def _from_passes(output: str, cmd: List[str], note: str) -> Measurement:
        errors = [
            line.strip() for line in output.splitlines() if "had error" in line or line.startswith("error")
        ]
        if errors:
            return Measurement(error=errors[0], command=cmd)
        passes = [(float(t), int(lat)) for t, lat in _PASS.findall(output)]
        if not passes:
            return Measurement(
                error=note or output.strip()[-300:] or "perf_analyzer measured nothing", command=cmd
            )
        last = passes[-3:]
        throughput = sum(t for t, _ in last) / len(last)
        latency = sum(lat for _, lat in last) / len(last) / 1000.0
        return Measurement(throughput=throughput, p50_ms=latency, avg_ms=latency, stable=False, command=cmd)


def _tree_rss(pid: int) -> int:
    from benchmarks.servers import process_tree_rss

    return process_tree_rss(pid)


class Wrk:
    """REST load with wrk: a Lua script POSTs a prepared infer body (JSON or binary)."""

    name = "wrk"

    def __init__(self, duration_s: int = 10, timeout: float = 120.0) -> None:
        self.binary = shutil.which("wrk") or "wrk"
        self.duration_s = duration_s
        self.timeout = timeout

    def run(self, load: Load, url: str, meter: Optional[CPUMeter] = None) -> Measurement:
        from benchmarks.bodies import rest_body

        with tempfile.TemporaryDirectory(prefix="v2d-bench-wrk-") as tmp:
            body, headers = rest_body(load)
            body_path = os.path.join(tmp, "body")
            with open(body_path, "wb") as f:
                f.write(body)
            script = os.path.join(tmp, "post.lua")
            with open(script, "w") as f:
                f.write('wrk.method = "POST"\n')
                f.write(f'local f = io.open("{body_path}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
                for key, value in headers.items():
                    f.write(f'wrk.headers["{key}"] = "{value}"\n')
            threads = min(2, load.concurrency)
            cmd = [
                self.binary,
                f"-t{threads}",
                f"-c{load.concurrency}",
                f"-d{self.duration_s}s",
                "--latency",
                "-s",
                script,
                f"http://{url}/v2/models/{load.model}/infer",
            ]
            try:
                proc = _measured_run(cmd, self.timeout, meter)
            except subprocess.TimeoutExpired:
                return Measurement(error="wrk timed out", command=cmd)
        m = self.parse(proc.stdout + proc.stderr, cmd)
        return meter.fill(m) if meter is not None else m

    @staticmethod
    def parse(output: str, cmd: Sequence[str]) -> Measurement:
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        if not rate:
            return Measurement(error=output.strip()[-300:], command=list(cmd))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        done = re.search(r"(\d+) requests in", output)
        lat: Dict[str, float] = {}
        for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M):
            lat[pct] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        return Measurement(
            throughput=float(rate.group(1)),
            p50_ms=lat.get("50"),
            p99_ms=lat.get("99"),
            error=f"{bad.group(1)} non-2xx responses" if bad else "",
            command=list(cmd),
            requests=float(done.group(1)) if done else 0.0,
        )


class H2load:
    """gRPC load with h2load: a prepared, length-prefixed ModelInferRequest as body.

    h2load reports the mean and spread of request times, not percentiles: the mean is
    shown as p50 (marked unstable) and p99 is left out. A run lasts ``duration_s``, and
    h2load counts only the requests answered by then: where one request takes over a
    fifth of that (64 MiB against a slow server), the run is a number of requests
    instead, about ``duration_s`` of them.
    """

    name = "h2load"

    def __init__(self, duration_s: int = 10, timeout: float = 120.0) -> None:
        self.binary = shutil.which("h2load") or "h2load"
        self.duration_s = duration_s
        self.timeout = timeout

    def run(self, load: Load, url: str, meter: Optional[CPUMeter] = None) -> Measurement:
        from benchmarks.bodies import grpc_body

        body = grpc_body(load)
        started = time.monotonic()
        error = self.check(url, body[5:])
        if error:
            return Measurement(error=error)
        one = time.monotonic() - started
        length = ["-D", str(self.duration_s)]
        if one * 5 > self.duration_s:
            length = ["-n", str(load.concurrency * max(2, math.ceil(self.duration_s / one)))]
        with tempfile.TemporaryDirectory(prefix="v2d-bench-h2load-") as tmp:
            body_path = os.path.join(tmp, "body")
            with open(body_path, "wb") as f:
                f.write(body)
            cmd = [
                self.binary,
                *length,
                "-c",
                str(load.concurrency),
                "-m",
                "1",
                "-t",
                "1",
                "-d",
                body_path,
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://{url}/inference.GRPCInferenceService/ModelInfer",
            ]
            try:
                proc = _measured_run(cmd, self.timeout, meter)
            except subprocess.TimeoutExpired:
                return Measurement(error="h2load timed out", command=cmd)
        m = self.parse(proc.stdout + proc.stderr, cmd)
        return meter.fill(m) if meter is not None else m

    @staticmethod
    def check(url: str, request: bytes) -> str:
        """One ModelInfer call through grpcio: h2load counts any HTTP 200 as a success,
        and gRPC errors travel in trailers."""
        import grpc

        limit = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
        with grpc.insecure_channel(url, options=limit) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            try:
                call(request, timeout=120)
            except grpc.RpcError as e:
                return f"ModelInfer failed: {e.code()} {e.details()}"
        return ""

    @staticmethod
    def parse(output: str, cmd: Sequence[str]) -> Measurement:
        rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output)
        if not rate:
            return Measurement(error=output.strip()[-300:], command=list(cmd))
        if not float(rate.group(1)):
            return Measurement(error="h2load: no request answered within the run", command=list(cmd))
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", output)
        p50 = None
        if mean:
            p50 = float(mean.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
        failed = re.search(r"requests: .*?(\d+) failed", output)
        done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", output)
        return Measurement(
            throughput=float(rate.group(1)),
            p50_ms=p50,
            stable=False,
            error=f"{failed.group(1)} failed" if failed and failed.group(1) != "0" else "",
            command=list(cmd),
            requests=float(done.group(1)) if done else 0.0,
        )
