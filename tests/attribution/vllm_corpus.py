"""The simulated part of the vLLM start-up log corpus in ``tests/fixtures/vllm-logs``: one log per vLLM version
the simulator prints (CUDA, TP 1 and TP 2), rendered by :mod:`simulator.vllm`, with the figures each log states
beside it in ``<name>.json``, worked out from the simulated budget at the precision that version prints.

``python -m tests.attribution.vllm_corpus`` rewrites those files; the corpus test fails when they drift from
the simulator. The other logs of the corpus (ROCm, XPU, CPU, pipeline parallelism, failed start-ups) are
written by hand, and so are their JSON files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from simulator.clock import SimClock
from simulator.fake_nvml import FakeNvmlLibrary
from simulator.scenario import parse_scenario
from simulator.vllm import SimVllmServer, vllm_servers

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-logs"
GiB = 2**30
VERSIONS = ("0.5.5", "0.6.4", "0.6.6", "0.7.3", "0.8.5", "0.9.2", "0.10.1", "0.10.2", "0.11.0")
"""One release per log shape the simulator prints (see the version rules in simulator/vllm.py)."""


def _block(version: str, tp: int, rank: int) -> dict[str, Any]:
    return {
        "model": "meta-llama/Llama-3.1-70B-Instruct" if tp > 1 else "meta-llama/Llama-3.1-8B-Instruct",
        "version": version,
        "gpu_memory_utilization": 0.9,
        "weights": "65.7GiB" if tp > 1 else "14.99GiB",
        "non_torch": "0.55GiB" if rank == 0 else "0.5GiB",
        "activation_peak": "1.2GiB",
        "cuda_graphs": "0.6GiB",
        "cuda_context": "0.5GiB",
        "kv_bytes_per_token": 163840 if tp > 1 else 131072,
        "max_model_len": 16384 if tp > 1 else 8192,
        "tensor_parallel": tp,
        "rank": rank,
    }


def _scenario(version: str, tp: int) -> dict[str, Any]:
    return {
        "name": f"corpus-{version}-tp{tp}",
        "gpus": [{"index": i} for i in range(tp)],
        "pods": [
            {
                "namespace": "llm",
                "name": "vllm-0",
                "containers": [{"name": "vllm", "devices": [str(i) for i in range(tp)]}],
            }
        ],
        "processes": [
            {
                "pid": 100 + r,
                "name": "vllm",
                "gpus": [r],
                "container": "llm/vllm-0/vllm",
                "vllm": _block(version, tp, r),
            }
            for r in range(tp)
        ],
    }


def _printed(value: float, decimals: int) -> int:
    """Bytes as the log states them: GiB to ``decimals`` places, read back."""
    return round(round(value / GiB, decimals) * GiB)


def _label(v: tuple[int, int, int], rank: int, pid: int) -> str:
    """How the parser names the worker of ``rank``: by its process tag, or the untagged lines of V0's rank 0."""
    if v >= (0, 10, 2):
        return f"Worker_TP{rank} pid={pid}"
    if v >= (0, 8, 0):
        return f"VllmWorker rank={rank} pid={pid}"
    return "(untagged lines)" if rank == 0 else f"VllmWorkerProcess pid={pid}"


def expected(server: SimVllmServer) -> dict[str, Any]:
    """The figures a log of ``server`` states, at the precision its version prints them."""
    v, b0, spec = server.version, server.budgets[0], server.spec
    v1 = v >= (0, 8, 0)
    weights = max(b.spec.weights for b in server.budgets)
    out: dict[str, Any] = {
        "vllm_version": ".".join(map(str, v)),
        "ranks": len(server.budgets),
        "weights_bytes": _printed(weights, 2 if v >= (0, 11, 0) else 4),
        "cuda_graph_bytes": max(_printed(b.spec.cuda_graphs, 2) for b in server.budgets),
        "max_concurrency_tokens": spec.max_model_len if v >= (0, 6, 4) else None,
        "max_concurrency": round(b0.max_concurrency, 2) if v >= (0, 6, 4) else None,
    }
    if v1:
        out["kv_cache_tokens"] = b0.kv_cache_size_tokens
    else:
        out["num_gpu_blocks"] = b0.num_gpu_blocks
    out["max_model_len"] = spec.max_model_len  # the engine's config line: max_seq_len=…
    if (v1 and v >= (0, 9, 2)) or (not v1 and v >= (0, 6, 4)):  # each worker prints its KV memory
        out["kv_cache_bytes"] = min(_printed(b.kv_budget, 2) for b in server.budgets)  # vLLM takes the least
        if len(server.budgets) > 1:
            least = min(server.budgets, key=lambda b: b.kv_budget)
            out["limiting_worker"] = _label(v, least.spec.rank, least.pid)
    if len(server.budgets) > 1:  # each worker's own figures, by the name the parser gives its lines
        kv_lines = "kv_cache_bytes" in out
        out["workers"] = [
            {
                "worker": _label(v, b.spec.rank, b.pid),
                "stage": None,
                "weights_bytes": _printed(b.spec.weights, 2 if v >= (0, 11, 0) else 4),
                "available_kv_cache_bytes": _printed(b.kv_budget, 2) if kv_lines else None,
            }
            for b in server.budgets
        ]
    if not v1 and v >= (0, 6, 4):
        out["total_gpu_memory_bytes"] = _printed(b0.total_gpu_memory, 2)
        out["non_torch_bytes"] = max(_printed(b.spec.non_torch, 2) for b in server.budgets)
        out["gpu_memory_utilization"] = spec.gpu_memory_utilization
    if not v1 and v >= (0, 6, 6):
        out["activation_peak_bytes"] = max(_printed(b.spec.activation_peak, 2) for b in server.budgets)
    elif not v1 and v >= (0, 6, 4):  # peak_torch_memory (weights + activations) less the weights line
        out["activation_peak_bytes"] = max(
            round((round((b.spec.weights + b.spec.activation_peak) / GiB, 2) - round(b.spec.weights / GiB, 4)) * GiB)
            for b in server.budgets
        )
    return {k: val for k, val in out.items() if val is not None}


def generate() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (log text, expected figures) of every simulated log of the corpus."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for version in VERSIONS:
        for tp in (1, 2):
            scenario = parse_scenario(_scenario(version, tp))
            # the library itself, not installed under pynvml: the logs need only its clock
            nvml = FakeNvmlLibrary(scenario, SimClock(manual=True, offset=0.0, start_wall=1_763_719_200.0))
            try:
                (server,) = vllm_servers(scenario, nvml)
                out[f"{version}-cuda-tp{tp}"] = (server.render_logs(server.ready_at + 1), expected(server))
            finally:
                nvml.release()
    return out


def main() -> int:
    for name, (log, figures) in generate().items():
        (CORPUS / f"{name}.log").write_text(log, encoding="utf-8")
        (CORPUS / f"{name}.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {name}.log and {name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
