"""Synthetic history of vLLM servers as the exporter and vLLM would have exposed it, in OpenMetrics text
for ``promtool tsdb create-blocks-from openmetrics``: for the job's integration test and benchmark.

Every server's truth (weights, KV reserved, peak KV use) is known, so the job's split can be checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from common import catalog as c
from common.units import GiB

PROMPT_SHARE = 0.25
"""Prompt tokens per generated token in the synthetic history."""


@dataclass(frozen=True)
class SyntheticServer:
    namespace: str
    pod: str
    model: str
    gpu_uuid: str
    gpu_memory_bytes: int
    weights_bytes: int
    kv_bytes: int  # KV cache reserved on this GPU
    overhead_bytes: int
    kv_peak: float  # the highest KV usage (0..1) over the window
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    tokens_per_s: float = 100.0
    team: str = "search"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes


def fleet(count: int, *, gpu_memory_bytes: int = 80 * GiB) -> list[SyntheticServer]:
    """``count`` servers of three sizes with varied peaks, each on its own GPU."""
    shapes = (
        ("meta-llama/Llama-3.1-8B-Instruct", 15 * GiB, 3 * GiB),
        ("Qwen/Qwen2.5-1.5B-Instruct", 3 * GiB, 2 * GiB),
        ("mistralai/Mistral-7B-Instruct-v0.3", 14 * GiB, 3 * GiB),
    )
    out = []
    for i in range(count):
        model, weights, overhead = shapes[i % len(shapes)]
        kv = int(gpu_memory_bytes * 0.9) - weights - overhead
        out.append(
            SyntheticServer(
                namespace=f"team-{i % 7}",
                pod=f"vllm-{i:04d}",
                model=model,
                gpu_uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000",
                gpu_memory_bytes=gpu_memory_bytes,
                weights_bytes=weights,
                kv_bytes=kv,
                overhead_bytes=overhead,
                kv_peak=0.05 + 0.9 * ((i * 37) % 100) / 100,
                team=f"team-{i % 5}",
            )
        )
    return out


def _usage(server: SyntheticServer, t: float, start: float, end: float) -> float:
    """A daily wave whose maximum over the window is exactly ``kv_peak`` (reached at the middle)."""
    if abs(t - (start + end) / 2) < 1e-6:
        return server.kv_peak
    return server.kv_peak * (0.5 + 0.45 * math.sin(2 * math.pi * (t - start) / 86400))


def _times(start: float, end: float, step: float) -> Iterator[float]:
    n = int((end - start) // step)
    mid = (start + end) / 2
    for i in range(n + 1):
        t = start + i * step
        yield t
        if t < mid < t + step:
            yield mid


def write_openmetrics(
    out: TextIO, servers: Sequence[SyntheticServer], start: float, end: float, step: float = 60.0
) -> None:
    """Exporter and vLLM series of ``servers`` from ``start`` to ``end`` (unix seconds) every ``step``."""
    sparse = max(step, 900.0)  # metadata and constants: enough for last_over_time over any window

    def family(name: str, kind: str = "gauge") -> None:
        out.write(f"# TYPE {name} {kind}\n")

    family(c.CONTAINER_MEMORY.name)
    for s in servers:
        labels = (
            f'container="vllm",gpu="0",gpu_uuid="{s.gpu_uuid}",mig_instance="",mig_profile="",'
            f'namespace="{s.namespace}",pod="{s.pod}",process=""'
        )
        for t in _times(start, end, step):
            out.write(f"{c.CONTAINER_MEMORY.name}{{{labels}}} {s.total_bytes} {t:.3f}\n")
    family(c.GPU_MEMORY_TOTAL.name)
    for s in servers:
        for t in _times(start, end, sparse):
            out.write(
                f'{c.GPU_MEMORY_TOTAL.name}{{gpu="0",gpu_uuid="{s.gpu_uuid}",mig_instance="",mig_profile=""}} {s.gpu_memory_bytes} {t:.3f}\n'
            )
    family(c.POD_INFO.name)
    for s in servers:
        labels = (
            f'model="{s.model}",namespace="{s.namespace}",pod="{s.pod}",team="{s.team}",'
            'workload="vllm",workload_class="inference",workload_kind="Deployment"'
        )
        for t in _times(start, end, sparse):
            out.write(f"{c.POD_INFO.name}{{{labels}}} 1 {t:.3f}\n")
    family("vllm:kv_cache_usage_perc")
    for s in servers:
        for t in _times(start, end, step):
            out.write(
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="{s.model}",namespace="{s.namespace}",pod="{s.pod}"}} {_usage(s, t, start, end):.6f} {t:.3f}\n'
            )
    family("vllm:cache_config_info")
    for s in servers:
        blocks = s.kv_bytes // (s.block_size * 131072)
        labels = (
            f'block_size="{s.block_size}",cache_dtype="auto",engine="0",gpu_memory_utilization="{s.gpu_memory_utilization}",'
            f'kv_cache_memory_bytes="{s.kv_bytes}",namespace="{s.namespace}",num_gpu_blocks="{blocks}",pod="{s.pod}"'
        )
        for t in _times(start, end, sparse):
            out.write(f"vllm:cache_config_info{{{labels}}} 1 {t:.3f}\n")
    # vLLM serves both counters; prompts here are a quarter of the generated tokens
    for name, share in (("vllm:generation_tokens", 1.0), ("vllm:prompt_tokens", PROMPT_SHARE)):
        family(name, "counter")
        for s in servers:
            for t in _times(start, end, sparse):  # a counter's increase over the window needs no dense samples
                out.write(
                    f'{name}_total{{engine="0",model_name="{s.model}",namespace="{s.namespace}",pod="{s.pod}"}} {share * s.tokens_per_s * (t - start):.1f} {t:.3f}\n'
                )
    out.write("# EOF\n")
