"""What to change: per server a KV budget that holds the observed peak plus headroom; across servers a
packing of the right-sized footprints onto GPUs; and what the idle part costs."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from common.units import GiB


def recommend(split: pd.DataFrame, *, headroom: float = 0.2, min_kv_bytes: int = 0) -> pd.DataFrame:
    """Per server and GPU: the KV budget to keep (peak used × (1 + headroom)), the reclaimable bytes, and
    the ``--gpu-memory-utilization`` that gives that budget (``--kv-cache-memory-bytes`` for recent vLLM).

    The utilisation is today's minus what is given back, over the GPU's memory: vLLM's budget is
    total × utilisation − (weights + activations + non-torch), so lowering it by the reclaimed share
    shrinks exactly the KV cache.

    For a Mamba / linear-attention hybrid (the split's ``kv_state_bytes_per_seq``) every running sequence
    also holds a fixed state in the same pool, so the budget kept never goes below one ``max_model_len``
    request with its state (vLLM refuses to start otherwise), is whole blocks of the pool, and the advice
    says how many sequences it serves.
    """
    out = split[["namespace", "pod", "model", "gpu_uuid"]].copy()
    keep: list[int | None] = []
    give_back: list[int | None] = []
    new_util: list[float | None] = []
    notes: list[str] = []
    for row in split.to_dict("records"):
        alloc, peak = _int(row["kv_allocated_bytes"]), _int(row["kv_used_max_bytes"])
        if alloc is None or peak is None:
            keep.append(None)
            give_back.append(None)
            new_util.append(None)
            notes.append("no recommendation: KV allocation or usage unknown")
            continue
        target = min(alloc, max(int(min_kv_bytes), math.ceil(peak * (1 + headroom))))
        state = _int(row.get("kv_state_bytes_per_seq"))
        hybrid = ""
        if state:
            target, hybrid = _hybrid_target(row, target, alloc, state)
        keep.append(target)
        give_back.append(alloc - target)
        util, gpu = _float(row["gpu_memory_utilization"]), _int(row["gpu_memory_bytes"])
        if util is None or not gpu:
            new_util.append(None)
            notes.append(f"set --kv-cache-memory-bytes {target} (current utilisation unknown){hybrid}")
        else:
            proposed = round(util - (alloc - target) / gpu, 3)
            new_util.append(proposed)
            notes.append(
                f"--gpu-memory-utilization {proposed:.3f} (or --kv-cache-memory-bytes {target}): keeps the peak KV "
                f"plus {headroom:.0%} headroom{hybrid}"
            )
    out["kv_keep_bytes"] = pd.array(keep, dtype="Int64")
    out["reclaimable_bytes"] = pd.array(give_back, dtype="Int64")
    out["recommended_gpu_memory_utilization"] = pd.array(new_util, dtype="Float64")
    out["recommendation"] = notes
    return out


def _hybrid_target(row: Mapping[Hashable, object], target: int, alloc: int, state: int) -> tuple[int, str]:
    """A hybrid's KV budget: at least one max_model_len request with its state, in whole blocks of the pool
    (never above today's), and a clause saying what the state costs per sequence."""
    per_token, max_len, block = (_int(row.get(k)) for k in ("kv_bytes_per_token", "max_model_len", "kv_block_bytes"))
    one = state + per_token * max_len if per_token is not None and max_len else None
    if one is not None:
        target = max(target, one)
    if block:
        target = -(-target // block) * block
    target = min(alloc, target)
    clause = f"; hybrid: each running sequence also holds {state / GiB:.3f} GiB of Mamba/linear-attention state"
    if one is not None and max_len is not None:
        clause += (
            f", so this budget serves {target // one} sequence(s) of {max_len:,} tokens at once "
            f"(at most {target // state} short ones)"
        )
    else:
        clause += f", so this budget serves at most {target // state} sequences at once (max_model_len unknown)"
    return target, clause


def _int(value: object) -> int | None:
    """A nullable frame cell as an int (pandas gives NA, NaN or a numpy scalar)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)  # type: ignore[call-overload,no-any-return]


def _float(value: object) -> float | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Item:
    """One server to place: ``ranks`` slices of ``bytes_per_gpu`` that must land on distinct GPUs."""

    name: str
    bytes_per_gpu: int
    ranks: int = 1


@dataclass(frozen=True)
class Packing:
    gpus_today: int
    gpus_needed: int
    placement: dict[str, list[int]]  # server -> GPU indexes in the plan
    refused: dict[str, str]  # server -> why it could not be moved (bigger than a GPU): it keeps its GPUs


def pack(items: Sequence[Item], gpu_bytes: int, gpus_today: int) -> Packing:
    """First-fit decreasing: largest footprint first, tensor-parallel servers as a whole (each rank on a
    different GPU). The result is an upper bound on the GPUs needed: FFD is within 11/9 of optimal."""
    free: list[int] = []
    placement: dict[str, list[int]] = {}
    refused: dict[str, str] = {}
    for item in sorted(items, key=lambda i: (i.bytes_per_gpu * i.ranks, i.ranks), reverse=True):
        if item.bytes_per_gpu > gpu_bytes:  # it stays where it is, and its GPUs are still needed
            refused[item.name] = (
                f"needs {item.bytes_per_gpu / GiB:.1f} GiB per GPU, more than a GPU's {gpu_bytes / GiB:.1f}: "
                f"stays on its {item.ranks} GPU(s)"
            )
            free.extend([0] * item.ranks)
            continue
        chosen: list[int] = []
        for index, space in enumerate(free):
            if len(chosen) == item.ranks:
                break
            if space >= item.bytes_per_gpu:
                chosen.append(index)
        while len(chosen) < item.ranks:
            free.append(gpu_bytes)
            chosen.append(len(free) - 1)
        for index in chosen:
            free[index] -= item.bytes_per_gpu
        placement[item.name] = chosen
    return Packing(gpus_today, len(free), placement, refused)


def costs(
    split: pd.DataFrame,
    recommendations: pd.DataFrame,
    *,
    price_per_gpu_hour: float,
    window_hours: float,
    teams: dict[tuple[str, str], str] | None = None,
    tokens: dict[tuple[str, str], float] | None = None,
) -> pd.DataFrame:
    """Money per server: the share of each GPU that sat in idle KV and that could be reclaimed, priced per
    GPU-hour over the window; with token counts, the cost per million tokens of the GPUs held. GPUs held
    count a MIG instance as its share of a GPU (``mig_share``) and a device shared by ``replicas``
    containers as that share over their number."""
    merged = split.merge(
        recommendations[["namespace", "pod", "gpu_uuid", "reclaimable_bytes"]], on=["namespace", "pod", "gpu_uuid"]
    )
    rows = []
    for (namespace, pod, model), group in merged.groupby(["namespace", "pod", "model"], sort=True):
        # a MIG instance is its share of a GPU; a device shared by N containers is 1/N of it to each
        device = group["mig_share"].astype("Float64") if "mig_share" in group else pd.Series(1.0, index=group.index)
        replicas = group["replicas"].astype("Float64") if "replicas" in group else pd.Series(1.0, index=group.index)
        gpu_bytes = group["gpu_memory_bytes"].astype("Float64")
        # bytes of a device over its size, times the device's share of a GPU: a share of a GPU
        idle_share = (group["kv_idle_bytes"].astype("Float64") / gpu_bytes * device).sum(skipna=True)
        reclaim_share = (group["reclaimable_bytes"].astype("Float64") / gpu_bytes * device).sum(skipna=True)
        gpus_held = float((device / replicas).sum())
        held_cost = gpus_held * price_per_gpu_hour * window_hours
        token_count = (tokens or {}).get((str(namespace), str(pod)))
        rows.append(
            {
                "namespace": namespace,
                "pod": pod,
                "model": model,
                "team": (teams or {}).get((str(namespace), str(pod)), ""),
                "gpus_held": gpus_held,
                "cost_held": held_cost,
                "cost_idle_kv": float(idle_share) * price_per_gpu_hour * window_hours,
                "cost_reclaimable": float(reclaim_share) * price_per_gpu_hour * window_hours,
                "tokens": token_count,
                "cost_per_million_tokens": (held_cost / (token_count / 1e6)) if token_count else None,
            }
        )
    return pd.DataFrame(rows)
