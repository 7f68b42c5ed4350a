"""The memory budget and the tokens of KV that fit, against the shipped vLLM fixture's logged figures."""

from __future__ import annotations

from typing import Any

import pytest

from attribution.model_memory.budget import concurrent_sequences, kv_capacity_tokens
from common.units import GiB


def test_a_1_gib_kv_budget_holds_the_logged_1_048_576_tokens() -> None:
    tokens = kv_capacity_tokens(
        gpu_memory_bytes=GiB,
        gpu_memory_utilization=1.0,
        weights_bytes_per_gpu=0,
        activation_peak_bytes=0,
        non_torch_bytes=0,
        kv_bytes_per_token=1024,
        block_size=128,
    )
    assert tokens == 1_048_576 == 8192 * 128


def test_capacity_follows_the_budget_formula_and_rounds_down_to_blocks() -> None:
    # 80 GiB × 0.9 − (15 + 1.5 + 0.5) GiB = 55 GiB; / 131,072 B = 450,560 tokens = 28,160 blocks of 16
    args = {
        "gpu_memory_bytes": 80 * GiB,
        "gpu_memory_utilization": 0.9,
        "weights_bytes_per_gpu": 15 * GiB,
        "activation_peak_bytes": 3 * GiB // 2,
        "non_torch_bytes": GiB // 2,
        "kv_bytes_per_token": 131_072,
    }
    assert kv_capacity_tokens(**args) == 450_560  # type: ignore[arg-type]
    assert kv_capacity_tokens(**(args | {"kv_bytes_per_token": 100_000}), block_size=16) == 590_544  # type: ignore[arg-type]


def test_weights_beyond_the_budget_leave_no_capacity() -> None:
    assert (
        kv_capacity_tokens(
            gpu_memory_bytes=24 * GiB,
            gpu_memory_utilization=0.9,
            weights_bytes_per_gpu=30 * GiB,
            activation_peak_bytes=0,
            non_torch_bytes=0,
            kv_bytes_per_token=1024,
        )
        == 0
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
        ({"weights_bytes_per_gpu": -1}, "weights_bytes_per_gpu"),
        ({"kv_bytes_per_token": 0}, "kv_bytes_per_token"),
    ],
)
def test_capacity_refuses_nonsense_inputs_naming_them(override: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "gpu_memory_bytes": GiB,
        "gpu_memory_utilization": 0.9,
        "weights_bytes_per_gpu": 0,
        "activation_peak_bytes": 0,
        "non_torch_bytes": 0,
        "kv_bytes_per_token": 1024,
    }
    with pytest.raises(ValueError, match=message):
        kv_capacity_tokens(**(args | override))


def test_a_hybrids_sequences_take_their_state_from_the_kv_budget() -> None:
    # 10 GiB budget; 100 sequences × 9,175,040 B (Jamba's state) = 917,504,000 B
    # (10,737,418,240 − 917,504,000) / (16,384 B × 80-token blocks = 1,310,720 B) = 7,492.0... → 7,492 blocks
    args: dict[str, Any] = {
        "gpu_memory_bytes": 10 * GiB,
        "gpu_memory_utilization": 1.0,
        "weights_bytes_per_gpu": 0,
        "activation_peak_bytes": 0,
        "non_torch_bytes": 0,
        "kv_bytes_per_token": 16_384,
        "block_size": 80,
    }
    assert kv_capacity_tokens(**args, state_bytes_per_seq=9_175_040, sequences=100) == 7_492 * 80
    assert kv_capacity_tokens(**args) == 8_192 * 80  # no state held: 10 GiB / 1,310,720 B
    assert kv_capacity_tokens(**args, state_bytes_per_seq=9_175_040, sequences=2_000) == 0


def test_concurrent_sequences_count_whole_blocks_and_the_state_of_each() -> None:
    # 4,096 tokens at 80-token blocks: ⌈4,096 / 80⌉ = 52 blocks × 80 × 16,384 B = 68,157,440 + 9,175,040 state
    #   = 77,332,480 B a sequence; 10 GiB / 77,332,480 = 138.8 → 138
    args = {"kv_budget": 10 * GiB, "kv_bytes_per_token": 16_384, "tokens_per_seq": 4_096, "block_size": 80}
    assert concurrent_sequences(**args, state_bytes_per_seq=9_175_040) == 138
    assert concurrent_sequences(**args) == 157  # 10 GiB / 68,157,440 = 157.5
    assert concurrent_sequences(**(args | {"kv_budget": -1})) == 0
    with pytest.raises(ValueError, match="tokens_per_seq"):
        concurrent_sequences(**(args | {"tokens_per_seq": 0}))
