"""The attribution job at scale: N vLLM servers × D days at S-second resolution in a real Prometheus.

Writes a synthetic history (``simulator.vllm_history``) a day at a time, backfills it with
``promtool tsdb create-blocks-from openmetrics``, starts Debian's Prometheus on it (127.0.0.1 only), runs
``gpuattr attribute --window <D>d`` as a child process and records its wall time, peak RSS and the share
of time spent waiting on Prometheus. Target (issue): under 60 s and 1 GiB on 2 cores for 1,000 × 7 d × 15 s.

    .venv/bin/python bench/bench_attribution.py [--servers 1000] [--days 7] [--step 15]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.vllm_history import fleet, write_openmetrics  # noqa: E402
from tests.peers import prometheus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--step", type=float, default=15.0)
    parser.add_argument("--keep", help="keep the TSDB in this directory")
    args = parser.parse_args(argv)
    promtool = shutil.which("promtool")
    if not promtool or not shutil.which("prometheus"):
        print("needs Debian's prometheus package (promtool, prometheus)", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="gpuattr-bench-"))
    data = work / "data"
    servers = fleet(args.servers)
    end = float(int(time.time()) // 3600 * 3600 - 3600)
    start = end - args.days * 86400
    figures: dict[str, float | int | str] = {"servers": args.servers, "days": args.days, "step_s": args.step}
    t0 = time.perf_counter()
    samples = 0
    for day in range(args.days):
        chunk = work / f"day{day}.om"
        a, b = start + day * 86400, start + (day + 1) * 86400 - (args.step if day < args.days - 1 else 0)
        with chunk.open("w") as out:
            write_openmetrics(out, servers, a, b, step=args.step)
        samples += sum(1 for line in chunk.open() if not line.startswith("#"))
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(chunk), str(data)],
            check=True,
            capture_output=True,
            timeout=3600,
        )
        chunk.unlink()
        print(f"day {day + 1}/{args.days} backfilled ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    figures["samples"] = samples
    figures["backfill_s"] = round(time.perf_counter() - t0, 1)
    with prometheus(work, [], storage=data, ready_timeout_s=300, retention=f"{args.days + 30}d") as prom:
        # A fresh wrapper process runs the job, so its peak RSS is the job's alone (not promtool's).
        wrapper = (
            "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
            " print('peak_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
            " sys.exit(r.returncode)"
        )
        job = subprocess.run(
            [
                sys.executable,
                "-c",
                wrapper,
                str(ROOT / ".venv" / "bin" / "gpuattr"),
                "attribute",
                "--prometheus",
                prom.url,
                "--window",
                f"{args.days}d",
                "--at",
                str(end),
                "--stats",
                "--out",
                str(work / "report"),
                "--format",
                "csv,parquet,json",
                "--timeout",
                "600",
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        peak_kib = int(next(line.split()[1] for line in job.stderr.splitlines() if line.startswith("peak_kib")))
        stats = next(json.loads(line)["stats"] for line in job.stderr.splitlines() if line.startswith('{"stats"'))
        figures.update(
            job_exit=job.returncode,
            job_wall_s=round(stats["wall_s"], 2),
            prometheus_wait_s=round(stats["prometheus_wait_s"], 2),
            prometheus_share=round(stats["prometheus_wait_s"] / stats["wall_s"], 3),
            queries=int(stats["prometheus_queries"]),
            servers_found=int(stats["servers"]),
            job_peak_rss_mib=round(peak_kib / 1024, 1),
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    return 0 if figures.get("job_exit") == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
