"""Churn soak: a day of simulated pod and process churn through the whole exporter, with a hand-moved clock.

Every checkpoint (default: each simulated hour) waits for the pod watch, samples, scrapes ``/metrics`` over
HTTP and compares every per-container memory series with what the scenario says is alive; it records the
process's RSS, open file descriptors and threads, and the sizes of the exporter's caches. The simulator
(fake NVML, fake /proc, emulated API server, kubelet gRPC server) runs in the same process, so RSS is the
sum of both; flat is what matters.

    .venv/bin/python bench/churn_soak.py [--hours 24] [--gpus 8] [--pods 8000] [--interval 15]

Writes bench/out/churn-soak.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from simulator.churn import ChurnShape, churn_scenario
from simulator.soak import Checkpoint, ChurnSoak

OUT = Path("bench/out/churn-soak.json")
MiB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=8000)
    parser.add_argument("--bare-processes", type=int, default=800)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples (simulated)")
    parser.add_argument("--checkpoint-every", type=float, default=3600.0, help="simulated seconds")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seconds = args.hours * 3600.0
    shape = ChurnShape(gpus=args.gpus, seconds=seconds, pods=args.pods, bare_processes=args.bare_processes)
    scenario = churn_scenario(shape)
    print(f"{len(scenario.pods)} pods and {len(scenario.processes)} processes over {args.hours:g} h", flush=True)
    points: list[Checkpoint] = []
    wall0 = time.monotonic()
    with ChurnSoak(scenario, interval_s=args.interval) as soak:
        for point in soak.run(seconds, checkpoint_every_s=args.checkpoint_every):
            points.append(point)
            print(
                f"  {point.at_s / 3600:5.1f} h  rss {point.rss_bytes / MiB:6.1f} MiB  fds {point.fds}  "
                f"series {point.series}  wrong/stale/missing {len(point.wrong)}/{len(point.stale)}/"
                f"{len(point.missing)}",
                flush=True,
            )
    wall = time.monotonic() - wall0
    created = sum(1 for p in scenario.pods if p.start < seconds)
    deleted = sum(1 for p in scenario.pods if p.stop is not None and p.stop <= seconds)
    summary = {
        "hours": args.hours,
        "interval_s": args.interval,
        "gpus": args.gpus,
        "pods_created": created,
        "pods_deleted": deleted,
        "processes": sum(1 for p in scenario.processes if p.start < seconds),
        "samples": points[-1].samples if points else 0,
        "wall_s": round(wall, 1),
        "wrong_total": sum(len(p.wrong) for p in points),
        "stale_total": sum(len(p.stale) for p in points),
        "missing_total": sum(len(p.missing) for p in points),
        "checkpoints": [asdict(p) for p in points],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=1))
    print()
    print("| simulated hour | samples | RSS MiB | fds | threads | series | pods alive | wrong | stale | missing |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in points:
        print(
            f"| {p.at_s / 3600:.1f} | {p.samples} | {p.rss_bytes / MiB:.1f} | {p.fds} | {p.threads} | {p.series} | "
            f"{p.pods_alive} | {len(p.wrong)} | {len(p.stale)} | {len(p.missing)} |"
        )
    print(
        f"\n{created} pods created, {deleted} deleted, {summary['processes']} processes, "
        f"{summary['samples']} samples in {wall:.0f} s of wall time"
    )
    bad = summary["wrong_total"] or summary["stale_total"] or summary["missing_total"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
