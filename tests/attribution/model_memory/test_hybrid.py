"""Mamba / gated delta-net hybrids: attention bytes per token, state bytes per sequence, vLLM's page alignment,
and the served dtype. Expected values are worked by hand from the public configs in the comments."""

from __future__ import annotations

from typing import Any

import pytest

from attribution.model_memory.config import UnsupportedModel
from attribution.model_memory.kv import kv_sizing
from tests.attribution.model_memory.configs import config, kv


def test_jamba_mamba_1_state_and_its_4_attention_layers() -> None:
    # attention where i % 8 == 4: layers 4, 12, 20, 28 → 4 attention, 28 Mamba-1
    # per attention layer: 2 × 8 KV heads × 128 × 2 B = 4,096 B a token → 4 × 4,096 = 16,384 B a token
    # Mamba-1 state: inner = 2 × 4096 = 8192; conv 3 × 8192 × 2 B = 49,152 + SSM 8192 × 16 × 2 B = 262,144
    #   = 311,296 B a layer; block = 16 × ⌈311,296 / (16 × 4,096)⌉ = 16 × 5 = 80 tokens; page 80 × 4,096 = 327,680
    # groups of min(4, 28) = 4 layers: 28 state slots × 327,680 B = 9,175,040 B a sequence
    sizing = kv("ai21labs/Jamba-v0.1")
    assert sizing.kv_bytes_per_token == 16_384
    assert sizing.layers_per_gpu == 4
    assert sizing.state_layers == 28
    assert sizing.block_size == 80
    assert sizing.state_bytes_per_seq == 9_175_040
    assert sizing.block_bytes == 4 * 327_680  # a block of the pool spans the 4 layer slots of a group
    assert "unpadded 8,716,288 B" in sizing.state_method  # 28 × 311,296
    assert "attn_layer_period 8, attn_layer_offset 4" in sizing.method


def test_bamba_mamba_2_groups_pad_its_29_state_layers_to_30_slots() -> None:
    # attn_layer_indices [9, 18, 27] → 3 attention, 29 Mamba-2; 3 × 4,096 = 12,288 B a token
    # Mamba-2: inner 2 × 4096 = 8192, conv dim 8192 + 2 × 1 group × 128 = 8,448; conv 3 × 8,448 × 2 = 50,688
    #   + SSM 128 heads × 64 × 128 × 2 = 2,097,152 → 2,147,840 B; block 16 × ⌈2,147,840 / 65,536⌉ = 16 × 33 = 528
    #   page 528 × 4,096 = 2,162,688; groups of 3: ⌈29 / 3⌉ × 3 = 30 slots × 2,162,688 = 64,880,640 B
    sizing = kv("ibm-ai-platform/Bamba-9B")
    assert (sizing.kv_bytes_per_token, sizing.state_layers, sizing.block_size) == (12_288, 29, 528)
    assert sizing.state_bytes_per_seq == 64_880_640
    assert sizing.block_bytes == 3 * 2_162_688


@pytest.mark.parametrize(
    ("tp", "per_token", "block", "per_seq"),
    [
        # TP 1: 4 attention × 4,096 = 16,384 B; conv dim 128 × 64 + 2 × 8 × 128 = 10,240: 3 × 10,240 × 2 = 61,440
        #   + SSM 128 × 64 × 128 × 2 = 2,097,152 → 2,158,592; block 16 × ⌈2,158,592 / 65,536⌉ = 528;
        #   24 M layers in groups of 4 → 24 slots × 528 × 4,096 = 51,904,512
        (1, 16_384, 528, 51_904_512),
        # TP 2: 4 KV heads → 2,048 B a layer-token, 8,192 a token; conv 3 × 5,120 × 2 = 30,720 + SSM 64 × 64 × 128
        #   × 2 = 1,048,576 → 1,079,296; block 16 × ⌈1,079,296 / 32,768⌉ = 528; 24 × 528 × 2,048 = 25,952,256
        (2, 8_192, 528, 25_952_256),
    ],
)
def test_nemotron_h_reads_its_pattern_and_splits_state_over_tp(
    tp: int, per_token: int, block: int, per_seq: int
) -> None:
    sizing = kv("nvidia/Nemotron-H-8B-Base-8K", tensor_parallel=tp)
    assert (sizing.kv_bytes_per_token, sizing.block_size, sizing.state_bytes_per_seq) == (per_token, block, per_seq)
    assert (sizing.layers_per_gpu, sizing.state_layers) == (4, 24)


def test_nemotron_h_groups_not_divisible_by_tp_are_replicated() -> None:
    # n_groups 1 at TP 2 become 2: conv dim (8192 + 2 × 2 × 128) / 2 = 4,352 → 3 × 4,352 × 2 = 26,112
    #   + SSM 64 × 64 × 128 × 2 = 1,048,576 → 1,074,688 B; block 16 × ⌈1,074,688 / 32,768⌉ = 528
    cfg = config("nvidia/Nemotron-H-8B-Base-8K") | {"n_groups": 1}
    sizing = kv_sizing(cfg, tensor_parallel=2)
    assert "conv 3 × 4352 × 2 B" in sizing.state_method
    assert "= 1,074,688 B" in sizing.state_method


def test_a_float32_ssm_cache_dtype_in_the_config_doubles_the_ssm_state() -> None:
    # conv 61,440 + SSM 128 × 64 × 128 × 4 = 4,194,304 → 4,255,744; block 16 × ⌈4,255,744 / 65,536⌉ = 16 × 65 = 1,040
    cfg = config("nvidia/Nemotron-H-8B-Base-8K") | {"mamba_ssm_cache_dtype": "float32"}
    sizing = kv_sizing(cfg)
    assert sizing.block_size == 1_040
    assert sizing.state_bytes_per_seq == 24 * 1_040 * 4_096
    assert sizing.kv_bytes_per_token == 16_384  # attention unchanged


def test_falcon_h1_keeps_attention_and_mamba_in_every_layer() -> None:
    # 44 attention + 44 Mamba-2; 2 KV heads × 128 × 2 × 2 = 1,024 B a layer-token → 44 × 1,024 = 45,056 B a token
    # mamba_d_ssm 3072, conv dim 3072 + 2 × 1 × 256 = 3,584: 3 × 3,584 × 2 = 21,504 + SSM 24 × 128 × 256 × 2
    #   = 1,572,864 → 1,594,368; block 16 × ⌈1,594,368 / 16,384⌉ = 16 × 98 = 1,568; page 1,568 × 1,024 = 1,605,632
    #   equal counts group by 44: 44 × 1,605,632 = 70,647,808 B a sequence
    sizing = kv("tiiuae/Falcon-H1-7B-Instruct")
    assert (sizing.kv_bytes_per_token, sizing.block_size, sizing.state_bytes_per_seq) == (45_056, 1_568, 70_647_808)
    assert (sizing.layers_per_gpu, sizing.state_layers) == (44, 44)


def test_qwen3_next_gated_delta_net_state() -> None:
    # full_attention_interval 4 → 12 full, 36 gated delta-net; 2 KV heads × 256 × 2 × 2 = 2,048 → 24,576 B a token
    # conv dim 2 × 16 × 128 + 32 × 128 = 8,192: 3 × 8,192 × 2 = 49,152 + recurrent 32 × 128 × 128 × 2 = 1,048,576
    #   → 1,097,728; block 16 × ⌈1,097,728 / 32,768⌉ = 16 × 34 = 544; page 544 × 2,048 = 1,114,112
    #   groups of 12: 36 slots × 1,114,112 = 40,108,032 B a sequence
    sizing = kv("qwen3-next-80b-a3b")
    assert (sizing.kv_bytes_per_token, sizing.block_size, sizing.state_bytes_per_seq) == (24_576, 544, 40_108_032)
    assert sizing.state_layers == 36
    assert "gated delta-net" in sizing.state_method


def test_an_fp8_kv_cache_halves_the_attention_but_not_the_state_dtype() -> None:
    # attention 1,024 B a layer-token; block 16 × ⌈1,097,728 / 16,384⌉ = 16 × 67 = 1,072; page 1,072 × 1,024 = 1,097,728
    sizing = kv("qwen3-next-80b-a3b", kv_cache_dtype="fp8")
    assert sizing.kv_bytes_per_token == 12_288
    assert sizing.block_size == 1_072
    assert sizing.state_bytes_per_seq == 36 * 1_097_728  # exactly one state a page, no padding
    assert "(0 B padding)" in sizing.state_method


def test_a_larger_requested_block_size_is_the_alignment_unit() -> None:
    # Jamba: 64 × ⌈311,296 / (64 × 4,096)⌉ = 64 × 2 = 128 tokens
    assert kv("ai21labs/Jamba-v0.1", block_size=64).block_size == 128


def test_granite_4_h_layer_types_name_mamba_and_attention_layers() -> None:
    cfg = config("ibm-ai-platform/Bamba-9B") | {"model_type": "granitemoehybrid", "attn_layer_indices": None}
    cfg["layer_types"] = ["mamba"] * 9 + ["attention"] + ["mamba"] * 22
    sizing = kv_sizing(cfg)
    # 1 attention + 31 Mamba-2 (bamba's state: 2,147,840 B, block 528): groups of 1 → 31 × 2,162,688
    assert (sizing.kv_bytes_per_token, sizing.state_layers) == (4_096, 31)
    assert sizing.state_bytes_per_seq == 31 * 2_162_688


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("nvidia/Nemotron-H-8B-Base-8K", {"hybrid_override_pattern": "M*M"}, "not a string of 52 layer marks"),
        ("ibm-ai-platform/Bamba-9B", {"attn_layer_indices": [40]}, "not a list of layer numbers below 32"),
        ("ibm-ai-platform/Bamba-9B", {"attn_layer_indices": []}, "0 attention and 32 state layers"),
        ("qwen3-next-80b-a3b", {"layer_types": ["full_attention"] * 47 + ["x"]}, "holds 'x'"),
        ("qwen3-next-80b-a3b", {"linear_num_value_heads": None}, "linear_num_value_heads is missing"),
        ("nvidia/Nemotron-H-8B-Base-8K", {"mamba_ssm_cache_dtype": "int4"}, "mamba_ssm_cache_dtype is 'int4'"),
    ],
)
def test_broken_hybrid_configs_are_refused_naming_the_field(name: str, change: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedModel, match=message):
        kv_sizing({k: v for k, v in (config(name) | change).items() if v is not None}, source=name)


def test_hybrids_refuse_pipeline_parallel_and_tp_that_splits_a_head() -> None:
    with pytest.raises(UnsupportedModel, match="pipeline_parallel 2"):
        kv("ai21labs/Jamba-v0.1", pipeline_parallel=2)
    with pytest.raises(ValueError, match="tensor_parallel 3 does not divide"):
        kv("ai21labs/Jamba-v0.1", tensor_parallel=3)


# --- the served dtype ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected", "name"),
    [
        ("auto", 131_072, "bfloat16"),
        ("float16", 131_072, "float16"),
        ("half", 131_072, "float16"),
        ("float32", 262_144, "float32"),
        ("float", 262_144, "float32"),
    ],
)
def test_the_served_dtype_sets_the_auto_kv_cache_dtype(dtype: str, expected: int, name: str) -> None:
    # Llama-3.1-8B: 2 × 32 layers × 8 KV heads × 128 × (2 or 4 B)
    sizing = kv("llama-3.1-8b", dtype=dtype)
    assert sizing.kv_bytes_per_token == expected
    assert f"({name})" in sizing.method


def test_an_explicit_kv_cache_dtype_ignores_the_served_dtype() -> None:
    assert kv("llama-3.1-8b", dtype="float32", kv_cache_dtype="fp8").kv_bytes_per_token == 65_536


def test_float32_serving_doubles_a_hybrids_attention_and_state() -> None:
    bf16, fp32 = kv("ai21labs/Jamba-v0.1"), kv("ai21labs/Jamba-v0.1", dtype="float32")
    # state 622,592 B a layer; block 16 × ⌈622,592 / (16 × 8,192)⌉ = 80; page 655,360; 28 × 655,360 = 18,350,080
    assert (fp32.kv_bytes_per_token, fp32.state_bytes_per_seq) == (32_768, 18_350_080)
    assert (fp32.kv_bytes_per_token, fp32.state_bytes_per_seq) == (
        2 * bf16.kv_bytes_per_token,
        2 * bf16.state_bytes_per_seq,
    )


def test_an_unknown_served_dtype_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="dtype 'int8' is not one of auto"):
        kv("llama-3.1-8b", dtype="int8")


def test_nemotron_h_attention_head_dim_is_its_head_size() -> None:
    # Nemotron-H 4B-style: hidden 3136 is no multiple of 40 heads, attention_head_dim 128 gives the head size
    odd = {"hidden_size": 3136, "num_attention_heads": 40}
    cfg = config("nvidia/Nemotron-H-8B-Base-8K") | odd | {"attention_head_dim": 128}
    assert kv_sizing(cfg).kv_bytes_per_token == 16_384  # 4 attention layers × 2 × 8 × 128 × 2 B
    with pytest.raises(UnsupportedModel, match="not a multiple of num_attention_heads"):
        kv_sizing(config("nvidia/Nemotron-H-8B-Base-8K") | odd)
