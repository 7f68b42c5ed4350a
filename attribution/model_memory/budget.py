"""vLLM's memory budget on one GPU, and how many tokens of KV cache fit in it.

``total × gpu_memory_utilization − (weights + activation peak + non-torch)`` is what vLLM gives the KV
cache (see ``docs/reference/vllm-memory.md`` §4); the defaults below stand in for figures only a running
server's start-up log has.
"""

from __future__ import annotations

import math

DEFAULT_UTILIZATION = 0.9  # vLLM's --gpu-memory-utilization default
DEFAULT_ACTIVATION_PEAK = "1.5GiB"  # vLLM logs ≈1.26 GiB for an 8B model at its default batch
DEFAULT_NON_TORCH_TP1 = "0.5GiB"  # non-torch memory at TP 1 (cuBLAS workspaces, allocator slack)
DEFAULT_NON_TORCH_TP = "2GiB"  # non-torch memory at TP > 1 (NCCL buffers)
DEFAULT_BLOCK_SIZE = 16  # tokens per KV block, vLLM's CUDA default


def kv_budget_bytes(
    *,
    gpu_memory_bytes: int,
    gpu_memory_utilization: float,
    weights_bytes_per_gpu: int,
    activation_peak_bytes: int,
    non_torch_bytes: int,
) -> int:
    """``total × utilization − (weights + activation peak + non-torch)`` in bytes (negative when it does not fit)."""
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    for name, value in (
        ("gpu_memory_bytes", gpu_memory_bytes),
        ("weights_bytes_per_gpu", weights_bytes_per_gpu),
        ("activation_peak_bytes", activation_peak_bytes),
        ("non_torch_bytes", non_torch_bytes),
    ):
        if value < 0:
            raise ValueError(f"{name} cannot be negative, got {value!r}")
    usable = math.floor(gpu_memory_bytes * gpu_memory_utilization)
    return usable - (weights_bytes_per_gpu + activation_peak_bytes + non_torch_bytes)


def kv_capacity_tokens(
    *,
    gpu_memory_bytes: int,
    gpu_memory_utilization: float,
    weights_bytes_per_gpu: int,
    activation_peak_bytes: int,
    non_torch_bytes: int,
    kv_bytes_per_token: int,
    block_size: int = 1,
    state_bytes_per_seq: int = 0,
    sequences: int = 0,
) -> int:
    """Tokens of KV cache that fit on one GPU: the KV budget (reference §4) over the bytes per token.

    A hybrid's ``sequences`` running at once each hold ``state_bytes_per_seq`` of Mamba / linear-attention
    state from the same pool, so the tokens are ``(budget − sequences × state) / bytes per token``.
    Rounded down to whole blocks of ``block_size`` tokens; 0 when weights, overheads and states exceed the budget.
    """
    if kv_bytes_per_token <= 0:
        raise ValueError(f"kv_bytes_per_token must be positive, got {kv_bytes_per_token!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size!r}")
    if state_bytes_per_seq < 0 or sequences < 0:
        raise ValueError(
            f"state_bytes_per_seq and sequences cannot be negative, got {state_bytes_per_seq!r}, {sequences!r}"
        )
    budget = kv_budget_bytes(
        gpu_memory_bytes=gpu_memory_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes_per_gpu=weights_bytes_per_gpu,
        activation_peak_bytes=activation_peak_bytes,
        non_torch_bytes=non_torch_bytes,
    )
    budget -= sequences * state_bytes_per_seq
    if budget <= 0:
        return 0
    return budget // (kv_bytes_per_token * block_size) * block_size


def concurrent_sequences(
    *,
    kv_budget: int,
    kv_bytes_per_token: int,
    tokens_per_seq: int,
    block_size: int = 1,
    state_bytes_per_seq: int = 0,
) -> int:
    """Whole sequences of ``tokens_per_seq`` tokens that fit in ``kv_budget`` bytes at once: each takes
    ``⌈tokens / block⌉`` blocks of attention KV plus its state (a hybrid's), ``budget // (state + blocks × block ×
    bytes per token)``; 0 when the budget is not positive."""
    if kv_bytes_per_token <= 0 or tokens_per_seq < 1 or block_size < 1 or state_bytes_per_seq < 0:
        raise ValueError(
            "kv_bytes_per_token, tokens_per_seq and block_size must be positive and state_bytes_per_seq not "
            f"negative, got {kv_bytes_per_token!r}, {tokens_per_seq!r}, {block_size!r}, {state_bytes_per_seq!r}"
        )
    if kv_budget <= 0:
        return 0
    per_seq = state_bytes_per_seq + -(-tokens_per_seq // block_size) * block_size * kv_bytes_per_token
    return kv_budget // per_seq
