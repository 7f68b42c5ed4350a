"""A GPU whose NVML call hangs, on an 8-GPU node: what each sample costs and shows before, during and after.

8 simulated H100s with 32 processes each; GPU 3's nvmlDeviceGetPowerUsage blocks from scenario second 20 to
80. The reader runs with --nvml-timeout 0.5 s on a hand-moved clock (a sample every 5 s of scenario time);
each sample's wall time, the GPUs it read and the call it names as hung are printed as a Markdown table.

    .venv/bin/python bench/nvml_hang_check.py [--timeout 0.5]
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from exporter.nvml.reader import NvmlReader
from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.scenario import parse_scenario

GPUS, PER_GPU, STUCK, HANG_FROM, HANG_UNTIL = 8, 32, 3, 20.0, 80.0


def scenario() -> dict[str, Any]:
    gpus: list[dict[str, Any]] = [{"index": i} for i in range(GPUS)]
    gpus[STUCK]["hangs"] = [{"function": "nvmlDeviceGetPowerUsage", "at": HANG_FROM, "until": HANG_UNTIL}]
    procs = [
        {"pid": 1000 + g * PER_GPU + n, "name": f"w{g}-{n}", "gpus": [g], "memory": "1GiB", "sm": 0.3}
        for g in range(GPUS)
        for n in range(PER_GPU)
    ]
    return {"name": "hang", "gpus": gpus, "processes": procs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=0.5, help="--nvml-timeout, seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="    log: %(message)s")
    clock = SimClock(manual=True, start_wall=1_750_000_000.0)
    fake_nvml.install(parse_scenario(scenario()), clock)
    reader = NvmlReader(wall_clock=clock.wall, monotonic=clock.now, interval_s=5.0, call_timeout_s=args.timeout)
    print("| scenario s | sample wall ms | GPUs read | processes read | hung call | timeouts counted |")
    print("|---:|---:|---:|---:|---|---:|")
    try:
        for _ in range(24):
            clock.advance(5.0)
            if clock.now() == HANG_UNTIL + 5.0:
                time.sleep(0.05)  # the parked thread notices its call returned (the fake polls every 10 ms)
            t0 = time.perf_counter()
            node = reader.read()
            wall_ms = (time.perf_counter() - t0) * 1000
            hung = [f"GPU {g.index}: {g.hung_call}" for g in node.gpus if g.hung_call]
            timeouts = sum(n for (_, code), n in node.errors.items() if code == "ExporterTimeout")
            print(
                f"| {clock.now():.0f} | {wall_ms:.1f} | {sum(g.up for g in node.gpus)} / {GPUS} | "
                f"{sum(len(g.processes) for g in node.gpus)} | {', '.join(hung) or '-'} | {timeouts} |"
            )
    finally:
        reader.shutdown()
        fake_nvml.uninstall()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
