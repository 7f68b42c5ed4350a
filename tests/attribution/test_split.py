"""The split, the recommendations, the packing plan and the costs, on servers with known figures."""

from __future__ import annotations

import pandas as pd
import pytest

from attribution.recommend import Item, costs, pack, recommend
from attribution.split import ServerGpu, split

GiB = 2**30


def _llama8b(**overrides: object) -> ServerGpu:
    base = {
        "namespace": "llm",
        "pod": "vllm-llama-8b-0",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "gpu_uuid": "GPU-0",
        "gpu_memory_bytes": 80 * GiB,
        "total_bytes": 72 * GiB,
        "kv_usage_p50": 0.05,
        "kv_usage_p95": 0.15,
        "kv_usage_max": 0.2,
        "kv_allocated_bytes": 54 * GiB,
        "weights_bytes_log": 15 * GiB,
        "gpu_memory_utilization": 0.9,
    }
    base.update(overrides)
    return ServerGpu(**base)  # type: ignore[arg-type]


def test_the_four_parts_add_up_to_what_nvml_shows() -> None:
    row = split([_llama8b()]).iloc[0]
    assert row["weights_bytes"] == 15 * GiB and row["weights_source"] == "log"
    assert row["kv_allocated_bytes"] == 54 * GiB
    assert row["kv_used_max_bytes"] == round(54 * GiB * 0.2)
    assert row["kv_idle_bytes"] == 54 * GiB - round(54 * GiB * 0.2)
    assert row["overhead_bytes"] == 3 * GiB
    parts = row["weights_bytes"] + row["kv_used_max_bytes"] + row["kv_idle_bytes"] + row["overhead_bytes"]
    assert parts == row["total_bytes"]


def test_kv_allocation_falls_back_to_blocks_times_page_bytes_and_says_so() -> None:
    row = split(
        [_llama8b(kv_allocated_bytes=None, num_gpu_blocks=27_648, block_size=16, kv_bytes_per_token=131_072)]
    ).iloc[0]
    assert row["kv_allocated_bytes"] == 27_648 * 16 * 131_072
    assert "num_gpu_blocks" in row["kv_allocated_source"]


def test_weights_from_the_model_are_split_over_tensor_parallel_ranks_and_the_assumption_is_stated() -> None:
    row = split(
        [
            _llama8b(
                weights_bytes_log=None,
                weights_bytes_model=130 * GiB,
                weights_model_method="safetensors",
                tensor_parallel=2,
            )
        ]
    ).iloc[0]
    assert row["weights_bytes"] == 65 * GiB and row["weights_source"] == "safetensors"
    assert "2 ranks" in row["assumptions"]


def test_missing_inputs_stay_missing_and_are_named() -> None:
    row = split([_llama8b(weights_bytes_log=None, kv_usage_max=None, kv_usage_p50=None, kv_usage_p95=None)]).iloc[0]
    assert pd.isna(row["weights_bytes"]) and pd.isna(row["kv_idle_bytes"]) and pd.isna(row["overhead_bytes"])
    assert "no weights figure" in row["assumptions"] and "no KV usage" in row["assumptions"]


def test_inputs_that_disagree_are_flagged_not_hidden() -> None:
    row = split([_llama8b(total_bytes=60 * GiB)]).iloc[0]
    assert row["overhead_bytes"] == 0
    assert "inputs disagree" in row["assumptions"]


def test_the_recommendation_keeps_the_peak_plus_headroom_and_lowers_utilisation_by_what_it_gives_back() -> None:
    frame = split([_llama8b()])
    rec = recommend(frame, headroom=0.25).iloc[0]
    peak = round(54 * GiB * 0.2)
    assert rec["kv_keep_bytes"] == -(-peak * 125 // 100)
    assert rec["reclaimable_bytes"] == 54 * GiB - rec["kv_keep_bytes"]
    assert rec["recommended_gpu_memory_utilization"] == pytest.approx(
        0.9 - rec["reclaimable_bytes"] / (80 * GiB), abs=1e-3
    )
    full = recommend(split([_llama8b(kv_usage_max=0.97)]), headroom=0.2).iloc[0]
    assert full["reclaimable_bytes"] == 0  # a full cache keeps everything it has


def test_first_fit_decreasing_packs_right_sized_servers_and_keeps_tensor_parallel_ranks_apart() -> None:
    items = [Item(f"s{i}", 20 * GiB) for i in range(12)] + [Item("tp2", 60 * GiB, ranks=2)]
    plan = pack(items, 80 * GiB, gpus_today=14)
    assert plan.gpus_needed == 5  # 12 × 20 GiB on 3 GPUs, and the TP pair on 2 more
    assert len(set(plan.placement["tp2"])) == 2
    too_big = pack([Item("huge", 90 * GiB, ranks=2), Item("small", 10 * GiB)], 80 * GiB, gpus_today=3)
    assert "more than a GPU" in too_big.refused["huge"]
    assert too_big.gpus_needed == 3  # what cannot move keeps its 2 GPUs, and nothing else lands on them


def test_costs_price_the_idle_and_reclaimable_share_and_tokens() -> None:
    frame = split([_llama8b()])
    rec = recommend(frame, headroom=0.2)
    out = costs(
        frame,
        rec,
        price_per_gpu_hour=2.0,
        window_hours=24,
        teams={("llm", "vllm-llama-8b-0"): "search"},
        tokens={("llm", "vllm-llama-8b-0"): 48e6},
    ).iloc[0]
    assert out["cost_held"] == pytest.approx(48.0)
    idle_share = (54 * GiB - round(54 * GiB * 0.2)) / (80 * GiB)
    assert out["cost_idle_kv"] == pytest.approx(idle_share * 48.0)
    assert out["cost_per_million_tokens"] == pytest.approx(1.0)
    assert out["team"] == "search"


def test_servers_are_packed_only_onto_gpus_of_their_own_kind() -> None:
    from attribution.job import plan

    h100 = [
        _llama8b(
            pod=f"h100-{i}",
            gpu_uuid=f"GPU-h{i}",
            total_bytes=30 * GiB,
            kv_allocated_bytes=12 * GiB,
            weights_bytes_log=15 * GiB,
            kv_usage_max=1.0,
        )
        for i in range(4)
    ]
    l4 = [
        _llama8b(
            pod=f"l4-{i}",
            gpu_uuid=f"GPU-l{i}",
            gpu_memory_bytes=24 * GiB,
            total_bytes=20 * GiB,
            kv_allocated_bytes=4 * GiB,
            weights_bytes_log=15 * GiB,
            kv_usage_max=1.0,
        )
        for i in range(2)
    ]
    frame = split(h100 + l4)
    packing = plan(frame, recommend(frame))
    assert packing is not None
    # two 30 GiB servers per 80 GiB H100; each 20 GiB server needs its own 24 GiB L4 (never an H100 slot)
    assert (packing.gpus_today, packing.gpus_needed) == (6, 4)


def test_logged_parts_of_the_overhead_are_shown() -> None:
    row = split([_llama8b(activation_peak_bytes=GiB, non_torch_bytes=GiB // 2, cuda_graph_bytes=GiB // 4)]).iloc[0]
    assert (row["overhead_activation_bytes"], row["overhead_non_torch_bytes"], row["overhead_cuda_graph_bytes"]) == (
        GiB,
        GiB // 2,
        GiB // 4,
    )
