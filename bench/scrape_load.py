"""Scrape load: many concurrent scrapers (wrk) on loopback against the exporter; does the sampler keep its interval?

1. start ``gpuattr exporter --simulate`` on the scale scenario (8 × H100 × 256 processes, written by
   ``bench/make_scenario.py`` if missing) on a free 127.0.0.1 port with a short interval (1 s), wait for
   ``/readyz`` and a warm-up;
2. an idle window (no wrk) as the reference, then for each encoding (plain, then ``Accept-Encoding: gzip``)
   and each concurrency level (1, 16, 64, 256 connections, 2 wrk threads): ``wrk`` on ``/metrics`` for a
   bounded time. A small Lua script's ``done()`` prints one JSON line (requests, bytes, errors, latency
   percentiles in µs), so nothing parses wrk's human text;
3. all along, a side thread scrapes the exporter every ~0.5 s (gzip, its own keep-alive connection) and
   parses the exporter's own series with ``prometheus_client.parser``: samples taken, the gaps between
   successive ``last_sample_timestamp`` values against the interval, ``sample_duration_seconds``; and it
   reads the process's RSS, open fds and threads from ``/proc/<pid>``;
4. per run: CPU of the exporter (``/proc/<pid>/stat``), of wrk (``RUSAGE_CHILDREN``) and of everything else on
   the machine (``/proc/stat`` busy time less those and this script), and the kernel's TcpExt
   ``ListenOverflows`` (handshakes dropped because an accept queue was full; counted for the whole network
   namespace);
5. RSS, fds and threads before the first run and after the last (after a settle pause).

Prints Markdown tables and writes ``bench/out/scrape-load.{json,md}``; the exporter's log goes to
``bench/out/scrape-load-exporter.log``. wrk, the exporter (with the simulated NVML inside it) and this
script share the machine's CPUs. Needs ``wrk`` on PATH (Debian: ``apt-get install wrk``).

    .venv/bin/python bench/scrape_load.py        # what `make bench-scrape-load` runs; about 4 minutes
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_exporter import (
    CLK_TCK,
    DEFAULT_SCENARIO,
    HOST,
    OUT,
    ROOT,
    cpu_seconds,
    free_port,
    gpuattr_command,
    memory_mib,
    percentile,
    running,
    wait_serving,
)
from make_scenario import write as write_scenario
from prometheus_client.parser import text_string_to_metric_families

from common import catalog

JSON_MARKER = "WRK_JSON "
GAP_FACTOR = 1.5  # the interval "holds" when no gap between successive samples exceeds this × the interval
SIDE_SOURCE = "127.0.0.9"  # the side scraper's own address (wrk connects from 127.0.0.1)

# wrk runs done() once, after every thread has finished, with the merged statistics (latency in µs)
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  local function n(x) return string.format("%.0f", x) end
  io.write("MARKER", '{"requests":', n(summary.requests), ',"duration_us":', n(summary.duration),
    ',"bytes":', n(summary.bytes),
    ',"errors":{"connect":', n(e.connect), ',"read":', n(e.read), ',"write":', n(e.write),
    ',"status":', n(e.status), ',"timeout":', n(e.timeout), '}',
    ',"non_2xx":', n(e.status),
    ',"latency_us":{"min":', n(latency.min), ',"mean":', n(latency.mean),
    ',"p50":', n(latency:percentile(50)), ',"p90":', n(latency:percentile(90)),
    ',"p99":', n(latency:percentile(99)), ',"p99_9":', n(latency:percentile(99.9)),
    ',"max":', n(latency.max), '}}\n')
end
""".replace("MARKER", JSON_MARKER)

# the exporter's own series the side thread reads (names from the catalog)
WATCHED = (
    catalog.EXPORTER_SAMPLES,
    catalog.EXPORTER_LAST_SAMPLE,
    catalog.EXPORTER_SAMPLE_DURATION,
    catalog.EXPORTER_SAMPLE_CPU,
)


# -- the exporter process ---------------------------------------------------------------------------------
@dataclass
class ProcState:
    rss_mib: float
    hwm_mib: float
    fds: int
    threads: int


def proc_state(pid: int) -> ProcState:
    """RSS and peak RSS (MiB), open file descriptors and threads of a process, from /proc."""
    mem = memory_mib(pid)
    threads = 0
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
    return ProcState(mem["VmRSS"], mem["VmHWM"], len(os.listdir(f"/proc/{pid}/fd")), threads)


def listen_overflows() -> int:
    """TcpExt ListenOverflows of this network namespace: handshakes dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text(encoding="ascii").splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:], strict=True)).get("ListenOverflows", 0))
    return 0


# -- the side thread: the exporter's own view of its sampling ---------------------------------------------
@dataclass
class Poll:
    t: float  # time.monotonic() when the answer was read, s
    latency_s: float
    ok: bool
    samples_total: float = float("nan")
    last_sample_ts: float = float("nan")  # unix seconds of the served snapshot
    age_s: float = float("nan")  # how old the served snapshot was when it was read (wall clock)
    sample_duration_s: float = float("nan")
    sample_cpu_total_s: float = float("nan")  # the sampler thread's CPU, all samples so far
    rss_mib: float = float("nan")
    fds: int = 0
    threads: int = 0
    error: str = ""


def own_series(body: bytes) -> dict[str, float]:
    """The watched series of a text exposition, parsed with prometheus_client (other lines skipped first)."""
    names = {m.name for m in WATCHED} | {m.family for m in WATCHED}
    kept = []
    for line in body.decode("utf-8").splitlines():
        if line.startswith("#"):
            parts = line.split(maxsplit=3)
            name = parts[2] if len(parts) > 2 else ""
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            kept.append(line)
    values: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(kept) + "\n"):
        for sample in family.samples:
            values[sample.name] = float(sample.value)
    return values


class Poller(threading.Thread):
    """Scrapes /metrics (gzip) every ``period_s`` on its own keep-alive connection and keeps every answer."""

    def __init__(self, port: int, pid: int, period_s: float) -> None:
        super().__init__(name="scrape-load-poller", daemon=True)
        self.port, self.pid, self.period_s = port, pid, period_s
        self.polls: list[Poll] = []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)

    def window(self, start: float, end: float, wait_s: float) -> list[Poll]:
        """The polls from ``start`` to ``end``, then on to the first that shows a sample newer than ``end``'s.

        A sample that overruns the window is then counted: its gap shows only once its successor is served.
        """
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                inside = [p for p in self.polls if start <= p.t <= end and p.ok]
                after = [p for p in self.polls if p.t > end and p.ok]
                last = inside[-1].samples_total if inside else float("nan")
                newer = [p for p in after if p.samples_total > last]
                if newer or time.monotonic() > deadline or not self.is_alive():
                    stop_at = newer[0].t if newer else end
                    return [p for p in self.polls if start <= p.t <= stop_at]
            time.sleep(self.period_s / 2)

    def poll_once(self, conn: http.client.HTTPConnection) -> Poll:
        t0 = time.monotonic()
        try:
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            if resp.getheader("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            values = own_series(body)
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
            conn.close()  # http.client reconnects on the next request
            now = time.monotonic()
            return Poll(now, now - t0, ok=False, error=f"{type(exc).__name__}: {exc}")
        now, wall = time.monotonic(), time.time()
        state = proc_state(self.pid)
        last_ts = values.get(catalog.EXPORTER_LAST_SAMPLE.name, float("nan"))
        return Poll(
            now,
            now - t0,
            ok=True,
            samples_total=values.get(catalog.EXPORTER_SAMPLES.name, float("nan")),
            last_sample_ts=last_ts,
            age_s=wall - last_ts,
            sample_duration_s=values.get(catalog.EXPORTER_SAMPLE_DURATION.name, float("nan")),
            sample_cpu_total_s=values.get(catalog.EXPORTER_SAMPLE_CPU.name, float("nan")),
            rss_mib=state.rss_mib,
            fds=state.fds,
            threads=state.threads,
        )

    def run(self) -> None:
        # From its own loopback address, as Prometheus would scrape from its own: the exporter's limits per
        # client address refuse wrk (on 127.0.0.1) and would otherwise refuse this scraper with it.
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30, source_address=(SIDE_SOURCE, 0))
        try:
            while not self._stop_event.is_set():
                started = time.monotonic()
                poll = self.poll_once(conn)
                with self._lock:
                    self.polls.append(poll)
                self._stop_event.wait(max(0.0, self.period_s - (time.monotonic() - started)))
        finally:
            conn.close()


# -- one measured window ----------------------------------------------------------------------------------
@dataclass
class Sampling:
    """What the exporter's own series say about its sampler over one window."""

    window_s: float = 0.0
    samples_taken: int = 0
    samples_expected: float = 0.0  # window ÷ interval
    gaps_s: list[float] = field(default_factory=list)  # between successive samples, seen one by one
    gaps_unseen: int = 0  # samples whose neighbours the poller did not see separately
    max_gap_s: float = float("nan")
    p99_gap_s: float = float("nan")
    max_sample_duration_s: float = float("nan")  # the largest sample_duration_seconds served
    cpu_per_sample_s: float = float("nan")  # the sampler thread's CPU per sample (its own accounting)
    max_age_s: float = float("nan")  # the oldest snapshot a side scrape was served (wall clock)
    polls: int = 0
    poll_errors: int = 0
    poll_p50_ms: float = float("nan")
    poll_max_ms: float = float("nan")
    max_fds: int = 0
    max_threads: int = 0
    max_rss_mib: float = float("nan")
    holds: bool = False


def sampling(polls: list[Poll], interval_s: float) -> Sampling:
    """Samples taken, gaps and durations from the polls of one window (including one poll either side)."""
    out = Sampling(polls=len(polls), poll_errors=sum(not p.ok for p in polls))
    good = [p for p in polls if p.ok]
    if len(good) < 2:
        return out
    out.window_s = good[-1].t - good[0].t
    out.samples_taken = round(good[-1].samples_total - good[0].samples_total)
    out.samples_expected = out.window_s / interval_s
    if out.samples_taken:
        out.cpu_per_sample_s = (good[-1].sample_cpu_total_s - good[0].sample_cpu_total_s) / out.samples_taken
    seen: list[tuple[float, float]] = []  # distinct (samples_total, last_sample_ts)
    for p in good:
        if not seen or p.samples_total != seen[-1][0]:
            seen.append((p.samples_total, p.last_sample_ts))
    for (n0, ts0), (n1, ts1) in itertools.pairwise(seen):
        if n1 - n0 == 1:
            out.gaps_s.append(ts1 - ts0)
        else:  # the poller missed one or more samples in between: only their mean gap is known
            out.gaps_unseen += round(n1 - n0)
            out.gaps_s.append((ts1 - ts0) / (n1 - n0))
    gaps = sorted(out.gaps_s)
    if gaps:
        out.max_gap_s, out.p99_gap_s = gaps[-1], percentile(gaps, 99)
    out.max_sample_duration_s = max(p.sample_duration_s for p in good)
    out.max_age_s = max(p.age_s for p in good)
    latencies = sorted(p.latency_s * 1000 for p in polls)
    out.poll_p50_ms, out.poll_max_ms = percentile(latencies, 50), latencies[-1]
    out.max_fds, out.max_threads = max(p.fds for p in good), max(p.threads for p in good)
    out.max_rss_mib = max(p.rss_mib for p in good)
    out.holds = (
        bool(gaps)
        and out.max_gap_s <= GAP_FACTOR * interval_s
        and out.samples_taken >= int(out.samples_expected) - 1
        and out.poll_errors == 0
    )
    return out


@dataclass
class Run:
    encoding: str  # "identity", "gzip", or "idle" (no wrk)
    connections: int
    threads: int
    duration_s: float
    wrk: dict[str, Any] = field(default_factory=dict)  # the Lua done() JSON
    req_per_s: float = 0.0
    mib_per_s: float = 0.0
    bytes_per_response: float = 0.0
    errors: int = 0  # connect + read + write + timeout
    non_2xx: int = 0  # wrk's status errors (status >= 400)
    exporter_cpu_pct: float = 0.0  # of one core, over the window
    wrk_cpu_pct: float = 0.0  # of one core
    others_cpu_pct: float = 0.0  # of one core: the machine's busy time less the exporter, wrk and this script
    listen_overflows: int = 0  # TcpExt ListenOverflows over the run (any listener in this network namespace)
    sampling: Sampling = field(default_factory=Sampling)


def run_wrk(
    url: str, lua: Path, *, connections: int, threads: int, duration_s: float, timeout_s: float, use_gzip: bool
) -> dict[str, Any]:
    encoding = "gzip" if use_gzip else "identity"
    command = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s", "-s", str(lua), "-H", f"Accept-Encoding: {encoding}", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration_s + timeout_s + 60)
    for line in done.stdout.splitlines():
        if line.startswith(JSON_MARKER):
            result: dict[str, Any] = json.loads(line[len(JSON_MARKER) :])
            return result
    raise RuntimeError(
        f"{' '.join(command)} exited {done.returncode} without its JSON line:\n{done.stdout}{done.stderr}"
    )


def busy_cpu_s() -> float:
    """CPU seconds all of this machine's cores spent busy since boot (/proc/stat; idle and iowait excluded)."""
    fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this script: the side thread's scrapes and parsing
    return usage.ru_utime + usage.ru_stime


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children only: wrk, not the exporter
    return usage.ru_utime + usage.ru_stime


@dataclass
class Setup:
    """What every measured window shares."""

    poller: Poller
    pid: int  # the exporter's
    interval_s: float  # the exporter's sampling interval
    url: str
    lua: Path  # the wrk script
    timeout_s: float  # wrk --timeout
    settle_s: float  # pause after each window


def measure(setup: Setup, run: Run) -> Run:
    poller, pid = setup.poller, setup.pid
    label = "idle" if run.encoding == "idle" else f"{run.encoding} c={run.connections}"
    print(f"[{label}] {run.duration_s:g} s", flush=True)
    start, cpu0, wrk0, over0 = time.monotonic(), cpu_seconds(pid), children_cpu_s(), listen_overflows()
    busy0, self0 = busy_cpu_s(), self_cpu_s()
    if run.encoding == "idle":
        time.sleep(run.duration_s)
    else:
        run.wrk = run_wrk(
            setup.url,
            setup.lua,
            connections=run.connections,
            threads=run.threads,
            duration_s=run.duration_s,
            timeout_s=setup.timeout_s,
            use_gzip=run.encoding == "gzip",
        )
    end, cpu1, wrk1 = time.monotonic(), cpu_seconds(pid), children_cpu_s()
    run.listen_overflows = listen_overflows() - over0
    others = (busy_cpu_s() - busy0) - (cpu1 - cpu0) - (wrk1 - wrk0) - (self_cpu_s() - self0)
    run.others_cpu_pct = max(0.0, 100 * others / (end - start))
    run.exporter_cpu_pct = 100 * (cpu1 - cpu0) / (end - start)
    run.wrk_cpu_pct = 100 * (wrk1 - wrk0) / (end - start)
    polls = poller.window(start - poller.period_s * 1.5, end, wait_s=10 * setup.interval_s + 10)
    run.sampling = sampling(polls, setup.interval_s)
    if run.wrk:
        w = run.wrk
        seconds = w["duration_us"] / 1e6
        run.req_per_s = w["requests"] / seconds if seconds else 0.0
        run.mib_per_s = w["bytes"] / seconds / 2**20 if seconds else 0.0
        run.bytes_per_response = w["bytes"] / w["requests"] if w["requests"] else 0.0
        e = w["errors"]
        run.errors = int(e["connect"] + e["read"] + e["write"] + e["timeout"])
        run.non_2xx = int(w["non_2xx"])
        lat = w["latency_us"]
        print(
            f"[{label}] {run.req_per_s:,.0f} req/s, p50 {lat['p50'] / 1000:.2f} ms, p99 {lat['p99'] / 1000:.2f} ms, "
            f"max {lat['max'] / 1000:.1f} ms, errors {run.errors}, non-2xx {run.non_2xx}; "
            f"samples {run.sampling.samples_taken}/{run.sampling.samples_expected:.1f}, "
            f"max gap {run.sampling.max_gap_s:.2f} s",
            flush=True,
        )
    time.sleep(setup.settle_s)  # let the connections close before the next run
    return run


# -- report -----------------------------------------------------------------------------------------------
def _ms(us: float) -> str:
    return f"{us / 1000:,.2f}"


def tables(runs: list[Run], interval_s: float) -> str:
    http_rows = [
        "| encoding | conns | req/s | MiB/s | KiB/resp | p50 ms | p99 ms | p99.9 ms | max ms | errors | non-2xx |"
        " CPU % exporter / wrk / others | listen overflows (netns) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sampler_rows = [
        f"| window | samples taken / expected ({interval_s:g} s) | max gap s | p99 gap s | gaps not seen singly |"
        " max sample duration s | sampler CPU s / sample | max snapshot age s | side scrape p50 / max ms |"
        " side errors | CPU % others | interval holds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        s = r.sampling
        name = "idle (no wrk)" if r.encoding == "idle" else f"{r.encoding}, {r.connections} conns"
        sampler_rows.append(
            f"| {name} | {s.samples_taken} / {s.samples_expected:.1f} | {s.max_gap_s:.3f} | {s.p99_gap_s:.3f} | "
            f"{s.gaps_unseen} | {s.max_sample_duration_s:.3f} | {s.cpu_per_sample_s:.3f} | {s.max_age_s:.2f} | "
            f"{s.poll_p50_ms:.1f} / {s.poll_max_ms:.1f} | {s.poll_errors} | {r.others_cpu_pct:.0f} | "
            f"{'yes' if s.holds else 'NO'} |"
        )
        if r.encoding == "idle":
            continue
        lat = r.wrk["latency_us"]
        cpu = f"{r.exporter_cpu_pct:.0f} / {r.wrk_cpu_pct:.0f} / {r.others_cpu_pct:.0f}"
        http_rows.append(
            f"| {r.encoding} | {r.connections} | {r.req_per_s:,.0f} | {r.mib_per_s:,.1f} | "
            f"{r.bytes_per_response / 1024:,.1f} | {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['p99_9'])} | "
            f"{_ms(lat['max'])} | {r.errors} | {r.non_2xx} | {cpu} | {r.listen_overflows} |"
        )
    return "\n".join(http_rows) + "\n\n" + "\n".join(sampler_rows)


def state_table(before: ProcState, after: ProcState, runs: list[Run]) -> str:
    peak_fds = max((r.sampling.max_fds for r in runs), default=0)
    peak_threads = max((r.sampling.max_threads for r in runs), default=0)
    return "\n".join(
        [
            "| exporter process | before the runs | peak during | after the runs |",
            "|---|---:|---:|---:|",
            f"| RSS (MiB) | {before.rss_mib:.1f} | {after.hwm_mib:.1f} (VmHWM) | {after.rss_mib:.1f} |",
            f"| open fds | {before.fds} | {peak_fds} | {after.fds} |",
            f"| threads | {before.threads} | {peak_threads} | {after.threads} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="written if missing (8 × 256)")
    parser.add_argument("--interval", type=float, default=1.0, help="the exporter's sampling interval, s")
    parser.add_argument("--sim-start", type=float, default=60.0, help="scenario second to start at")
    parser.add_argument("--connections", default="1,16,64,256", help="comma-separated wrk concurrency levels")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (at most the connections)")
    parser.add_argument("--duration-s", type=float, default=20.0, help="each wrk run, s")
    parser.add_argument("--encodings", default="identity,gzip", help="Accept-Encoding values to run, in order")
    parser.add_argument("--wrk-timeout-s", type=float, default=10.0, help="wrk counts slower answers as timeouts")
    parser.add_argument("--idle-s", type=float, default=10.0, help="reference window with no wrk, s (0: none)")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="wait after /readyz, s")
    parser.add_argument("--settle-s", type=float, default=2.0, help="pause between runs, s")
    parser.add_argument("--poll-s", type=float, default=0.5, help="side-thread scrape period, s")
    parser.add_argument("--output", type=Path, default=OUT / "scrape-load.json", help="raw JSON results")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not on PATH; install it first, e.g. `apt-get install wrk` (Debian/Ubuntu)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.connections.split(",") if c.strip()]
    encodings = [e.strip() for e in args.encodings.split(",") if e.strip()]
    if any(c < 1 for c in levels) or not set(encodings) <= {"identity", "gzip"}:
        parser.error("--connections must be positive integers; --encodings one or both of identity,gzip")

    OUT.mkdir(parents=True, exist_ok=True)
    if not args.scenario.exists():
        write_scenario(args.scenario, 8, 256)
    from simulator.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    gpus, procs = len(scenario.gpus), len(scenario.processes)
    del scenario

    port = free_port()
    command = [
        *gpuattr_command(), "exporter", "--simulate", str(args.scenario), "--listen", f"{HOST}:{port}",
        "--interval", str(args.interval), "--sim-start", str(args.sim_start), "--log-level", "warning",
    ]  # fmt: skip
    url = f"http://{HOST}:{port}/metrics"
    started = time.perf_counter()
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="scrape-load-") as tmp,
        running(command, OUT / "scrape-load-exporter.log") as proc,
    ):
        lua = Path(tmp) / "json_done.lua"
        lua.write_text(WRK_LUA, encoding="utf-8")
        print(f"exporter on {HOST}:{port}, interval {args.interval:g} s", flush=True)
        startup_s = wait_serving(proc, port, "/readyz", timeout_s=120)
        print(f"ready after {startup_s:.1f} s; warming up {args.warmup_s:g} s", flush=True)
        time.sleep(args.warmup_s)
        poller = Poller(port, proc.pid, args.poll_s)
        poller.start()
        time.sleep(args.poll_s * 2)
        before = proc_state(proc.pid)
        setup = Setup(poller, proc.pid, args.interval, url, lua, args.wrk_timeout_s, args.settle_s)
        try:
            if args.idle_s > 0:
                runs.append(measure(setup, Run("idle", 0, 0, args.idle_s)))
            for encoding in encodings:
                for conns in levels:
                    run = Run(encoding, conns, min(args.threads, conns), args.duration_s)
                    runs.append(measure(setup, run))
            time.sleep(max(0.0, 3.0 - args.settle_s))
            after = proc_state(proc.pid)
        finally:
            poller.stop()
        if proc.poll() is not None:
            raise RuntimeError(f"the exporter exited with {proc.returncode} during the runs")
    elapsed = time.perf_counter() - started

    loaded = [r for r in runs if r.encoding != "idle"]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, no GPU"
    header = (
        f"Scenario `{args.scenario.relative_to(ROOT) if args.scenario.is_absolute() else args.scenario}`: {gpus} GPUs, "
        f"{procs} processes; interval {args.interval:g} s; wrk {args.threads} threads, {args.duration_s:g} s per run, "
        f"timeout {args.wrk_timeout_s:g} s; {machine} shared by the exporter (simulated NVML inside), wrk and this "
        f"script; run took {elapsed:.0f} s. Interval holds: every gap ≤ {GAP_FACTOR:g} × interval, samples taken ≥ "
        f"expected − 1, no failed side scrape."
    )
    total_errors = sum(r.errors + r.non_2xx for r in loaded)
    verdict = (
        f"HTTP errors + non-2xx over all runs: {total_errors}; sampler interval held in "
        f"{sum(r.sampling.holds for r in runs)} of {len(runs)} windows."
    )
    markdown = "\n\n".join([header, tables(runs, args.interval), state_table(before, after, runs), verdict]) + "\n"
    print()
    print(markdown)
    raw = {
        "scenario": str(args.scenario),
        "gpus": gpus,
        "processes": procs,
        "command": command,
        "interval_s": args.interval,
        "machine": machine,
        "elapsed_s": elapsed,
        "startup_s": startup_s,
        "gap_factor": GAP_FACTOR,
        "before": asdict(before),
        "after": asdict(after),
        "runs": [asdict(r) for r in runs],
        "polls": [asdict(p) for p in poller.polls],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
