"""Weight bytes: exact from safetensors headers, estimated for public models and quantisations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attribution.model_memory.config import UnsupportedModel
from attribution.model_memory.weights import weight_sizing
from attribution.safetensors_header import SafetensorsHeaderError
from common.units import GiB
from tests.attribution.model_memory.configs import config, kv
from tests.attribution.test_safetensors_header import (
    TINY,
    TINY_BYTES,
    TINY_CONFIG,
    build_tiny_llama,
    write_raw,
    write_safetensors,
)

# --- public models -------------------------------------------------------------------------------------


def test_llama_3_1_8b_weights_are_estimated_within_1_percent_of_14_99_gib() -> None:
    weights = weight_sizing(config("llama-3.1-8b"))
    assert weights.method == "estimate"
    assert weights.weight_bytes == 8_030_261_248 * 2  # the published parameter count, in bf16
    assert abs(weights.weight_bytes / GiB - 14.99) / 14.99 < 0.01
    assert "8.03 B parameters" in weights.detail
    assert "bfloat16" in weights.detail


def test_qwen2_5_7b_weights_count_its_qkv_biases() -> None:
    assert "7.62 B parameters" in weight_sizing(config("qwen2.5-7b")).detail  # published: 7.61 B (7,615,616,512)
    assert weight_sizing(config("qwen2.5-7b")).weight_bytes == 7_615_616_512 * 2


def test_mistral_7b_weights_are_about_7_24_b_parameters_or_13_5_gib() -> None:
    weights = weight_sizing(config("mistral-7b-v0.1"))
    assert "7.24 B parameters" in weights.detail
    assert abs(weights.weight_bytes / GiB - 13.5) / 13.5 < 0.02


def test_mixtral_counts_all_eight_experts_of_every_layer() -> None:
    weights = weight_sizing(config("mixtral-8x7b-v0.1"))
    assert "46.70 B parameters" in weights.detail  # published: 46.7 B
    assert "32 MoE layers of 8 experts × 14336" in weights.detail
    assert kv("mixtral-8x7b-v0.1").kv_bytes_per_token == 131_072


def test_deepseek_v3_weights_estimate_counts_671_b_parameters_in_fp8_blocks() -> None:
    weights = weight_sizing(config("deepseek-v3"))
    assert "671.03 B parameters" in weights.detail  # published: 671 B plus a 14 B MTP module
    assert "multi-token-prediction layer(s) not counted" in weights.detail
    assert "F32 scale per 128×128 block" in weights.detail
    assert 620 * GiB < weights.weight_bytes < 640 * GiB  # ≈1 B per parameter, bf16 embeddings and norms
    unquantised = config("deepseek-v3")
    del unquantised["quantization_config"]
    assert weight_sizing(unquantised).weight_bytes == pytest.approx(2 * 671.03e9, rel=1e-3)


def test_gpt_oss_weights_quantise_only_the_experts_to_mxfp4() -> None:
    weights = weight_sizing(config("gpt-oss-20b"))
    assert "20.91 B parameters" in weights.detail  # published: 21 B total
    assert "mxfp4" in weights.detail
    assert 12 * GiB < weights.weight_bytes < 14 * GiB  # the checkpoint is ≈13.8 GB


def test_gemma_3_weights_are_refused_naming_the_missing_vocab_size() -> None:
    with pytest.raises(UnsupportedModel, match=r"text_config\.vocab_size is missing"):
        weight_sizing(config("gemma-3-27b-it"))


@pytest.mark.parametrize(
    "name", ["ai21labs/Jamba-v0.1", "ibm-ai-platform/Bamba-9B", "qwen3-next-80b-a3b", "tiiuae/Falcon-H1-7B-Instruct"]
)
def test_a_hybrids_weights_are_not_estimated_and_the_sentence_says_what_would_size_them(name: str) -> None:
    with pytest.raises(UnsupportedModel) as refused:
        weight_sizing(config(name))
    message = str(refused.value)
    assert "hybrid are not estimated, because" in message and "*.safetensors" in message and "\n" not in message


# --- checkpoints and quantisation ----------------------------------------------------------------------


def test_safetensors_headers_give_the_exact_weight_bytes() -> None:
    weights = weight_sizing(TINY_CONFIG, TINY)
    assert weights.weight_bytes == TINY_BYTES
    assert weights.method == "safetensors"
    assert "headers of 2 shards" in weights.detail
    assert "model.safetensors.index.json" in weights.detail


def test_the_estimate_matches_the_exact_bytes_of_a_llama_layout() -> None:
    estimate = weight_sizing(TINY_CONFIG)
    assert estimate.method == "estimate"
    assert estimate.weight_bytes == TINY_BYTES


def test_multi_token_prediction_layers_are_left_out_of_the_exact_bytes(tmp_path: Path) -> None:
    build_tiny_llama(tmp_path)
    write_safetensors(tmp_path / "mtp.safetensors", {"model.layers.2.eh_proj.weight": ("BF16", [16, 32])})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.2.eh_proj.weight"] = "mtp.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with_mtp = TINY_CONFIG | {"num_nextn_predict_layers": 1}
    weights = weight_sizing(with_mtp, tmp_path)
    assert weights.weight_bytes == TINY_BYTES
    assert "left out 1 tensors" in weights.detail
    assert weight_sizing(TINY_CONFIG, tmp_path).weight_bytes == TINY_BYTES + 16 * 32 * 2


def test_a_directory_without_safetensors_falls_back_to_the_estimate_and_says_so(tmp_path: Path) -> None:
    weights = weight_sizing(TINY_CONFIG, tmp_path)
    assert weights.method == "estimate"
    assert weights.detail.startswith(f"no *.safetensors in {tmp_path}; architecture estimate")


def test_a_broken_shard_is_an_error_not_an_estimate(tmp_path: Path) -> None:
    write_raw(tmp_path / "model.safetensors", b"{", length=2**40)
    with pytest.raises(SafetensorsHeaderError, match=r"model\.safetensors: header length"):
        weight_sizing(TINY_CONFIG, tmp_path)


def test_awq_int4_weights_take_half_a_byte_plus_group_scales_and_zeros() -> None:
    cfg = TINY_CONFIG | {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 8, "zero_point": True}}
    # per linear: in×out/2 + (in/8)×out×2 (fp16 scales) + (in/8)×out/2 (packed zeros) = in×out × (1/2 + 1/4 + 1/16)
    linear_params = 2 * (16 * 16 + 2 * 8 * 16 + 16 * 16 + 3 * 32 * 16)
    plain_params = 2 * 64 * 16 + 2 * 2 * 16 + 16
    expected = linear_params * 13 // 16 + plain_params * 2
    assert weight_sizing(cfg).weight_bytes == expected


def test_the_public_awq_llama_8b_is_about_a_third_of_bf16() -> None:
    awq, bf16 = weight_sizing(config("llama-3.1-8b-instruct-awq-int4")), weight_sizing(config("llama-3.1-8b"))
    assert 0.3 < awq.weight_bytes / bf16.weight_bytes < 0.4
    assert "awq int4" in awq.detail
    assert "embeddings, lm_head, norms, routers in float16" in awq.detail


def test_bitsandbytes_4bit_and_fp8_per_tensor_are_estimated() -> None:
    bnb = weight_sizing(TINY_CONFIG | {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}})
    fp8 = weight_sizing(TINY_CONFIG | {"quantization_config": {"quant_method": "fp8"}})
    assert "bitsandbytes 4-bit" in bnb.detail
    assert bnb.weight_bytes < fp8.weight_bytes < TINY_BYTES


def test_an_unknown_quantisation_is_refused_rather_than_guessed() -> None:
    cfg = TINY_CONFIG | {"quantization_config": {"quant_method": "exl9"}}
    with pytest.raises(UnsupportedModel, match="quant_method 'exl9' is not sized here"):
        weight_sizing(cfg)


def test_the_weight_estimate_follows_the_served_dtype() -> None:
    # every unquantised parameter takes 4 B instead of 2 B when served as float32
    bf16 = weight_sizing(config("llama-3.1-8b"))
    fp32 = weight_sizing(config("llama-3.1-8b"), dtype="float32")
    assert fp32.weight_bytes == 2 * bf16.weight_bytes
    assert "served as --dtype float32" in fp32.detail
    assert weight_sizing(config("llama-3.1-8b"), dtype="float16").weight_bytes == bf16.weight_bytes
