"""Write a scale scenario: N H100 GPUs × M processes per GPU, for the exporter benchmark.

Every process has a unique PID and (by default) a unique command name, so the exporter's per-owner
series are as many as its processes: the worst case for its output size. Memory sizes are mixed
(64 MiB .. 1 GiB, some ramping up at start) and scaled so each GPU stays below its 80 GiB; activity
is a square-wave burst (varied period, duty and phase) or a constant, at least 1 % so that the
simulated driver reports a utilisation sample for every process (the heaviest path for a reader).

    .venv/bin/python bench/make_scenario.py [--gpus 8] [--procs-per-gpu 256] [--output PATH]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import yaml

from simulator.scenario import parse_scenario

DEFAULT_OUTPUT = Path("bench/out/scale-8x256.yaml")
GPU_MODEL = "NVIDIA H100 80GB HBM3"
GPU_MEMORY_BYTES = 80 * 2**30
MEMORY_BUDGET = 0.9  # share of a GPU's memory the processes on it hold together
SIZES_MIB = (64, 128, 256, 384, 512, 768, 1024)  # per-process GPU memory before scaling, MiB
FIRST_PID = 100_000
COMM_MAX = 15  # /proc/<pid>/comm holds at most 15 characters


def _activity(rng: random.Random, high_max: float) -> Any:
    """A burst with varied period/duty/phase (3 in 4 processes) or a constant (1 in 4); 0.01..1."""
    if rng.random() < 0.25:
        return round(rng.uniform(0.01, high_max), 3)
    period = rng.choice((2.0, 5.0, 7.5, 10.0, 20.0, 30.0))
    return {
        "burst": {
            "period": period,
            "duty": round(rng.uniform(0.1, 0.9), 2),
            "high": round(rng.uniform(0.05, high_max), 3),
            "low": round(rng.uniform(0.01, 0.03), 3),
            "phase": round(rng.uniform(0.0, period), 2),
        }
    }


def build(gpus: int, procs_per_gpu: int, *, seed: int = 1, distinct_names: int | None = None) -> dict[str, Any]:
    """The scenario as a dict (``parse_scenario`` accepts it). ``distinct_names`` cycles command names."""
    if gpus < 1 or procs_per_gpu < 1:
        raise ValueError(f"--gpus and --procs-per-gpu must be at least 1, got {gpus} and {procs_per_gpu}")
    rng = random.Random(seed)
    processes: list[dict[str, Any]] = []
    pid = FIRST_PID
    for gpu in range(gpus):
        sizes_mib = [rng.choice(SIZES_MIB) for _ in range(procs_per_gpu)]
        scale = min(1.0, MEMORY_BUDGET * GPU_MEMORY_BYTES / 2**20 / sum(sizes_mib))
        for slot, size in enumerate(sizes_mib):
            serial = gpu * procs_per_gpu + slot
            name = f"w{serial % distinct_names if distinct_names else serial}-g{gpu}"[:COMM_MAX]
            mib = max(16, int(size * scale))
            memory: Any = f"{mib}MiB"
            if rng.random() < 0.2:  # loads its weights over the first seconds
                ramp_end = round(rng.uniform(2.0, 30.0), 1)
                memory = {"ramp": {"from": "16MiB", "to": f"{mib}MiB", "start": 0, "end": ramp_end}}
            processes.append(
                {
                    "pid": pid,
                    "name": name,
                    "cmdline": ["python3", "-m", "worker", "--gpu", str(gpu), "--slot", str(slot)],
                    "gpus": [gpu],
                    "memory": memory,
                    "sm": _activity(rng, 0.6),
                    "mem_bw": _activity(rng, 0.4),
                    "sm_fraction": round(rng.uniform(0.2, 1.0), 2),
                    "tensor_fraction": round(rng.uniform(0.0, 0.8), 2),
                }
            )
            pid += rng.choice((1, 2, 3, 7))  # unique, not contiguous
    return {
        "name": f"scale-{gpus}x{procs_per_gpu}",
        "description": f"{gpus}×H100 with {procs_per_gpu} processes per GPU (benchmark scenario)",
        "node": {"name": "bench-node"},
        "gpus": [{"index": i, "model": GPU_MODEL} for i in range(gpus)],
        "processes": processes,
    }


def write(path: Path, gpus: int, procs_per_gpu: int, *, seed: int = 1, distinct_names: int | None = None) -> Path:
    raw = build(gpus, procs_per_gpu, seed=seed, distinct_names=distinct_names)
    parse_scenario(raw, source=str(path))  # fail here, naming the field, rather than in the exporter
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(raw, sort_keys=False, width=200, allow_unicode=True, default_flow_style=None), encoding="utf-8"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--gpus", type=int, default=8, help="number of H100 GPUs (default 8)")
    parser.add_argument("--procs-per-gpu", type=int, default=256, help="processes per GPU (default 256)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for sizes and phases")
    parser.add_argument(
        "--distinct-names",
        type=int,
        default=None,
        help="cycle through this many command names (default: every process has its own)",
    )
    parser.add_argument("--output", type=Path, default=None, help=f"default {DEFAULT_OUTPUT}")
    args = parser.parse_args(argv)
    output = args.output or (
        DEFAULT_OUTPUT
        if (args.gpus, args.procs_per_gpu) == (8, 256)
        else Path(f"bench/out/scale-{args.gpus}x{args.procs_per_gpu}.yaml")
    )
    path = write(output, args.gpus, args.procs_per_gpu, seed=args.seed, distinct_names=args.distinct_names)
    print(f"wrote {path}: {args.gpus} GPUs × {args.procs_per_gpu} processes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
