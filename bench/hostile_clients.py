"""Polite scrapers and probes beside hostile clients: does a slow or greedy client cost only itself?

1. start ``gpuattr exporter --simulate`` (a small scenario, 1 s interval, default HTTP limits) on a free
   127.0.0.1 port, from this checkout or from another one (``--source``, to measure an older server the
   same way), and wait for ``/readyz``;
2. for each phase (``--phase-s`` long): 16 polite scrapers, each from its own loopback address
   (127.0.1.x: Linux routes all of 127.0.0.0/8 to the loopback), GET ``/metrics`` twice a second on a new
   connection with a 2 s time-out; a kubelet-like prober GETs ``/healthz`` every second from 127.0.2.1 with
   a 1 s time-out; beside them, in separate processes so that the load generator's own interpreter lock is
   not theirs:

   - ``baseline``: nothing else;
   - ``greedy``: one client address (127.0.0.2) hammering ``/metrics`` on 16 keep-alive connections;
   - ``slow-loris``: 12 connections from 127.0.0.3 sending their headers a byte every 3 s;
   - ``slow-readers``: 50 connections from 127.0.0.4 that ask for ``/metrics`` with a 4 KiB receive buffer
     and read a few hundred bytes a second;

3. per phase: polite scrapes failed (not 200 within the time-out) and their p50/p99 latency, the same for
   the probes, and the samples the exporter took against the interval (``gpuattr_exporter_samples_total``
   read before and after the phase, after the hostile clients have gone);
4. the exporter's refusals by reason at the end.

Prints a Markdown table and writes ``bench/out/hostile-clients.{json,md}``.

    .venv/bin/python bench/hostile_clients.py                  # about 2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_exporter import HOST, OUT, ROOT, free_port, percentile, scalar, wait_serving

from common import catalog

POLITE = 16
POLITE_EVERY_S = 0.5
POLITE_TIMEOUT_S = 2.0
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 1.0


def _get(port: int, path: str, source: str, timeout_s: float) -> tuple[int, float]:
    """(status, ms) of one GET on a new connection from ``source``; status 0 when it failed or timed out."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Accept-Encoding": "gzip"})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        conn.close()
    return status, (time.perf_counter() - t0) * 1000


# -- the hostile clients, each run in its own process until it is terminated --------------------------------
def greedy(port: int) -> None:
    def hammer() -> None:
        while True:
            conn = http.client.HTTPConnection(HOST, port, timeout=5, source_address=("127.0.0.2", 0))
            with contextlib.suppress(OSError, http.client.HTTPException):
                while True:
                    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
                    conn.getresponse().read()
            conn.close()

    for _ in range(16):
        threading.Thread(target=hammer, daemon=True).start()
    threading.Event().wait()


def slow_loris(port: int) -> None:
    def loris() -> None:
        while True:
            with contextlib.suppress(OSError):
                sock = socket.create_connection((HOST, port), timeout=5, source_address=("127.0.0.3", 0))
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")
                while True:
                    time.sleep(3)
                    sock.sendall(b"X")
            time.sleep(0.1)  # dropped: come back

    for _ in range(12):
        threading.Thread(target=loris, daemon=True).start()
    threading.Event().wait()


def slow_readers(port: int) -> None:
    def reader() -> None:
        while True:
            with contextlib.suppress(OSError):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.bind(("127.0.0.4", 0))
                sock.settimeout(30)
                sock.connect((HOST, port))
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                while sock.recv(256):
                    time.sleep(1)
            time.sleep(0.1)

    for _ in range(50):
        threading.Thread(target=reader, daemon=True).start()
    threading.Event().wait()


HOSTILE: dict[str, Callable[[int], None] | None] = {
    "baseline": None,
    "greedy": greedy,
    "slow-loris": slow_loris,
    "slow-readers": slow_readers,
}


# -- measurement ---------------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    scrapes: int = 0
    scrapes_failed: int = 0
    scrape_p50_ms: float = 0.0
    scrape_p99_ms: float = 0.0
    probes: int = 0
    probes_failed: int = 0
    probe_p99_ms: float = 0.0
    samples: float = 0.0
    samples_expected: float = 0.0


def _samples(port: int) -> tuple[float, float]:
    """(samples_total, when) read from /metrics, retried for a while."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, port, timeout=2, source_address=("127.0.3.1", 0))
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            value = scalar(body, catalog.EXPORTER_SAMPLES.name)
            if resp.status == 200 and value is not None:
                return value, time.monotonic()
        conn.close()
        time.sleep(0.5)
    raise RuntimeError(f"could not read {catalog.EXPORTER_SAMPLES.name} from port {port}")


def run_phase(name: str, port: int, seconds: float, interval: float) -> Phase:
    phase = Phase(name)
    samples0, at0 = _samples(port)
    hostile = HOSTILE[name]
    proc = multiprocessing.get_context("fork").Process(target=hostile, args=(port,), daemon=True) if hostile else None
    if proc:
        proc.start()
        time.sleep(2.0)  # the hostile clients have taken what they can
    scrapes: list[tuple[int, float]] = []
    probes: list[tuple[int, float]] = []
    end = time.monotonic() + seconds

    def polite(i: int) -> None:
        next_at = time.monotonic() + i * POLITE_EVERY_S / POLITE  # spread out, as separate servers would be
        while next_at < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            scrapes.append(_get(port, "/metrics", f"127.0.1.{i + 1}", POLITE_TIMEOUT_S))
            next_at += POLITE_EVERY_S

    def prober() -> None:
        next_at = time.monotonic()
        while next_at < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            probes.append(_get(port, "/healthz", "127.0.2.1", PROBE_TIMEOUT_S))
            next_at += PROBE_EVERY_S

    threads = [threading.Thread(target=polite, args=(i,)) for i in range(POLITE)]
    threads.append(threading.Thread(target=prober))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if proc:
        proc.terminate()
        proc.join(5)
    samples1, at1 = _samples(port)
    ok_ms = sorted(ms for status, ms in scrapes if status == 200)
    phase.scrapes, phase.scrapes_failed = len(scrapes), sum(status != 200 for status, _ in scrapes)
    phase.scrape_p50_ms, phase.scrape_p99_ms = percentile(ok_ms, 50), percentile(ok_ms, 99)
    phase.probes, phase.probes_failed = len(probes), sum(status != 200 for status, _ in probes)
    phase.probe_p99_ms = percentile(sorted(ms for status, ms in probes if status == 200), 99)
    phase.samples, phase.samples_expected = samples1 - samples0, (at1 - at0) / interval
    return phase


@contextlib.contextmanager
def exporter(source: Path, port: int, scenario: Path, interval: float) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable, "-m", "gpuattr", "exporter", "--simulate", str(scenario), "--listen", f"{HOST}:{port}",
        "--interval", str(interval), "--log-level", "warning",
    ]  # fmt: skip
    log = (OUT / "hostile-clients-exporter.log").open("wb")
    proc = subprocess.Popen(command, cwd=source, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def rejected(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5, source_address=("127.0.3.1", 0))
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(catalog.EXPORTER_HTTP_REJECTED.name):
            series, _, value = line.rpartition(" ")
            out[series.removeprefix(catalog.EXPORTER_HTTP_REJECTED.name) or "{}"] = float(value)
    return out


def table(phases: list[Phase]) -> str:
    rows = [
        "| beside the polite clients | polite scrapes failed | scrape p50 / p99 ms | probes failed | probe p99 ms "
        "| samples taken / expected |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        rows.append(
            f"| {p.name} | {p.scrapes_failed} of {p.scrapes} ({100 * p.scrapes_failed / max(1, p.scrapes):.1f} %) "
            f"| {p.scrape_p50_ms:.2f} / {p.scrape_p99_ms:.2f} | {p.probes_failed} of {p.probes} "
            f"| {p.probe_p99_ms:.2f} | {p.samples:.0f} / {p.samples_expected:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout whose exporter to run")
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "h100-inference-node.yaml")
    parser.add_argument("--interval", type=float, default=1.0, help="the exporter's sampling interval, s")
    parser.add_argument("--phase-s", type=float, default=20.0, help="how long each phase's polite clients run, s")
    parser.add_argument("--phases", nargs="+", choices=list(HOSTILE), default=list(HOSTILE))
    parser.add_argument("--output", type=Path, default=OUT / "hostile-clients.json")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    port = free_port()
    with exporter(args.source.resolve(), port, args.scenario.resolve(), args.interval) as proc:
        wait_serving(proc, port, "/readyz", timeout_s=60)
        phases = []
        for name in args.phases:
            print(f"phase {name}: {args.phase_s:.0f} s", flush=True)
            phases.append(run_phase(name, port, args.phase_s, args.interval))
            time.sleep(1.0)
        refused = rejected(port)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    header = (
        f"Exporter from `{args.source}` on `{args.scenario.name}`, interval {args.interval:g} s, default HTTP "
        f"limits; {POLITE} polite scrapers at {1 / POLITE_EVERY_S:g}/s each ({POLITE_TIMEOUT_S:g} s time-out), "
        f"a /healthz probe every {PROBE_EVERY_S:g} s ({PROBE_TIMEOUT_S:g} s time-out), {args.phase_s:g} s a "
        f"phase; {machine}; run took {time.perf_counter() - started:.0f} s."
    )
    markdown = f"{header}\n\n{table(phases)}\n\nRefused or dropped, by reason, at the end: {refused}\n"
    print()
    print(markdown)
    raw = {"source": str(args.source), "phases": [asdict(p) for p in phases], "rejected": refused, "machine": machine}
    args.output.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    args.output.with_suffix(".md").write_text(markdown, encoding="utf-8")
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
