"""
v2d against MLServer 1.7.1 and KServe 0.21, side by side, on the same runtimes: one
command, one table.

    python benchmarks/run.py --loadgen wrk   # every server, wrk + h2load (~25 min on 2 cores)
    python benchmarks/run.py                 # perf_analyzer; no KServe rows (~20 min)
    python benchmarks/run.py --quick         # c16 only, fewer variants (~3-4 min)
    python benchmarks/run.py --only rest --only small --json out.json

It installs what it needs (perf_analyzer through .ci/setup-perf-analyzer.sh; MLServer
1.7.1 and KServe 0.21.0 each in a venv of its own under ~/.cache/v2d-bench), writes the
model repositories (benchmarks/repository.py), starts every server it needs on loopback
ports (v2d in-process and with one worker process; MLServer with its defaults,
in-process, each with debug logging on and off; KServe's model server; a bare
twisted.web ceiling), then drives each case with perf_analyzer or wrk (REST) and
h2load (gRPC), the servers one after the other and their order reversed from one case
and round to the next, so that drift on the machine hits all of them. Each result is
the best of ``--rounds`` runs; peak RSS is the largest sum over the server's process
tree seen while it was under load; CPU per 1,000 requests is the CPU seconds the
server's process tree (and, apart, the load generator) used over the measured run.

Run it with the interpreter that runs v2d (the project's venv): v2d is started as
``twistd -n v2d`` with that interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from benchmarks.loadgen import (  # noqa: E402
    CPUMeter,
    H2load,
    Load,
    Measurement,
    PerfAnalyzer,
    Wrk,
    perf_analyzer,
)
from benchmarks.repository import (  # noqa: E402
    MIB_1,
    MIB_64,
    SMALL,
    write_input_data,
    write_repository,
    write_sklearn_model,
)
from benchmarks.servers import (  # noqa: E402
    CeilingServer,
    KServePeer,
    MLServerPeer,
    RSSSampler,
    Server,
    V2dServer,
)

MLSERVER_VERSION = "1.7.1"
KSERVE_VERSION = "0.21.0"


# --------------------------------------------------------------------------- set-up


def cache_dir() -> str:
    """Where the benchmark keeps what it installs (``V2D_BENCH_CACHE`` overrides)."""
    return os.environ.get("V2D_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "v2d-bench"
    )


def mlserver_python(cache: str, base_python: str) -> str:
    """The interpreter of a venv holding benchmarks/mlserver/requirements.txt (made once)."""
    return peer_python(cache, base_python, "mlserver", MLSERVER_VERSION, "MLServer")


def kserve_python(cache: str, base_python: str) -> str:
    """The interpreter of a venv holding benchmarks/kserve/requirements.txt (made once)."""
    return peer_python(cache, base_python, "kserve", KSERVE_VERSION, "KServe")


def peer_python(cache: str, base_python: str, peer: str, version: str, name: str) -> str:
    """The interpreter of ``cache``/``peer``-``version``, a venv holding
    benchmarks/``peer``/requirements.txt; made again whenever that file changes."""
    requirements = os.path.join(HERE, peer, "requirements.txt")
    with open(requirements) as f:
        wanted = f.read()
    venv = os.path.join(cache, f"{peer}-{version}")
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".requirements.txt")
    if os.path.exists(marker) and os.path.exists(python):
        with open(marker) as f:
            if f.read() == wanted:
                return python
    say(f"installing {name} {version} into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([base_python, "-m", "venv", venv], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", requirements],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    with open(marker, "w") as f:
        f.write(wanted)
    return python


def write_sklearn_repositories(work: str, peer_python: str, peer_models: str) -> Dict[str, str]:
    """
    The sklearn case's model, trained once with the peer's interpreter, in the peer's
    repository and in two of v2d's: ``env`` (its ``environment_path`` is the peer's venv,
    so a worker runs it there) and ``inproc`` (for v2d running in a venv with MLServer).
    """
    prefix = subprocess.run(
        [peer_python, "-c", "import sys; print(sys.prefix)"], check=True, capture_output=True, text=True
    ).stdout.strip()
    model = write_sklearn_model(peer_models, peer_python)
    env = os.path.join(work, "v2d-sklearn-env")
    inproc = os.path.join(work, "v2d-sklearn-inproc")
    write_sklearn_model(env, peer_python, environment_path=prefix, model_file=model)
    write_sklearn_model(inproc, peer_python, model_file=model)
    return {"env": env, "inproc": inproc}


def debian_tools(*commands: str) -> None:
    """Install the Debian packages of wrk / h2load when they are missing (as root)."""
    packages = {"wrk": "wrk", "h2load": "nghttp2-client"}
    missing = [packages[c] for c in commands if shutil.which(c) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"needs {' '.join(missing)}: apt-get install {' '.join(missing)}")
    say(f"installing {' '.join(missing)} from Debian")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdin=subprocess.DEVNULL
    )


def say(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- the cases


#: Server keys -> their label in the table.
SERVERS: Dict[str, str] = {
    "v2d": "v2d",
    "v2d-w1": "v2d --workers 1",
    "v2d-grpcio": "v2d --grpc-engine grpcio",
    "mls": "MLServer defaults (1 worker, debug)",
    "mls-inproc": "MLServer in-process (debug)",
    "mls-nodebug": "MLServer 1 worker, debug off",
    "mls-inproc-nodebug": "MLServer in-process, debug off",
    "ceiling": "twisted.web ceiling",
    "v2d-mls-env": "v2d, the model in MLServer's venv (environment_path, 1 worker)",
    "v2d-mls": "v2d in a venv with MLServer, in-process",
    "kserve": "KServe 0.21",
}

#: Why perf_analyzer cannot measure KServe: its rows need ``--loadgen wrk``.
KSERVE_NEEDS_WRK = "perf_analyzer reads Triton's model configuration, which KServe lacks: --loadgen wrk"


@dataclass
class Entry:
    """One server (maybe one of its models or formats) in a case."""

    id: str
    server: str
    label: str
    model: Optional[str] = None
    rest_format: Optional[str] = None
    unavailable: str = ""  # why this server cannot do this case: shown as "n/a", not run


@dataclass
class Target:
    """``numerator`` must do at least ``at_least`` times ``denominator``'s rate (None: shown only).

    With ``metric`` "cpu" the ratio is of the server CPU per request, numerator over
    denominator, and must be at most ``at_least``.
    """

    numerator: str
    denominator: str
    at_least: Optional[float]
    name: str
    who: str = "v2d"  # the numerator, in the table's target column
    metric: str = "rate"  # or "cpu"


@dataclass
class Case:
    key: str
    title: str
    load: Load
    entries: List[Entry]
    tags: Sequence[str]
    targets: List[Target] = field(default_factory=list)


@dataclass
class Result:
    entry: Entry
    rounds: List[Measurement] = field(default_factory=list)
    peak_rss: int = 0

    @property
    def best(self) -> Measurement:
        ok = [m for m in self.rounds if m.ok]
        stable = [m for m in ok if m.stable]
        if ok:
            # the best stable round; an unstable one only when no round was stable
            return max(stable or ok, key=lambda m: m.throughput)
        return self.rounds[-1] if self.rounds else Measurement(error="not run")


def kserve_targets(key: str, at_least: float, who: str = "v2d") -> List[Target]:
    """The targets against KServe: the rate, and server CPU per request <= 0.5x."""
    name = SERVERS[who]
    return [
        Target(who, "kserve", at_least, f"{key}: {name} >= {at_least:g}x KServe", who),
        Target(who, "kserve", 0.5, f"{key}: {name} server CPU/request <= 0.5x KServe's", f"{who} CPU", "cpu"),
    ]


def entry(server: str, suffix: str = "", **kw: Any) -> Entry:
    label = SERVERS[server] + (f", {suffix}" if suffix else "")
    return Entry(id=server + (f"/{suffix}" if suffix else ""), server=server, label=label, **kw)


def build_cases(data: Dict[str, str], quick: bool) -> List[Case]:
    """Every case of the full run (``--quick`` keeps c16 and fewer MLServer variants)."""
    peers = ["mls", "mls-inproc"] if quick else ["mls", "mls-inproc", "mls-nodebug", "mls-inproc-nodebug"]
    concurrencies = [16] if quick else [1, 16]
    cases: List[Case] = []

    small = dict(model="add-one", input_data=data["small"], elements=SMALL)
    for transport in ("rest", "grpc"):
        for c in concurrencies:
            entries = [entry("v2d"), entry("v2d-w1")] + [entry(p) for p in peers] + [entry("kserve")]
            if transport == "rest":
                entries.append(entry("ceiling"))
            else:
                entries.insert(1, entry("v2d-grpcio"))
            targets = kserve_targets(f"small {transport} c{c}", 2.0)
            if c == 16:
                targets += [
                    Target("v2d", "mls", 3.0, f"small {transport} c16: v2d >= 3x MLServer defaults"),
                    Target(
                        "v2d", "mls-inproc", 1.5, f"small {transport} c16: v2d >= 1.5x MLServer in-process"
                    ),
                    Target(
                        "v2d-w1",
                        "mls",
                        3.0,
                        f"small {transport} c16: v2d --workers 1 >= 3x MLServer",
                        "v2d -w1",
                    ),
                ]
                if transport == "rest":
                    targets.append(Target("v2d", "ceiling", 0.6, "v2d infer >= 60% of bare twisted.web"))
            cases.append(
                Case(
                    key=f"small-{transport}-c{c}",
                    title=f"add-one [1,16] {transport.upper()} c{c}",
                    load=Load(transport=transport, concurrency=c, **small),  # type: ignore[arg-type]
                    entries=entries,
                    tags=("small", transport, f"c{c}"),
                    targets=targets,
                )
            )

    big = dict(model="echo", input_data=data["1mib"], elements=MIB_1, big=True)
    for transport in ("rest", "grpc"):
        for c in concurrencies:
            v2d_format = "binary" if transport == "rest" else None
            suffix = "binary" if transport == "rest" else ""
            entries = [
                entry("v2d", suffix, rest_format=v2d_format),
                entry("v2d-w1", suffix, rest_format=v2d_format),
                entry("mls"),
                entry("mls-inproc"),
                entry("kserve", suffix, rest_format=v2d_format),
            ]
            if transport == "grpc":
                entries.insert(1, entry("v2d-grpcio"))
            what = "REST binary" if transport == "rest" else "gRPC raw"
            # KServe has the binary tensor extension: binary against binary
            targets = [
                Target(
                    entries[0].id,
                    entries[-1].id,
                    1.0 if transport == "rest" else 1.5,
                    f"1 MiB {transport} c{c}: v2d {what} >= {1.0 if transport == 'rest' else 1.5:g}x KServe",
                )
            ]
            if c == 16:
                at_least = 20.0 if transport == "rest" else 5.0
                targets += [
                    Target(
                        entries[0].id, "mls", at_least, f"1 MiB c16: v2d {what} >= {at_least:g}x MLServer"
                    ),
                ]
            cases.append(
                Case(
                    key=f"1mib-{transport}-c{c}",
                    title=f"echo 1 MiB {transport.upper()} c{c}",
                    load=Load(transport=transport, concurrency=c, **big),  # type: ignore[arg-type]
                    entries=entries,
                    tags=("1mib", transport, f"c{c}"),
                    targets=targets,
                )
            )

    huge = Load(
        model="echo",
        transport="grpc",
        concurrency=1,
        input_data="zero",
        shape=f"x:1,{MIB_64}",
        elements=MIB_64,
        big=True,
    )
    huge_entries = (
        [entry("v2d-w1"), entry("mls"), entry("kserve")]
        if quick
        else [
            entry("v2d-w1"),
            entry("v2d"),
            entry("mls"),
            entry("mls-inproc"),
            entry("kserve"),
        ]
    )
    cases.append(
        Case(
            key="64mib-grpc-c1",
            title="echo 64 MiB GRPC c1",
            load=huge,
            entries=huge_entries,
            tags=("64mib", "grpc", "c1"),
            targets=[
                Target("v2d-w1", "mls", 10.0, "64 MiB: v2d --workers 1 >= 10x MLServer defaults", "v2d -w1")
            ],
        )
    )

    # MLServer's own runtime package (mlserver-sklearn) served by both servers
    sklearn = dict(model="sklearn", input_data=data["small"], elements=SMALL)
    for transport in ("rest", "grpc"):
        entries = [
            entry("v2d-mls-env"),
            entry("v2d-mls"),
            entry("mls"),
            entry("mls-inproc"),
            entry("kserve", unavailable="KServe cannot serve an MLServer runtime package"),
        ]
        cases.append(
            Case(
                key=f"sklearn-{transport}-c16",
                title=f"mlserver-sklearn [1,16] {transport.upper()} c16",
                load=Load(transport=transport, concurrency=16, **sklearn),  # type: ignore[arg-type]
                entries=entries,
                tags=("sklearn", transport, "c16"),
                targets=[
                    Target(
                        "v2d-mls-env",
                        "mls",
                        2.0,
                        f"mlserver-sklearn {transport} c16: v2d (1 worker) >= 2x MLServer defaults",
                        "v2d env",
                    ),
                    # in-process, both servers spend the same scikit-learn time on one
                    # core; v2d saves only its own part: shown, not a target
                    Target(
                        "v2d-mls",
                        "mls-inproc",
                        None,
                        f"mlserver-sklearn {transport} c16: v2d in-process / MLServer in-process",
                        "v2d in-proc",
                    ),
                ],
            )
        )

    batching = [
        entry("v2d", "batching on", model="slow-add-one-batched"),
        entry("v2d", "batching off", model="slow-add-one"),
        entry("mls", "batching on", model="slow-add-one-batched"),
        entry("mls", "batching off", model="slow-add-one"),
        entry("kserve", "batching off", model="slow-add-one"),
        entry("kserve", "batching on", unavailable="KServe's model server has no adaptive batching"),
    ]
    cases.append(
        Case(
            key="batching-rest-c16",
            title="slow-add-one 5 ms/call REST c16",
            load=Load(
                model="slow-add-one",
                transport="rest",
                concurrency=16,
                **{k: v for k, v in small.items() if k != "model"},
            ),  # type: ignore[arg-type]
            entries=batching,
            tags=("batching", "rest", "c16"),
            targets=[
                Target(batching[0].id, batching[1].id, None, "v2d adaptive batching gain", "batching on"),
                Target(
                    batching[2].id, batching[3].id, None, "MLServer adaptive batching gain", "batching on"
                ),
            ],
        )
    )
    # small to big: a server's RSS never shrinks much, so a case's peak RSS includes
    # what the smaller cases before it left behind, never what a bigger one did
    sizes = ["small", "sklearn", "batching", "1mib", "64mib"]
    return sorted(cases, key=lambda c: sizes.index(c.tags[0]))


def select(cases: List[Case], only: List[str], servers: Optional[List[str]]) -> List[Case]:
    chosen = []
    for case in cases:
        if not all(tag in case.tags or tag == case.key for tag in only):
            continue
        if servers is not None:
            case.entries = [e for e in case.entries if e.server in servers]
        if any(not e.unavailable for e in case.entries):
            chosen.append(case)
    return chosen


# --------------------------------------------------------------------------- running


def start_servers(
    keys: Sequence[str],
    v2d_models: str,
    peer_models: str,
    peer_python: str,
    sklearn: Dict[str, str],
    kserve: str = "",
) -> Dict[str, Server]:
    """Start the servers ``keys``; ``sklearn`` has the repositories (and venv) of the
    sklearn case, ``kserve`` the interpreter of KServe's venv."""

    def v2d_in_mlserver_venv() -> Server:
        from tests.support.mlserver_env import mlserver_venv

        python = os.path.join(mlserver_venv(), "bin", "python")
        twistd = [python, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
        return V2dServer(SERVERS["v2d-mls"], sklearn["inproc"], workers=0, command=twistd)

    factories: Dict[str, Callable[[], Server]] = {
        "v2d-mls-env": lambda: V2dServer(SERVERS["v2d-mls-env"], sklearn["env"], workers=0),
        "v2d-mls": v2d_in_mlserver_venv,
        "v2d": lambda: V2dServer(SERVERS["v2d"], v2d_models, workers=0),
        "v2d-w1": lambda: V2dServer(SERVERS["v2d-w1"], v2d_models, workers=1),
        "v2d-grpcio": lambda: V2dServer(
            SERVERS["v2d-grpcio"], v2d_models, options=("--grpc-engine", "grpcio")
        ),
        "mls": lambda: MLServerPeer(SERVERS["mls"], peer_python, peer_models, 1, True),
        "mls-inproc": lambda: MLServerPeer(SERVERS["mls-inproc"], peer_python, peer_models, 0, True),
        "mls-nodebug": lambda: MLServerPeer(SERVERS["mls-nodebug"], peer_python, peer_models, 1, False),
        "mls-inproc-nodebug": lambda: MLServerPeer(
            SERVERS["mls-inproc-nodebug"], peer_python, peer_models, 0, False
        ),
        "ceiling": lambda: CeilingServer(SERVERS["ceiling"]),
        "kserve": lambda: KServePeer(SERVERS["kserve"], kserve),
    }
    started: Dict[str, Server] = {}
    try:
        for key in keys:
            server = factories[key]()
            say(f"starting {server.label}")
            server.start()
            started[key] = server
    except BaseException:
        stop_servers(started)
        raise
    return started


def stop_servers(servers: Dict[str, Server]) -> None:
    for server in servers.values():
        try:
            server.stop()
        except Exception as e:  # keep stopping the others
            say(f"stopping {server.label}: {e}")


def measure(case: Case, item: Entry, server: Server, loadgen: Any) -> Measurement:
    """One run of ``case`` against ``item``, the CPU of the server's process tree metered."""
    load = Load(**{**asdict(case.load)})
    if item.model:
        load.model = item.model
    if item.rest_format:
        load.rest_format = item.rest_format
    if load.transport == "grpc":
        if not server.grpc_address:
            return Measurement(error="no gRPC")
        url = server.grpc_address
    else:
        url = f"127.0.0.1:{server.http_port}"
    if isinstance(loadgen, dict):
        loadgen = loadgen[load.transport]
    return loadgen.run(load, url, CPUMeter(server.pid))


def run_cases(
    cases: List[Case], servers: Dict[str, Server], loadgen: Any, rounds: int, fallback: Any = None
) -> Dict[str, List[Result]]:
    """Each case in turn, ``rounds`` times, the servers' order reversed every time."""
    results: Dict[str, List[Result]] = {c.key: [Result(e) for e in c.entries] for c in cases}
    flip = False
    for case in cases:
        for r in range(rounds):
            order = list(zip(case.entries, results[case.key]))
            if flip:
                order.reverse()
            flip = not flip
            for item, result in order:
                if item.unavailable:
                    if not result.rounds:
                        result.rounds.append(Measurement(error=f"n/a: {item.unavailable}"))
                    continue
                server = servers[item.server]
                process = getattr(server, "process", None) or getattr(
                    getattr(server, "daemon", None), "process", None
                )
                if process is not None and process.poll() is not None:
                    result.rounds.append(Measurement(error=f"{server.label} exited"))
                    continue
                with RSSSampler(server.pid) as rss:
                    m = measure(case, item, server, loadgen)
                    if not m.ok and fallback is not None and "perf_analyzer" in m.error:
                        # perf_analyzer itself gave out (memory, hang): the same load
                        # from wrk / h2load rather than no number
                        say(f"{case.title} | {item.label}: {m.error}; measuring with wrk/h2load")
                        failed = m.error
                        m = measure(case, item, server, fallback)
                        m.note = f"{failed}: measured with {fallback[case.load.transport].name}"
                result.peak_rss = max(result.peak_rss, rss.peak)
                result.rounds.append(m)
                mark = "" if m.stable else " (unstable)"
                status = f"{m.throughput:.1f}/s{mark}" if m.ok else f"failed: {m.error[:200]}"
                say(f"round {r + 1}/{rounds} {case.title} | {item.label}: {status}")
    return results


# --------------------------------------------------------------------------- the table


def _num(value: Optional[float], digits: int = 1) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _cpu(value: Optional[float]) -> str:
    """CPU seconds per 1,000 requests: three significant digits (whole seconds from 100)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def evaluate(case: Case, results: List[Result]) -> List[Dict[str, Any]]:
    # a server left out with --servers, or that cannot do the case: no target
    by_id = {r.entry.id: r.best for r in results if not r.entry.unavailable}
    label = {r.entry.id: r.entry.label for r in results}
    out = []
    for t in case.targets:
        if t.numerator not in by_id or t.denominator not in by_id:
            continue
        num, den = by_id[t.numerator], by_id[t.denominator]
        ratio = None
        if t.metric == "cpu":
            mine, theirs = num.server_cpu_per_1k, den.server_cpu_per_1k
            if num.ok and den.ok and mine is not None and theirs:
                ratio = mine / theirs
            met = None if t.at_least is None or ratio is None else ratio <= t.at_least
        else:
            if num.ok and den.ok:
                ratio = num.throughput / den.throughput
            met = None if t.at_least is None or ratio is None else ratio >= t.at_least
        out.append(
            {
                "target": t.name,
                "numerator": label.get(t.numerator, t.numerator),
                "denominator": label.get(t.denominator, t.denominator),
                "denominator_id": t.denominator,
                "who": t.who,
                "ratio": ratio,
                "at_least": t.at_least,
                "metric": t.metric,
                "met": met,
            }
        )
    return out


def table(cases: List[Case], results: Dict[str, List[Result]]) -> str:
    headers = [
        "case",
        "server",
        "infer/s",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "CPU s/1k",
        "loadgen CPU s/1k",
        "loadgen cores",
        "ref/this",
        "target",
    ]
    rows: List[List[str]] = []
    for case in cases:
        res = results[case.key]
        reference = res[0].best
        checks = evaluate(case, res)
        for i, result in enumerate(res):
            m = result.best
            if m.ok:
                rate = (
                    _num(m.throughput)
                    + ("~" if not m.stable else "")
                    + ("*" if "measured with" in m.note else "")
                )
                ratio = ""
                if i > 0 and reference.ok:
                    ratio = f"{reference.throughput / m.throughput:.2f}x"
            elif m.error.startswith("n/a"):
                rate, ratio = "n/a", ""
            else:
                rate, ratio = "failed", ""
            notes = [m.error[len("n/a: ") :]] if m.error.startswith("n/a") else []
            for check in checks:
                if check["denominator_id"] != result.entry.id:
                    continue
                if check["ratio"] is None:
                    notes.append("n/a")
                    continue
                text = f"{check['who']} {check['ratio']:.2f}x"
                if check["at_least"] is not None:
                    sign = "<=" if check["metric"] == "cpu" else ">="
                    text += f" ({sign} {check['at_least']:g}x {'met' if check['met'] else 'NOT met'})"
                notes.append(text)
            rows.append(
                [
                    case.title if i == 0 else "",
                    result.entry.label,
                    rate,
                    _num(m.p50_ms, 2) if m.ok else "-",
                    _num(m.p99_ms, 2) if m.ok else "-",
                    f"{result.peak_rss / (1 << 20):,.0f}" if result.peak_rss else "-",
                    _cpu(m.server_cpu_per_1k) if m.ok else "-",
                    _cpu(m.loadgen_cpu_per_1k) if m.ok else "-",
                    f"{m.loadgen_cores:.2f}" if m.ok and m.loadgen_cores is not None else "-",
                    ratio,
                    "; ".join(notes),
                ]
            )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = set(range(2, len(headers) - 1))

    def fmt(row: List[str]) -> str:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        return "| " + " | ".join(cells) + " |"

    lines = [
        fmt(headers),
        "|"
        + "|".join(("-" * (w + 1) + ":" if i in right else "-" * (w + 2)) for i, w in enumerate(widths))
        + "|",
    ]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def summary(cases: List[Case], results: Dict[str, List[Result]]) -> List[Dict[str, Any]]:
    return [
        check
        for case in cases
        for check in evaluate(case, results[case.key])
        if check["at_least"] is not None
    ]


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import v2d

        info["v2d"] = getattr(v2d, "__version__", "?")
    except ImportError:
        pass
    git = ["git", "-C", ROOT]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "v2d"], capture_output=True, text=True)
        info["commit"] = head.stdout.strip() + (
            " + uncommitted changes to v2d/" if dirty.stdout.strip() else ""
        )
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark v2d against MLServer 1.7.1 and KServe 0.21 with perf_analyzer or wrk/h2load.",
        epilog="Cases are tagged small/1mib/64mib/batching, rest/grpc, c1/c16; --only keeps the cases "
        "with every tag given (or the case key, e.g. small-rest-c16).",
    )
    p.add_argument("--quick", action="store_true", help="c16 only, MLServer defaults and in-process only")
    p.add_argument(
        "--only", action="append", default=[], help="keep cases with this tag (repeatable, or a,b)"
    )
    p.add_argument("--servers", help=f"comma-separated subset of: {', '.join(SERVERS)}")
    p.add_argument("--rounds", type=int, help="runs per measurement, best kept [default: 2, --quick 1]")
    p.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    p.add_argument(
        "--loadgen",
        choices=["auto", "perf_analyzer", "wrk"],
        default="auto",
        help="perf_analyzer, or wrk (REST) + h2load (gRPC) for every server, KServe included "
        "[default: perf_analyzer if it runs]",
    )
    p.add_argument("--mlserver-python", help="an interpreter with MLServer 1.7.1 (skips the install)")
    p.add_argument("--kserve-python", help="an interpreter with KServe 0.21.0 (skips the install)")
    p.add_argument(
        "--interval", type=int, help="perf_analyzer measurement window, ms [default: 3000, quick 2000]"
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    only = [t for o in args.only for t in o.split(",") if t]
    servers_wanted = args.servers.split(",") if args.servers else None
    rounds = args.rounds or (1 if args.quick else 2)
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix="v2d-bench-")
    started: Dict[str, Server] = {}
    t0 = time.monotonic()
    try:
        data = write_input_data(os.path.join(work, "data"))
        cases = select(build_cases(data, args.quick), only, servers_wanted)
        if args.list or not cases:
            for case in cases:
                print(f"{case.key:22} {case.title:34} {', '.join(e.label for e in case.entries)}")
            return 0 if cases else 1

        if args.loadgen in ("auto", "perf_analyzer"):
            command = perf_analyzer(install=True)
            if command is None and args.loadgen == "perf_analyzer":
                raise SystemExit("perf_analyzer cannot run here (see .ci/setup-perf-analyzer.sh)")
        else:
            command = None
        if command is not None:
            for case in cases:  # perf_analyzer needs an endpoint KServe has not
                for e in case.entries:
                    if e.server == "kserve" and not e.unavailable:
                        e.unavailable = KSERVE_NEEDS_WRK
            interval = args.interval or (2000 if args.quick else 3000)
            loadgen: Any = PerfAnalyzer(
                command,
                measurement_interval_ms=interval,
                max_trials=4,
                count_window_s=0.75 if args.quick else 1.0,
            )
            settings = loadgen.settings()
            legend = "~ = perf_analyzer found no stable window (mean of its last 3; average latency as p50)"
        else:
            if args.loadgen == "wrk":
                say("wrk (REST) and h2load (gRPC) for every server")
            else:
                say("perf_analyzer cannot run: falling back to wrk (REST) and h2load (gRPC)")
            debian_tools("wrk", "h2load")
            seconds = 5 if args.quick else 10
            loadgen = {"rest": Wrk(seconds), "grpc": H2load(seconds)}
            settings = f"wrk / h2load, {seconds} s per run"
            legend = "~ = h2load (mean latency as p50)"

        keys = [
            k for k in SERVERS if any(e.server == k and not e.unavailable for c in cases for e in c.entries)
        ]
        with_sklearn = any("sklearn" in c.tags for c in cases)
        peer_python = ""
        if with_sklearn or any(k.startswith("mls") for k in keys):
            peer_python = args.mlserver_python or mlserver_python(cache, sys.executable)
        v2d_models = write_repository(os.path.join(work, "v2d-models"), "v2d")
        peer_models = write_repository(os.path.join(work, "mlserver-models"), "mlserver")
        kserve = ""
        if "kserve" in keys:
            kserve = args.kserve_python or kserve_python(cache, sys.executable)
        sklearn = write_sklearn_repositories(work, peer_python, peer_models) if with_sklearn else {}
        info = machine()
        started = start_servers(keys, v2d_models, peer_models, peer_python, sklearn, kserve)
        say(f"{len(cases)} cases, {rounds} round(s); {settings}")
        fallback = None
        if command is not None and shutil.which("wrk") and shutil.which("h2load"):
            seconds = 5 if args.quick else 10
            fallback = {"rest": Wrk(seconds), "grpc": H2load(seconds)}
        results = run_cases(cases, started, loadgen, rounds, fallback)
    finally:
        stop_servers(started)
        shutil.rmtree(work, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    info["minutes"] = round((time.monotonic() - t0) / 60, 1)

    command_line = "python benchmarks/run.py" + (
        "" if argv is None and len(sys.argv) < 2 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    print(f"\n{command_line}")
    print(
        f"v2d {info.get('v2d', '?')} at {info.get('commit', '?')}; "
        f"{info.get('cpu', '?')}, {info['cpus']} CPUs, Python {info['python']}; load average "
        f"{info['loadavg_start'][0]:.1f} at start, {info['loadavg_end'][0]:.1f} at end; {info['minutes']} min"
    )
    if command is not None:
        legend += "; * = perf_analyzer failed, wrk/h2load used"
    print(f"{settings}; best of {rounds} round(s); {legend}")
    print(
        "CPU s/1k: CPU seconds (user + system) of the server's process tree per 1,000 requests over the "
        "measured run; loadgen: the same for the load generator, and its CPU over the run's length "
        "(1.00 = one core busy: the load generator is the limit)\n"
    )
    print(table(cases, results))
    checks = summary(cases, results)
    met = sum(1 for c in checks if c["met"])
    print(f"\ntargets met: {met} of {len(checks)}")
    for c in checks:
        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        print(f"  [{'met' if c['met'] else 'NOT met'}] {c['target']}: {ratio}")

    if args.json:
        doc = {
            "command": command_line,
            "machine": info,
            "settings": settings,
            "rounds": rounds,
            "cases": [
                {
                    "key": case.key,
                    "title": case.title,
                    "load": asdict(case.load),
                    "results": [
                        {
                            "id": r.entry.id,
                            "label": r.entry.label,
                            "best": asdict(r.best),
                            "rounds": [asdict(m) for m in r.rounds],
                            "peak_rss_bytes": r.peak_rss,
                        }
                        for r in results[case.key]
                    ],
                    "targets": evaluate(case, results[case.key]),
                }
                for case in cases
            ],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
