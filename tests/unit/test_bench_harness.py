"""
The benchmark harness's own arithmetic (``benchmarks/``): what it reads from wrk's and
h2load's output, the CPU it meters over a run, and how a CPU target and a server that
cannot do a case show in the table. No server and no load generator is started.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.loadgen import CPUMeter, H2load, Load, Measurement, Wrk
from benchmarks.run import Case, Entry, Result, Target, evaluate, table
from benchmarks.servers import _cpu_seconds, process_tree_cpu

WRK = """Running 5s test @ http://127.0.0.1:8080/v2/models/add-one/infer
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.23ms    1.10ms  23.32ms   90.00%
    Req/Sec     2.86k   200.00     3.10k    80.00%
  Latency Distribution
     50%    2.23ms
     75%    2.50ms
     90%    3.00ms
     99%   23.32ms
  28450 requests in 5.00s, 5.43MB read
Requests/sec:   5690.00
Transfer/sec:      1.09MB
"""

H2LOAD = """finished in 5.00s, 3524.00 req/s, 1.20MB/s
requests: 17620 total, 17636 started, 17620 done, 17620 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 17620 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:      1.10ms     20.00ms      4.45ms      1.00ms    80.00%
"""


def test_wrk_output_gives_rate_latencies_and_request_count() -> None:
    m = Wrk.parse(WRK, ["wrk"])
    assert m.ok
    assert (m.throughput, m.p50_ms, m.p99_ms, m.requests) == (5690.0, 2.23, 23.32, 28450.0)


def test_h2load_output_gives_rate_mean_latency_and_answered_requests() -> None:
    m = H2load.parse(H2LOAD, ["h2load"])
    assert m.ok and not m.stable
    assert (m.throughput, m.p50_ms, m.requests) == (3524.0, 4.45, 17620.0)


def test_h2load_run_with_no_answer_is_an_error_not_a_rate() -> None:
    output = H2LOAD.replace("3524.00 req/s", "0.00 req/s")
    m = H2load.parse(output, ["h2load"])
    assert not m.ok
    assert "no request answered" in m.error


def test_cpu_per_1k_requests_and_load_generator_cores() -> None:
    m = Measurement(throughput=1000.0, requests=5000.0, window_s=5.0, server_cpu_s=2.5, loadgen_cpu_s=0.5)
    assert m.server_cpu_per_1k == pytest.approx(0.5)
    assert m.loadgen_cpu_per_1k == pytest.approx(0.1)
    assert m.loadgen_cores == pytest.approx(0.1)
    assert Measurement(throughput=1.0).server_cpu_per_1k is None


def test_cpu_seconds_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    # a process whose name holds ") (": the fields after the name must still be found
    busy = (
        "import time\nopen('/proc/self/comm', 'w').write('a) (b')\n"
        "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ninput()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", busy],
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = 50
        while _cpu_seconds(proc.pid) < 0.25 and deadline:
            subprocess.run(["sleep", "0.05"], check=True)
            deadline -= 1
        assert _cpu_seconds(proc.pid) >= 0.25
        with open(f"/proc/{proc.pid}/comm") as f:
            assert f.read().strip() == "a) (b"
        assert process_tree_cpu(os.getpid()) >= _cpu_seconds(proc.pid)
    finally:
        proc.communicate("")


def test_meter_counts_the_load_generator_as_a_waited_for_child() -> None:
    meter = CPUMeter(os.getpid())
    meter.begin()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    meter.end()
    m = meter.fill(Measurement(throughput=100.0))
    assert m.loadgen_cpu_s is not None and m.loadgen_cpu_s >= 0.2
    assert m.server_cpu_s is not None and m.server_cpu_s >= 0
    assert m.window_s >= 0.2
    # no count from the load generator (perf_analyzer): rate x the run's length
    assert m.requests == pytest.approx(100.0 * m.window_s)


def _case(kserve: Measurement, unavailable: str = "") -> tuple:
    entries = [Entry("v2d", "v2d", "v2d"), Entry("kserve", "kserve", "KServe 0.21", unavailable=unavailable)]
    case = Case(
        key="small-rest-c16",
        title="add-one [1,16] REST c16",
        load=Load(model="add-one", transport="rest", concurrency=16),
        entries=entries,
        tags=("small", "rest", "c16"),
        targets=[
            Target("v2d", "kserve", 2.0, "rate"),
            Target("v2d", "kserve", 0.5, "cpu", "v2d CPU", "cpu"),
        ],
    )
    v2d = Measurement(throughput=4000.0, requests=20000.0, window_s=5.0, server_cpu_s=2.0, loadgen_cpu_s=0.2)
    results = [Result(entries[0], [v2d]), Result(entries[1], [kserve])]
    return case, results


def test_a_cpu_target_is_met_at_or_below_its_ratio() -> None:
    kserve = Measurement(
        throughput=1000.0, requests=5000.0, window_s=5.0, server_cpu_s=3.0, loadgen_cpu_s=0.1
    )
    case, results = _case(kserve)
    rate, cpu = evaluate(case, results)
    assert (rate["ratio"], rate["met"]) == (4.0, True)
    assert cpu["ratio"] == pytest.approx(0.1 / 0.6)
    assert cpu["met"] is True
    text = table([case], {case.key: results})
    assert "v2d CPU 0.17x (<= 0.5x met)" in text
    assert " 0.6 |" in text  # KServe's CPU s/1k: 3 s over 5,000 requests


def test_a_server_that_cannot_do_a_case_shows_why_and_has_no_target() -> None:
    case, results = _case(Measurement(error="n/a: no adaptive batching"), unavailable="no adaptive batching")
    assert evaluate(case, results) == []
    row = [line for line in table([case], {case.key: results}).splitlines() if "KServe" in line][0]
    assert "n/a" in row and "no adaptive batching" in row
