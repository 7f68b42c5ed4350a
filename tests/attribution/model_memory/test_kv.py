"""KV cache bytes per token per GPU: the shipped vLLM fixture, public models, hybrids and hostile configs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution.model_memory.config import UnsupportedModel, load_config
from attribution.model_memory.kv import kv_sizing
from attribution.model_memory.weights import weight_sizing
from common.units import GiB
from tests.attribution.model_memory.configs import PER_LAYER, VLLM_FIXTURE, config, kv, small

# --- the shipped vLLM 0.32 fixture ---------------------------------------------------------------------


def test_shipped_fixture_config_has_1024_kv_bytes_per_token() -> None:
    sizing = kv_sizing(load_config(VLLM_FIXTURE), source=str(VLLM_FIXTURE))
    assert sizing.kv_bytes_per_token == 1024
    assert (sizing.attention, sizing.layers_per_gpu, sizing.kv_heads_per_gpu, sizing.head_dim) == ("gqa", 4, 2, 32)
    assert sizing.dtype_bytes == 2
    assert "2 (K and V) × 4 layers × 2 KV heads × head_dim 32 × 2 B (bfloat16) = 1,024 B" in sizing.method


def test_shipped_fixture_blocks_times_page_bytes_are_the_logged_kv_cache_memory() -> None:
    per_token = kv_sizing(load_config(VLLM_FIXTURE / "config.json")).kv_bytes_per_token
    assert 8192 * 128 * per_token == 1_073_741_824 == GiB


# --- public models -------------------------------------------------------------------------------------


def test_llama_3_1_8b_holds_131072_bytes_per_token_and_2_mib_per_16_token_block() -> None:
    sizing = kv("llama-3.1-8b")
    assert sizing.kv_bytes_per_token == 131_072
    assert sizing.kv_bytes_per_token * 16 == 2 * 2**20
    assert sizing.attention == "gqa"


@pytest.mark.parametrize(
    ("tp", "expected", "heads"), [(1, 327_680, 8), (2, 163_840, 4), (8, 40_960, 1), (16, 40_960, 1)]
)
def test_llama_3_1_70b_splits_kv_heads_over_tp_and_replicates_them_beyond_8(tp: int, expected: int, heads: int) -> None:
    sizing = kv("llama-3.1-70b", tensor_parallel=tp)
    assert (sizing.kv_bytes_per_token, sizing.kv_heads_per_gpu) == (expected, heads)
    if tp == 16:
        assert "replicated over TP 16" in sizing.method


def test_qwen2_5_7b_holds_57344_bytes_per_token_and_ignores_its_disabled_sliding_window() -> None:
    sizing = kv("qwen2.5-7b")
    assert sizing.kv_bytes_per_token == 57_344
    assert "sliding" not in sizing.method


def test_qwen2_5_7b_cannot_split_its_28_heads_over_tp_8() -> None:
    with pytest.raises(ValueError, match=r"tensor_parallel 8 does not divide the 28 attention heads of qwen2\.5-7b"):
        kv("qwen2.5-7b", tensor_parallel=8)


def test_mistral_7b_holds_131072_bytes_per_token_and_says_its_window_does_not_change_that() -> None:
    sizing = kv("mistral-7b-v0.1")
    assert sizing.kv_bytes_per_token == 131_072
    assert "sliding window 4096 on every layer" in sizing.method


@pytest.mark.parametrize("tp", [1, 8, 16])
def test_deepseek_v3_mla_latent_is_70272_bytes_per_token_on_every_tp_rank(tp: int) -> None:
    sizing = kv("deepseek-v3", tensor_parallel=tp)
    assert sizing.kv_bytes_per_token == (512 + 64) * 61 * 2 == 70_272
    assert (sizing.attention, sizing.kv_heads_per_gpu, sizing.head_dim) == ("mla", None, None)
    assert "no K/V factor 2" in sizing.method


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mistral-7b-v0.1", "deepseek-v3"])
@pytest.mark.parametrize("fp8", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_an_fp8_kv_cache_halves_the_bf16_bytes(name: str, fp8: str) -> None:
    bf16, quantised = kv(name), kv(name, kv_cache_dtype=fp8)
    assert quantised.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert quantised.dtype_bytes == 1


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mistral-7b-v0.1"])
def test_pipeline_parallel_2_halves_the_layers_on_each_gpu(name: str) -> None:
    whole, half = kv(name), kv(name, pipeline_parallel=2)
    assert half.layers_per_gpu * 2 == whole.layers_per_gpu
    assert half.kv_bytes_per_token * 2 == whole.kv_bytes_per_token


def test_an_uneven_pipeline_split_counts_the_largest_stage_and_says_so() -> None:
    sizing = kv("deepseek-v3", pipeline_parallel=2)  # 61 layers
    assert sizing.layers_per_gpu == 31
    assert sizing.kv_bytes_per_token == 576 * 31 * 2
    assert "largest stage" in sizing.method


def test_gpt_oss_sliding_and_full_layers_group_without_padding() -> None:
    sizing = kv("gpt-oss-20b")
    assert sizing.kv_bytes_per_token == 2 * 24 * 8 * 64 * 2 == 49_152
    assert "12 full + 12 sliding layers grouped by 12" in sizing.method
    assert "no padding" in sizing.method


def test_gemma_3_counts_the_padding_layers_of_its_5_to_1_hybrid() -> None:
    sizing = kv("gemma-3-27b-it")  # 62 layers: 52 sliding, 10 full; groups of 10 → 60 + 10 slots
    assert sizing.layers_per_gpu == 70
    assert sizing.kv_bytes_per_token == 2 * 70 * 16 * 128 * 2 == 573_440
    assert "8 padding layers" in sizing.method
    assert "gemma3_text's default pattern" in sizing.method
    assert kv("gemma-3-27b-it", tensor_parallel=2).kv_bytes_per_token == 573_440 // 2


def test_gemma_3_reads_its_dtype_from_the_top_level_of_a_multimodal_config() -> None:
    assert kv("gemma-3-27b-it").dtype_bytes == 2
    assert "bfloat16" in kv("gemma-3-27b-it").method


def test_a_hybrid_with_pipeline_parallel_is_refused() -> None:
    with pytest.raises(UnsupportedModel, match=r"gemma-3-27b-it: hybrid attention .* pipeline_parallel 2"):
        kv("gemma-3-27b-it", pipeline_parallel=2)


def test_qwen3_next_weights_are_still_refused_naming_why() -> None:
    with pytest.raises(UnsupportedModel, match="the weights of a qwen3_next hybrid are not estimated, because"):
        weight_sizing(config("qwen3-next-80b-a3b"))


# --- hybrids, sliding windows, odd attention -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"layer_types": ["full_attention"] * 6 + ["linear_attention"] * 6}, "holds 'linear_attention'"),
        ({"layer_types": ["mamba"] * 12}, "holds 'mamba'"),
        ({"layer_types": ["full_attention"] * 5}, "not a list of 12 layer types"),
        ({"layers_block_type": ["attention", "mamba"] * 6}, "layers_block_type is set"),
        ({"hybrid_override_pattern": "M-M-M*"}, "hybrid_override_pattern is set"),
        ({"model_type": "zamba2"}, "model_type 'zamba2'"),
        ({"model_type": "jamba"}, "attn_layer_period is missing"),
        ({"model_type": "falcon_h1"}, "mamba_n_heads is missing"),
        ({"sliding_window": 4096, "model_type": "somethingnew"}, "which layers slide is unknown"),
        ({"attention_chunk_size": 8192}, "chunked attention"),
        ({"num_kv_shared_layers": 10}, "sharing KV"),
        ({"index_topk": 2048, "kv_lora_rank": 512, "qk_rope_head_dim": 64}, "indexer cache"),
        ({"is_encoder_decoder": True}, "encoder-decoder"),
        ({"num_hidden_layers": None}, "num_hidden_layers is missing"),
        ({"num_attention_heads": None}, "num_attention_heads is missing"),
        ({"head_dim": None, "hidden_size": None}, "hidden_size is missing"),
        ({"head_dim": None, "hidden_size": 500}, "not a multiple of num_attention_heads"),
        ({"num_key_value_heads": 3}, "does not divide num_attention_heads"),
        ({"num_hidden_layers": "32"}, "num_hidden_layers is '32', not an integer"),
        ({"num_hidden_layers": 0}, "must be at least 1"),
        ({"torch_dtype": "int8"}, "torch_dtype is 'int8'"),
        ({"kv_lora_rank": 512}, "qk_rope_head_dim is missing"),
    ],
)
def test_unsized_or_broken_configs_are_refused_naming_the_field_and_why(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(UnsupportedModel, match=reason) as caught:
        kv_sizing(small(**fields), source="models/x/config.json")
    assert str(caught.value).startswith("models/x/config.json: ")


def test_gemma_2_alternates_sliding_and_full_layers_without_padding() -> None:
    sizing = kv_sizing(small(model_type="gemma2", num_hidden_layers=42, sliding_window=4096))
    assert sizing.kv_bytes_per_token == 42 * PER_LAYER
    assert "21 full + 21 sliding" in sizing.method


def test_an_explicit_sliding_window_pattern_pads_the_sliding_groups() -> None:
    sizing = kv_sizing(small(model_type="cohere2", num_hidden_layers=10, sliding_window=512, sliding_window_pattern=4))
    # full layers 3 and 7 → 2 full, 8 sliding → groups of 2, no padding; pattern 4 of 14 layers pads
    assert sizing.kv_bytes_per_token == 10 * PER_LAYER
    padded = kv_sizing(small(num_hidden_layers=14, sliding_window=512, sliding_window_pattern=4))
    # 3 full, 11 sliding → groups of 3: 3 + 12 = 15 slots
    assert padded.layers_per_gpu == 15
    assert padded.kv_bytes_per_token == 15 * PER_LAYER
    assert "1 padding layer," in padded.method


def test_nearly_balanced_layer_kinds_group_by_the_larger_count() -> None:
    types = ["sliding_attention"] * 12 + ["full_attention"] * 13  # vLLM's example: gpt-oss + eagle
    sizing = kv_sizing(small(num_hidden_layers=25, layer_types=types, sliding_window=128))
    assert sizing.layers_per_gpu == 26
    assert "grouped by 13" in sizing.method


def test_qwen2_sliding_layers_start_at_max_window_layers() -> None:
    sizing = kv_sizing(
        small(model_type="qwen2", sliding_window=4096, use_sliding_window=True, max_window_layers=4)
    )  # 4 full, 8 sliding → groups of 4, no padding
    assert sizing.kv_bytes_per_token == 12 * PER_LAYER
    assert "4 full + 8 sliding" in sizing.method


def test_missing_kv_heads_mean_multi_head_attention() -> None:
    sizing = kv_sizing(small(num_key_value_heads=None))
    assert sizing.attention == "mha"
    assert sizing.kv_bytes_per_token == 2 * 12 * 8 * 64 * 2
    assert "num_key_value_heads absent" in sizing.method


def test_multi_query_configs_keep_one_kv_head() -> None:
    starcoder = {"model_type": "gpt_bigcode", "n_layer": 40, "n_head": 48, "n_embd": 6144, "multi_query": True}
    sizing = kv_sizing(starcoder | {"torch_dtype": "float16"})
    assert sizing.attention == "mqa"
    assert sizing.kv_bytes_per_token == 2 * 40 * 1 * 128 * 2


def test_a_float32_or_missing_dtype_is_served_in_16_bit_as_vllm_does() -> None:
    for fields in ({"torch_dtype": "float32"}, {"torch_dtype": None}, {"torch_dtype": None, "dtype": "float32"}):
        sizing = kv_sizing(small(**fields))
        assert sizing.dtype_bytes == 2
        assert "16-bit" in sizing.method
    assert kv_sizing(small(), kv_cache_dtype="float32").dtype_bytes == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kv_cache_dtype": "int3"}, "kv_cache_dtype 'int3'"),
        ({"tensor_parallel": 0}, "tensor_parallel must be a positive integer"),
        ({"pipeline_parallel": -1}, "pipeline_parallel must be a positive integer"),
        ({"pipeline_parallel": 13}, "pipeline_parallel 13 exceeds the 12 layers"),
        ({"tensor_parallel": 3}, "tensor_parallel 3 does not divide the 8 attention heads"),
    ],
)
def test_impossible_serving_settings_are_value_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kv_sizing(small(), **kwargs)


# --- properties ----------------------------------------------------------------------------------------


_KEYS = st.sampled_from(
    [
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_size",
        "torch_dtype",
        "dtype",
        "kv_lora_rank",
        "qk_rope_head_dim",
        "sliding_window",
        "sliding_window_pattern",
        "use_sliding_window",
        "max_window_layers",
        "layer_types",
        "model_type",
        "multi_query",
        "n_layer",
        "n_head",
        "attention_chunk_size",
        "is_encoder_decoder",
        "layers_block_type",
    ]
)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=64),
    st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.sampled_from(["bfloat16", "float32", "float16", "gemma2", "gemma3_text", "mistral", "qwen2", "torch.bfloat16"]),
    st.lists(st.sampled_from(["full_attention", "sliding_attention", "chunked_attention", "mamba", 3]), max_size=10),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_FLAT = st.dictionaries(st.one_of(_KEYS, st.text(max_size=8)), _VALUES, max_size=14)
_PLAUSIBLE = st.fixed_dictionaries(
    {
        "num_hidden_layers": st.integers(1, 80),
        "num_attention_heads": st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]),
        "num_key_value_heads": st.sampled_from([1, 2, 4, 8]),
        "head_dim": st.sampled_from([64, 128]),
        "torch_dtype": st.sampled_from(["bfloat16", "float16", "float32"]),
    },
    optional={
        "model_type": st.sampled_from(["llama", "gemma2", "gemma3_text", "mistral", "qwen2", "cohere2"]),
        "sliding_window": st.sampled_from([None, 0, 128, 4096]),
        "sliding_window_pattern": st.integers(1, 8),
        "kv_lora_rank": st.sampled_from([256, 512]),
        "qk_rope_head_dim": st.sampled_from([32, 64]),
    },
)
# Plausible configs with a few fields overwritten by anything, so that some succeed and some do not.
_NOISY = st.builds(lambda base, noise: {**base, **noise}, _PLAUSIBLE, st.dictionaries(_KEYS, _VALUES, max_size=3))
_CONFIGS = st.one_of(_FLAT, _NOISY, _NOISY.map(lambda d: {"text_config": d}), st.builds(dict, text_config=_VALUES))


@settings(max_examples=400, deadline=None)
@given(cfg=_CONFIGS, kv_dtype=st.sampled_from(["auto", "fp8", "bfloat16", "nope"]))
def test_arbitrary_configs_raise_only_value_errors_and_kv_never_grows_with_tp(cfg: Any, kv_dtype: str) -> None:
    sizes = []
    for tp in (1, 2, 3, 4, 8, 16, 64):
        try:
            sizing = kv_sizing(cfg, tensor_parallel=tp, kv_cache_dtype=kv_dtype)
        except ValueError:  # UnsupportedModel is one
            continue
        assert sizing.kv_bytes_per_token > 0
        sizes.append(sizing.kv_bytes_per_token)
    assert sizes == sorted(sizes, reverse=True)


@settings(max_examples=200, deadline=None)
@given(
    layers=st.integers(1, 128),
    heads_log=st.integers(0, 7),
    kv_log=st.integers(0, 7),
    head_dim=st.sampled_from([32, 64, 80, 128, 256]),
    pp=st.integers(1, 8),
)
def test_valid_gqa_configs_never_gain_kv_bytes_per_gpu_as_tp_grows(
    layers: int, heads_log: int, kv_log: int, head_dim: int, pp: int
) -> None:
    heads, kv_heads = 2**heads_log, 2 ** min(kv_log, heads_log)
    cfg = small(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim)
    sizes = [
        kv_sizing(cfg, tensor_parallel=2**t, pipeline_parallel=min(pp, layers)).kv_bytes_per_token
        for t in range(heads_log + 1)
    ]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] > 0
