"""The split: each vLLM server's memory on each GPU into weights, KV used, KV never used, and overhead.

Inputs are one row per (server, GPU): what NVML showed the process holding, what vLLM reserved for KV,
how full that KV cache was over the window, and the weights (from the logs, the safetensors headers or
an estimate). Every figure says where it came from; nothing missing is filled in silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from common.units import GiB

COLUMNS = (
    "namespace",
    "pod",
    "model",
    "gpu_uuid",
    "gpu_memory_bytes",
    "total_bytes",
    "weights_bytes",
    "weights_source",
    "kv_allocated_bytes",
    "kv_allocated_source",
    "kv_used_p50_bytes",
    "kv_used_p95_bytes",
    "kv_used_max_bytes",
    "kv_idle_bytes",
    "overhead_bytes",
    "overhead_activation_bytes",
    "overhead_non_torch_bytes",
    "overhead_cuda_graph_bytes",
    "gpu_memory_utilization",
    "tensor_parallel",
    "assumptions",
    "kv_bytes_per_token",
    "kv_state_bytes_per_seq",
    "kv_block_bytes",
    "max_model_len",
    "pipeline_parallel",
    "mig_share",
    "replicas",
)


@dataclass
class ServerGpu:
    """What is known about one vLLM server on one GPU over the window."""

    namespace: str
    pod: str
    model: str
    gpu_uuid: str
    gpu_memory_bytes: int | None  # the GPU's (or MIG instance's) total memory
    total_bytes: int | None  # what NVML showed the server's processes holding on this GPU (max over window)
    kv_usage_p50: float | None  # vLLM's kv_cache_usage_perc, 0..1
    kv_usage_p95: float | None
    kv_usage_max: float | None
    kv_allocated_bytes: int | None = None  # per GPU, from cache_config_info's kv_cache_memory_bytes
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    kv_bytes_per_token: int | None = None  # per GPU, from the calculator
    weights_bytes_log: int | None = None  # per GPU, from the start-up log
    weights_bytes_model: int | None = None  # whole model, from safetensors or an estimate
    weights_model_method: str | None = None  # "safetensors" | "estimate"
    gpu_memory_utilization: float | None = None
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    activation_peak_bytes: int | None = None  # parts of the overhead vLLM logged, when it did
    non_torch_bytes: int | None = None
    cuda_graph_bytes: int | None = None
    max_model_len: int | None = None  # tokens of one request, from the start-up log
    # Mamba / linear-attention hybrids only, from the calculator (None otherwise):
    kv_state_bytes_per_seq: int | None = None  # per GPU, the state every running sequence holds
    kv_block_bytes: int | None = None  # per GPU, one block of the shared pool over all layer slots
    kv_block_size_model: int | None = None  # tokens per attention block, as vLLM raises it for the state pages
    notes: list[str] = field(default_factory=list)
    mig_share: float = 1.0  # the MIG instance's share of its GPU (its compute slices over the card's); 1 without MIG
    replicas: int = 1  # containers holding this GPU or MIG instance over the window (time-slicing, MPS)


def split_one(s: ServerGpu) -> dict[str, object]:
    """One row of the split, with the source of each figure and the assumptions made."""
    notes = list(s.notes)
    # Weights: the log's own figure (per GPU) first, then the model's weights over its parallel ranks.
    weights: int | None
    if s.weights_bytes_log is not None:
        weights, weights_source = s.weights_bytes_log, "log"
    elif s.weights_bytes_model is not None:
        ranks = max(1, s.tensor_parallel * s.pipeline_parallel)
        weights, weights_source = s.weights_bytes_model // ranks, s.weights_model_method or "estimate"
        if ranks > 1:
            notes.append(f"weights per GPU = model weights / {ranks} ranks (even split assumed)")
    else:
        weights, weights_source = None, "missing"
        notes.append("no weights figure: no start-up log, no readable model files, no known architecture")

    kv_alloc: int | None
    if s.kv_allocated_bytes is not None:
        kv_alloc, kv_source = s.kv_allocated_bytes, "cache_config_info.kv_cache_memory_bytes"
    elif s.num_gpu_blocks is not None and s.kv_block_bytes:
        # A hybrid's blocks are pages of attention KV or of one sequence's state, all of one size
        kv_alloc = s.num_gpu_blocks * s.kv_block_bytes
        kv_source = "num_gpu_blocks × block bytes over all layer slots (hybrid pages, calculator)"
        if s.block_size is not None and s.kv_block_size_model is not None and s.block_size != s.kv_block_size_model:
            notes.append(
                f"cache_config_info says block_size {s.block_size}, the calculator {s.kv_block_size_model} tokens "
                "(the block vLLM raises for the state pages)"
            )
    elif s.num_gpu_blocks is not None and s.block_size is not None and s.kv_bytes_per_token is not None:
        kv_alloc = s.num_gpu_blocks * s.block_size * s.kv_bytes_per_token
        kv_source = "num_gpu_blocks × block_size × KV bytes per token (calculator)"
    else:
        kv_alloc, kv_source = None, "missing"
        notes.append("no KV allocation: cache_config_info lacks kv_cache_memory_bytes and the calculator had no config")

    def used(ratio: float | None) -> int | None:
        return None if ratio is None or kv_alloc is None else round(kv_alloc * min(1.0, max(0.0, ratio)))

    used_p50, used_p95, used_max = used(s.kv_usage_p50), used(s.kv_usage_p95), used(s.kv_usage_max)
    if s.kv_usage_max is None and kv_alloc is not None:
        notes.append("no KV usage series in the window: KV used and idle unknown")
    kv_idle = None if kv_alloc is None or used_max is None else kv_alloc - used_max
    overhead: int | None = None
    if s.total_bytes is not None and weights is not None and kv_alloc is not None:
        overhead = s.total_bytes - weights - kv_alloc
        if overhead < 0:
            notes.append(
                f"NVML shows {s.total_bytes / GiB:.2f} GiB, less than weights + KV "
                f"({(weights + kv_alloc) / GiB:.2f} GiB): inputs disagree; overhead set to 0"
            )
            overhead = 0
    elif s.total_bytes is None:
        notes.append("no GPU memory reading from the exporter for this server and GPU")
    return {
        "namespace": s.namespace,
        "pod": s.pod,
        "model": s.model,
        "gpu_uuid": s.gpu_uuid,
        "gpu_memory_bytes": s.gpu_memory_bytes,
        "total_bytes": s.total_bytes,
        "weights_bytes": weights,
        "weights_source": weights_source,
        "kv_allocated_bytes": kv_alloc,
        "kv_allocated_source": kv_source,
        "kv_used_p50_bytes": used_p50,
        "kv_used_p95_bytes": used_p95,
        "kv_used_max_bytes": used_max,
        "kv_idle_bytes": kv_idle,
        "overhead_bytes": overhead,
        "overhead_activation_bytes": s.activation_peak_bytes,
        "overhead_non_torch_bytes": s.non_torch_bytes,
        "overhead_cuda_graph_bytes": s.cuda_graph_bytes,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "tensor_parallel": s.tensor_parallel,
        "assumptions": "; ".join(notes),
        "kv_bytes_per_token": s.kv_bytes_per_token,
        "kv_state_bytes_per_seq": s.kv_state_bytes_per_seq,
        "kv_block_bytes": s.kv_block_bytes,
        "max_model_len": s.max_model_len,
        "pipeline_parallel": s.pipeline_parallel,
        "mig_share": s.mig_share,
        "replicas": s.replicas,
    }


def split(servers: Iterable[ServerGpu]) -> pd.DataFrame:
    """The split of every server on every GPU, one row each, columns ``COLUMNS``."""
    rows = [split_one(s) for s in servers]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    int_columns = [c for c in COLUMNS if c.endswith(("_bytes", "_per_token", "_per_seq")) or c == "max_model_len"]
    frame[int_columns] = frame[int_columns].astype("Int64")  # nullable: a missing figure stays missing
    return frame.sort_values(["namespace", "pod", "gpu_uuid"], ignore_index=True)


FAILED_START_COLUMNS = (
    "namespace",
    "pod",
    "model",
    "log",
    "vllm_version",
    "reason",
    "weights_bytes",
    "kv_available_bytes",
    "gpu_memory_utilization",
    "max_model_len",
    "kv_cache_needed_bytes",
    "suggested_gpu_memory_utilization",
    "suggested_max_model_len",
    "suggested_kv_cache_memory_bytes",
    "suggestion",
    "notes",
)
"""A server whose start-up log shows it stopped (the KV cache does not fit): the figures read and what fits."""

WORKER_COLUMNS = (
    "namespace",
    "pod",
    "model",
    "worker",
    "stage",
    "weights_bytes",
    "available_kv_cache_bytes",
    "kv_cache_tokens",
    "num_gpu_blocks",
    "sets_block_count",
)
"""One worker of a TP/PP server, from its log: its own KV figures and whether it set the server's block count."""

_COUNT_COLUMNS = ("stage", "max_model_len", "suggested_max_model_len", "kv_cache_tokens", "num_gpu_blocks")


def table(rows: Iterable[dict[str, object]], columns: tuple[str, ...]) -> pd.DataFrame:
    """``rows`` as a frame of ``columns``; sizes and counts nullable integers (a missing figure stays missing)."""
    frame = pd.DataFrame(list(rows), columns=list(columns))
    ints = [c for c in columns if c.endswith("_bytes") or c in _COUNT_COLUMNS]
    frame[ints] = frame[ints].astype("Int64")
    if "sets_block_count" in columns:
        frame["sets_block_count"] = frame["sets_block_count"].astype("boolean")
    if "suggested_gpu_memory_utilization" in columns:
        for column in ("gpu_memory_utilization", "suggested_gpu_memory_utilization"):
            frame[column] = frame[column].astype("Float64")
    return frame
