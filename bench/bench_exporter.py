"""Benchmark the exporter at scale, side by side with nvitop-exporter, on the same simulated NVML.

For each exporter (a subprocess serving on 127.0.0.1 only):

1. start it on the scale scenario (``bench/make_scenario.py``; written if missing) and wait until it serves;
2. let it take a few samples (warm-up);
3. idle window (no scrapes, >= 60 s): process CPU (utime+stime from /proc/<pid>/stat) and samples taken
   (ours: its own ``samples_total`` and ``sample_cpu_seconds_total``; nvitop-exporter: the fake NVML's
   call counts, reported by ``bench/run_nvitop_exporter.py`` on SIGUSR1);
4. RSS (VmRSS, VmHWM from /proc/<pid>/status);
5. sequential scrapes over one keep-alive connection (http.client), plain text then
   ``Accept-Encoding: gzip``: p50/p99/max latency and body size (each bounded by --scrape-budget-s);
   ours runs with its request-rate guards raised out of the way (``RATE_GUARDS_RAISED``), since back-to-back
   scrapes from one client are exactly what they pace (100/s in all, 10/s per client address): the run
   measures the server, and ``--guarded`` keeps the defaults to see the guards instead
   (bench/hostile_clients.py records what the guards do for polite scrapers beside hostile clients);
6. RSS again, then the process is stopped (SIGTERM, then SIGKILL).

Prints a Markdown table and writes ``bench/out/bench-results.{json,md}``. The fake NVML runs inside
each exporter's process, so its CPU cost is included for both.

    .venv/bin/python bench/bench_exporter.py          # what `make bench` runs; about 5-6 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import catalog

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
DEFAULT_SCENARIO = OUT / "scale-8x256.yaml"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")  # clock ticks per second of /proc/<pid>/stat times

# Targets from the issue
TARGET_P99_MS = 5.0
TARGET_CPU_PCT = 2.0  # % of one core at a 5 s interval
TARGET_RSS_MIB = 80.0

# Our exporter's flags for the scrape measurement: no pacing, so the latencies are the server's own.
RATE_GUARDS_RAISED = ["--max-request-rate", "1000000", "--max-client-request-rate", "1000000"]


# -- /proc ------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is the state
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- HTTP -------------------------------------------------------------------------------------------------
def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scalar(body: bytes, name: str) -> float | None:
    """The value of an unlabelled series in a text exposition."""
    prefix = name.encode() + b" "
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line.split()[1])
    return None


def series_count(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class ScrapeStats:
    encoding: str  # "identity" or "gzip"
    scrapes: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    body_bytes: int = 0  # as sent on the wire
    series: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the exporter's process CPU over the run (sampler included)
    stopped_by_budget: bool = False


def scrape_run(port: int, pid: int, *, count: int, budget_s: float, use_gzip: bool) -> ScrapeStats:
    """``count`` sequential GETs of /metrics over one keep-alive connection (reconnects if closed)."""
    headers = {"Accept-Encoding": "gzip"} if use_gzip else {"Accept-Encoding": "identity"}
    stats = ScrapeStats("gzip" if use_gzip else "identity")
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    latencies: list[float] = []
    body = b""
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"GET /metrics on port {port} answered {resp.status}")
            if use_gzip and resp.getheader("Content-Encoding") != "gzip":
                raise RuntimeError(f"port {port} ignored Accept-Encoding: gzip")
            if time.perf_counter() - start > budget_s:
                stats.stopped_by_budget = len(latencies) < count
                break
    finally:
        conn.close()
    stats.wall_s = time.perf_counter() - start
    stats.cpu_s = cpu_seconds(pid) - cpu0
    latencies.sort()
    stats.scrapes = len(latencies)
    stats.p50_ms, stats.p99_ms = percentile(latencies, 50), percentile(latencies, 99)
    stats.max_ms, stats.mean_ms = latencies[-1], statistics.fmean(latencies)
    stats.body_bytes = len(body)
    stats.series = series_count(gzip.decompress(body) if use_gzip else body)
    return stats


# -- the exporters under test -----------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    command: list[str]
    startup_s: float = 0.0  # process start to first successful /metrics (or /readyz)
    idle_window_s: float = 0.0
    idle_cpu_s: float = 0.0  # process CPU (all threads) over the idle window
    idle_cpu_pct: float = 0.0  # of one core
    samples: float = 0.0  # samples taken in the idle window
    process_cpu_per_sample_s: float = 0.0
    sampler_cpu_per_sample_s: float | None = None  # the exporter's own accounting (ours only)
    sample_duration_s: float | None = None
    rss_mib_after_warmup: float = 0.0
    hwm_mib_after_warmup: float = 0.0
    rss_mib_after_scrapes: float = 0.0
    hwm_mib_after_scrapes: float = 0.0
    scrapes: list[ScrapeStats] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def running(command: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = log_path.open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


_SIM_BASELINE = """
import json, sys
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

import pynvml
before = rss()
from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.scenario import load_scenario
fake_nvml.install(load_scenario(sys.argv[1]), SimClock())
print(json.dumps({"python_and_pynvml_mib": before, "with_simulation_mib": rss()}))
"""


def simulation_baseline(scenario: Path) -> dict[str, float]:
    """RSS of a process that only loads the scenario and installs the fake NVML (no exporter), MiB."""
    done = subprocess.run(
        [sys.executable, "-c", _SIM_BASELINE, str(scenario)], cwd=ROOT, capture_output=True, check=True, text=True
    )
    values = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: float(v) for k, v in values.items()}


def gpuattr_command() -> list[str]:
    """``python -m gpuattr`` run from this checkout (the benchmarks start it with the checkout as its working
    directory), so a bench measures the code beside it, not whatever the virtualenv's ``gpuattr`` script
    was installed from."""
    return [sys.executable, "-m", "gpuattr"]


def wait_serving(proc: subprocess.Popen[bytes], port: int, path: str, timeout_s: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before serving")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = http_get(port, path, timeout_s=30)
            if status == 200:
                return time.perf_counter() - start
        time.sleep(0.2)
    raise RuntimeError(f"{proc.args!r} did not serve {path} on port {port} within {timeout_s:.0f}s")


def nvitop_calls(proc: subprocess.Popen[bytes], report: Path) -> dict[str, int]:
    """Ask the nvitop bootstrap for the fake NVML's call counts (it rewrites ``report`` on SIGUSR1)."""
    before = report.stat().st_mtime_ns if report.exists() else 0
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if report.exists() and report.stat().st_mtime_ns != before:
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads(report.read_text(encoding="utf-8"))["fake_calls"])
        time.sleep(0.05)
    raise RuntimeError(f"nvitop bootstrap did not write {report} after SIGUSR1")


def measure(name: str, args: argparse.Namespace, scenario: Path, gpus: int) -> Result:
    port = free_port()
    py = sys.executable
    report = OUT / "nvitop-nvml-calls.json"
    if name == "gpuattr":
        command = [
            *gpuattr_command(), "exporter", "--simulate", str(scenario), "--listen", f"{HOST}:{port}",
            "--interval", str(args.interval), "--sim-start", str(args.sim_start), "--log-level", "warning",
        ]  # fmt: skip
        if not args.guarded:
            command += RATE_GUARDS_RAISED
        ready_path = "/readyz"
    else:
        report.unlink(missing_ok=True)
        command = [
            py, str(ROOT / "bench" / "run_nvitop_exporter.py"), "--scenario", str(scenario),
            "--sim-start", str(args.sim_start), "--report", str(report), "--",
            "--bind-address", HOST, "--port", str(port), "--interval", str(args.interval),
        ]  # fmt: skip
        ready_path = "/metrics"
    result = Result(name, command)
    print(f"[{name}] starting on {HOST}:{port}", flush=True)
    with running(command, OUT / f"{name}.log") as proc:
        result.startup_s = wait_serving(proc, port, ready_path, timeout_s=120)
        print(f"[{name}] serving after {result.startup_s:.1f}s; warming up {args.warmup_s:.0f}s", flush=True)
        time.sleep(args.warmup_s)

        # idle window: nothing but the exporter's own sampling
        print(f"[{name}] idle window {args.idle_s:.0f}s (no scrapes)", flush=True)
        if name == "gpuattr":
            _, body0 = http_get(port, "/metrics", timeout_s=30)
        else:
            calls0 = nvitop_calls(proc, report)
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(args.idle_s)
        cpu1, t1 = cpu_seconds(proc.pid), time.perf_counter()
        if name == "gpuattr":
            _, body1 = http_get(port, "/metrics", timeout_s=30)
            samples = (scalar(body1, catalog.EXPORTER_SAMPLES.name) or 0) - (
                scalar(body0, catalog.EXPORTER_SAMPLES.name) or 0
            )
            sampler_cpu = (scalar(body1, catalog.EXPORTER_SAMPLE_CPU.name) or 0) - (
                scalar(body0, catalog.EXPORTER_SAMPLE_CPU.name) or 0
            )
            result.sampler_cpu_per_sample_s = sampler_cpu / samples if samples else None
            result.sample_duration_s = scalar(body1, catalog.EXPORTER_SAMPLE_DURATION.name)
        else:
            calls1 = nvitop_calls(proc, report)
            # nvitop reads every GPU's utilisation rates once per update of the device
            key = "nvmlDeviceGetUtilizationRates"
            samples = (calls1.get(key, 0) - calls0.get(key, 0)) / gpus
        result.idle_window_s = t1 - t0
        result.idle_cpu_s = cpu1 - cpu0
        result.idle_cpu_pct = 100 * result.idle_cpu_s / result.idle_window_s
        result.samples = samples
        result.process_cpu_per_sample_s = result.idle_cpu_s / samples if samples else float("nan")
        mem = memory_mib(proc.pid)
        result.rss_mib_after_warmup, result.hwm_mib_after_warmup = mem["VmRSS"], mem["VmHWM"]
        print(
            f"[{name}] idle: {result.idle_cpu_pct:.2f}% of a core, {samples:.0f} samples, RSS {mem['VmRSS']:.0f} MiB",
            flush=True,
        )

        for use_gzip in (False, True):
            stats = scrape_run(port, proc.pid, count=args.scrapes, budget_s=args.scrape_budget_s, use_gzip=use_gzip)
            result.scrapes.append(stats)
            print(
                f"[{name}] {stats.scrapes} scrapes ({stats.encoding}): p50 {stats.p50_ms:.2f} ms, "
                f"p99 {stats.p99_ms:.2f} ms, max {stats.max_ms:.2f} ms, {stats.body_bytes} bytes, "
                f"{stats.series} series",
                flush=True,
            )
        mem = memory_mib(proc.pid)
        result.rss_mib_after_scrapes, result.hwm_mib_after_scrapes = mem["VmRSS"], mem["VmHWM"]
    if name == "nvitop-exporter" and report.exists():
        result.notes["nvml"] = json.loads(report.read_text(encoding="utf-8"))
    return result


# -- report -----------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or theirs is None or math.isnan(ours) or math.isnan(theirs):
        return "n/a"
    return f"{theirs / ours:,.1f}×"


def _scrape(r: Result | None, encoding: str, attr: str, scale: float = 1.0) -> float | None:
    for s in r.scrapes if r is not None else ():
        if s.encoding == encoding:
            return float(getattr(s, attr)) * scale
    return None


def _less(value: float | None, minus: float) -> float | None:
    return None if value is None else value - minus


def _get(r: Result | None, attr: str) -> float | None:
    return None if r is None else getattr(r, attr)


def table(results: dict[str, Result], interval_s: float, baseline: dict[str, float]) -> str:
    """Markdown: one row per measure, gpuattr vs nvitop-exporter, their ratio, gpuattr's target."""
    ours, theirs = results.get("gpuattr"), results.get("nvitop-exporter")
    # what loading the scenario and the fake NVML adds to a bare Python + pynvml process
    sim_only = baseline["with_simulation_mib"] - baseline["python_and_pynvml_mib"]
    # (measure, ours, theirs, decimals, target limit or None, target text)
    rows: list[tuple[str, float | None, float | None, int, float | None, str]] = []
    for enc, label in (("identity", "plain"), ("gzip", "gzip")):
        for attr, what, limit in (("p50_ms", "p50", None), ("p99_ms", "p99", TARGET_P99_MS), ("max_ms", "max", None)):
            rows.append((f"scrape {what}, {label} (ms)", _scrape(ours, enc, attr), _scrape(theirs, enc, attr), 2,
                         limit, "ms"))  # fmt: skip
        rows.append((f"body, {label} (KiB)", _scrape(ours, enc, "body_bytes", 1 / 1024),
                     _scrape(theirs, enc, "body_bytes", 1 / 1024), 1, None, ""))  # fmt: skip
        rows.append((f"scrapes done, {label}", _scrape(ours, enc, "scrapes"), _scrape(theirs, enc, "scrapes"), 0,
                     None, ""))  # fmt: skip
    rows += [
        ("series per scrape", _scrape(ours, "identity", "series"), _scrape(theirs, "identity", "series"), 0,
         None, ""),
        ("samples in the idle window", _get(ours, "samples"), _get(theirs, "samples"), 0, None, ""),
        (f"idle process CPU (% of one core, {interval_s:g} s interval)", _get(ours, "idle_cpu_pct"),
         _get(theirs, "idle_cpu_pct"), 2, TARGET_CPU_PCT, "%"),
        ("process CPU per sample (s)", _get(ours, "process_cpu_per_sample_s"),
         _get(theirs, "process_cpu_per_sample_s"), 3, None, ""),
        ("sampler-thread CPU per sample, self-reported (s)", _get(ours, "sampler_cpu_per_sample_s"), None, 3,
         None, ""),
        ("RSS after warm-up (MiB)", _get(ours, "rss_mib_after_warmup"), _get(theirs, "rss_mib_after_warmup"), 1,
         TARGET_RSS_MIB, "MiB"),
        ("RSS after the scrapes (MiB)", _get(ours, "rss_mib_after_scrapes"), _get(theirs, "rss_mib_after_scrapes"),
         1, TARGET_RSS_MIB, "MiB"),
        ("RSS after the scrapes less the simulation's own (MiB)",
         _less(_get(ours, "rss_mib_after_scrapes"), sim_only), _less(_get(theirs, "rss_mib_after_scrapes"), sim_only),
         1, None, ""),
        ("peak RSS, VmHWM (MiB)", _get(ours, "hwm_mib_after_scrapes"), _get(theirs, "hwm_mib_after_scrapes"), 1,
         None, ""),
        ("start to serving (s)", _get(ours, "startup_s"), _get(theirs, "startup_s"), 1, None, ""),
    ]  # fmt: skip
    lines = [
        "| measure | gpuattr | nvitop-exporter | nvitop ÷ gpuattr | target (gpuattr) |",
        "|---|---:|---:|---:|---|",
    ]
    for what, a, b, digits, limit, unit in rows:
        verdict = ""
        if limit is not None and a is not None:
            verdict = f"< {limit:g} {unit} {'met' if a < limit else 'MISSED'}"
        lines.append(f"| {what} | {_fmt(a, digits)} | {_fmt(b, digits)} | {_ratio(a, b)} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="written if missing")
    parser.add_argument("--interval", type=float, default=5.0, help="sampling interval, s (both exporters)")
    parser.add_argument("--sim-start", type=float, default=60.0, help="scenario second to start at")
    parser.add_argument("--scrapes", type=int, default=2000, help="sequential scrapes per encoding")
    parser.add_argument("--scrape-budget-s", type=float, default=40.0, help="stop a scrape run after this")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle (no scrape) CPU window, s")
    parser.add_argument("--warmup-s", type=float, default=12.0, help="wait after the first serve, s")
    parser.add_argument("--only", choices=("gpuattr", "nvitop-exporter"), default=None, help="run one exporter only")
    parser.add_argument(
        "--guarded",
        action="store_true",
        help="keep our exporter's default request-rate guards: the scrapes then measure the pacing, not the server",
    )
    parser.add_argument("--output", type=Path, default=OUT / "bench-results.json", help="raw JSON results")
    args = parser.parse_args(argv)
    if args.idle_s < 60:
        print(f"note: idle window {args.idle_s:.0f}s is shorter than the 60 s the method asks for")

    OUT.mkdir(parents=True, exist_ok=True)
    if not args.scenario.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "make_scenario.py"), "--output", str(args.scenario)],
            cwd=ROOT,
            check=True,
        )
    from simulator.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    gpus, procs = len(scenario.gpus), len(scenario.processes)
    del scenario

    started = time.perf_counter()
    baseline = simulation_baseline(args.scenario)
    print(
        f"simulation alone (scenario + fake NVML, no exporter): {baseline['with_simulation_mib']:.1f} MiB RSS; "
        f"Python + pynvml: {baseline['python_and_pynvml_mib']:.1f} MiB",
        flush=True,
    )
    results: dict[str, Result] = {}
    for name in ("gpuattr", "nvitop-exporter"):
        if args.only in (None, name):
            results[name] = measure(name, args, args.scenario, gpus)
    elapsed = time.perf_counter() - started

    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, no GPU"
    header = (
        f"Scenario `{args.scenario.relative_to(ROOT) if args.scenario.is_absolute() else args.scenario}`: "
        f"{gpus} GPUs, {procs} processes; interval {args.interval:g} s; {machine}; "
        f"simulated NVML in each exporter's process; run took {elapsed:.0f} s; "
        + (
            "gpuattr with its default request-rate guards (--guarded)."
            if args.guarded
            else f"gpuattr with its request-rate guards raised ({' '.join(RATE_GUARDS_RAISED)})."
        )
    )
    markdown = header + "\n\n" + table(results, args.interval, baseline) + "\n"
    print()
    print(markdown)
    raw = {
        "scenario": str(args.scenario),
        "gpus": gpus,
        "processes": procs,
        "interval_s": args.interval,
        "gpuattr_rate_guards": "default" if args.guarded else RATE_GUARDS_RAISED,
        "sim_start_s": args.sim_start,
        "machine": machine,
        "elapsed_s": elapsed,
        "simulation_baseline_rss": baseline,
        "targets": {"p99_ms": TARGET_P99_MS, "cpu_pct": TARGET_CPU_PCT, "rss_mib": TARGET_RSS_MIB},
        "results": {k: asdict(v) for k, v in results.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
