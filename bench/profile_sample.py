"""Profile ``Sampler.sample_once`` in-process on a scenario: where the CPU and the memory go.

Builds the exporter exactly as ``gpuattr exporter --simulate`` does (``exporter.app.build``, server
not started), takes a few warm-up samples, then:

- times N samples without a profiler (CPU seconds of this thread per sample), then N more step by step
  (the steps of ``sample_once``; time inside the simulated NVML measured apart);
- runs the same N samples under cProfile and prints the top functions (own time and cumulative), and
  own time summed by part: the simulated NVML (``simulator/``), the ``pynvml`` binding, the exporter's
  reader, attribution and rendering, prometheus-client, the rest;
- prints RSS after each stage (imports, build, first sample, N samples) and, with ``--memory``, the
  largest live allocations by line (tracemalloc).

    .venv/bin/python bench/profile_sample.py [--scenario bench/out/scale-8x256.yaml] [--samples 10] [--memory]
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import itertools
import pstats
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCENARIO = ROOT / "bench" / "out" / "scale-8x256.yaml"

# (part, path fragment) in match order; own time of a function goes to the first part its file matches
PARTS = (
    ("simulated NVML (simulator/)", "/simulator/"),
    ("pynvml binding", "/pynvml.py"),
    ("exporter: NVML reader", "/exporter/nvml/"),
    ("exporter: render", "/exporter/render.py"),
    ("exporter: attribution", "/exporter/snapshot.py"),
    ("exporter: other", "/exporter/"),
    ("prometheus-client", "/prometheus_client/"),
    ("pydantic", "/pydantic"),
    ("stdlib / builtins", ""),
)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def own_time_by_part(stats: pstats.Stats) -> dict[str, float]:
    totals = dict.fromkeys((p for p, _ in PARTS), 0.0)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        for part, fragment in PARTS:
            if fragment in filename:
                totals[part] += tottime
                break
    return totals


class FakeCallTimer:
    """Times every call into the simulated NVML (through the binding's function lookup), thread CPU s."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lookup: Callable[[str], Any] = pynvml._nvmlGetFunctionPointer

    def install(self) -> None:
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlGetFunctionPointer = self._get

    def uninstall(self) -> None:
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml._nvmlGetFunctionPointer = self._lookup

    def _get(self, name: str) -> Any:
        fn = self._lookup(name)

        def timed(*args: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args)
            finally:
                self.seconds += time.thread_time() - t0

        return timed


def staged_samples(exporter: Any, samples: int, gap_s: float) -> dict[str, list[tuple[float, float]]]:
    """The steps of ``Sampler.sample_once`` one by one: (thread CPU s, of which in simulated NVML calls)."""
    from prometheus_client import exposition as text_format
    from prometheus_client.openmetrics import exposition as openmetrics_format

    from common.families import Families
    from exporter.render import Renderer, families
    from exporter.snapshot import Snapshot, attribute

    renderer = Renderer()
    fams: list[Any] = []

    sampler = exporter.sampler
    options = sampler.options
    timer = FakeCallTimer()
    out: dict[str, list[tuple[float, float]]] = {}
    marks: list[tuple[str, float, float]] = []

    def mark(stage: str) -> None:
        marks.append((stage, time.thread_time(), timer.seconds))

    timer.install()
    try:
        for _ in range(samples):
            time.sleep(gap_s)
            timer.seconds = 0.0
            marks.clear()
            mark("start")
            for hook in getattr(options, "before_sample", ()):
                hook()
            mark("before-sample hooks")
            reading = sampler.reader.read()
            mark("reader.read() (NVML)")
            usages, vanished = attribute(reading, sampler.resolver)
            for before in getattr(options, "before_families", ()):
                before(reading)
            mark("attribute (owner of each PID) + before_families")
            snap = Snapshot(reading, usages, vanished)
            fams = families(snap, hostname=options.hostname, dcgm_compat=options.dcgm_compat, version="bench")
            for extra in options.extra_families:
                fams.extend(extra())
            mark("families (metric objects)")
            text = renderer.text(fams)
            mark("render: text format (exporter.render)")
            om = renderer.openmetrics(fams)
            mark("render: OpenMetrics (exporter.render)")
            renderer._prefixes, renderer._next = renderer._next, {}
            gzip.compress(text, 1)
            gzip.compress(om, 1)
            mark("render: gzip both")
            for (_, c0, f0), (stage, c1, f1) in itertools.pairwise(marks):
                out.setdefault(stage, []).append((c1 - c0, f1 - f0))
            out.setdefault("total", []).append((marks[-1][1] - marks[0][1], marks[-1][2] - marks[0][2]))
        # For comparison, not part of the total: prometheus-client's own writers on the last sample's families.
        cpu0 = time.thread_time()
        holder = Families(fams)
        text_format.generate_latest(holder)
        openmetrics_format.generate_latest(holder)  # type: ignore[no-untyped-call]
        out["(prometheus-client's two writers, for comparison)"] = [(time.thread_time() - cpu0, 0.0)]
    finally:
        timer.uninstall()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--samples", type=int, default=10, help="samples to time and to profile")
    parser.add_argument("--gap-s", type=float, default=0.5, help="pause between samples (scenario time moves)")
    parser.add_argument("--sim-start", type=float, default=60.0)
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--memory", action="store_true", help="also list the largest allocations (tracemalloc)")
    args = parser.parse_args(argv)
    if not args.scenario.exists():
        parser.error(f"{args.scenario} does not exist: run `.venv/bin/python bench/make_scenario.py` first")

    stages: list[tuple[str, float]] = [("interpreter", rss_mib())]
    from exporter.app import build
    from exporter.settings import ExporterSettings

    stages.append(("imports (exporter.app)", rss_mib()))
    if args.memory:
        tracemalloc.start(1)
    settings = ExporterSettings(
        listen="127.0.0.1:0", simulate=str(args.scenario), interval=5.0, sim_start=args.sim_start
    )
    exporter = build(settings)
    stages.append(("build (scenario loaded, fake NVML installed)", rss_mib()))
    sampler = exporter.sampler
    try:
        sampler.sample_once()
        stages.append(("first sample", rss_mib()))
        for _ in range(2):
            time.sleep(args.gap_s)
            sampler.sample_once()

        cpu: list[float] = []
        for _ in range(args.samples):
            time.sleep(args.gap_s)
            c0 = time.thread_time()
            sampler.sample_once()
            cpu.append(time.thread_time() - c0)
        stages.append((f"{args.samples + 3} samples", rss_mib()))

        expo = sampler.exposition
        assert expo is not None
        snap = sampler.snapshot
        assert snap is not None
        procs = sum(len(g.processes) for g in snap.reading.gpus)
        print(
            f"scenario {args.scenario.name}: {len(snap.reading.gpus)} GPUs, {procs} processes, "
            f"{len(snap.usages)} usages; body {len(expo.text)} B text, {len(expo.openmetrics)} B OpenMetrics, "
            f"{len(expo.text_gz)} B text gzip"
        )
        cpu.sort()
        print(
            f"CPU per sample (no profiler, {args.samples} samples): median {cpu[len(cpu) // 2]:.3f} s, "
            f"min {cpu[0]:.3f} s, max {cpu[-1]:.3f} s -> {100 * cpu[len(cpu) // 2] / 5.0:.1f}% of one core at 5 s"
        )

        stage_times = staged_samples(exporter, args.samples, args.gap_s)
        print(f"\nCPU per sample by step (no profiler, median of {args.samples} samples):")
        print(f"  {'step':<52} {'CPU s':>8} {'in fake NVML s':>15}")
        for stage, values in stage_times.items():
            values.sort()
            cpu_s, fake_s = values[len(values) // 2]
            print(f"  {stage:<52} {cpu_s:8.4f} {fake_s:15.4f}")
        print("  (the before-sample hooks of a simulated node sync its fake /proc tree: simulation cost too)")

        profiler = cProfile.Profile()
        for _ in range(args.samples):
            time.sleep(args.gap_s)
            profiler.enable()
            sampler.sample_once()
            profiler.disable()
        stats = pstats.Stats(profiler)
        total = sum(own_time_by_part(stats).values())
        print(f"\nOwn time by part under cProfile ({args.samples} samples, {total / args.samples:.3f} s/sample):")
        for part, seconds in sorted(own_time_by_part(stats).items(), key=lambda kv: -kv[1]):
            print(f"  {part:<32} {seconds / args.samples:7.3f} s/sample  {100 * seconds / total:5.1f}%")
        for key in ("tottime", "cumulative"):
            buffer = io.StringIO()
            pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats(key).print_stats(args.top)
            print(f"\nTop {args.top} by {key}:")
            print(buffer.getvalue().split("\n", 6)[-1].rstrip())

        print("\nRSS by stage (MiB):")
        for stage, mib in stages:
            print(f"  {stage:<48} {mib:7.1f}")
        if args.memory:
            snapshot = tracemalloc.take_snapshot()
            print("\nLargest live allocations since build started (tracemalloc, by line):")
            for stat in snapshot.statistics("lineno")[: args.top]:
                print(f"  {stat.size / 2**20:7.2f} MiB  {stat.count:8d} blocks  {stat.traceback}")
            by_file: dict[str, float] = {}
            for stat in snapshot.statistics("filename"):
                name = str(stat.traceback).rsplit(":", 1)[0]
                by_file[name] = by_file.get(name, 0.0) + stat.size / 2**20
            print("\nBy file:")
            for name, mib in sorted(by_file.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"  {mib:7.2f} MiB  {name}")
    finally:
        exporter.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
