"""gpuattr model-memory: JSON and text output, the capacity plan, flags from the environment, errors."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from attribution.model_memory.cli import main
from attribution.model_memory.config import load_config
from attribution.model_memory.weights import weight_sizing
from common.units import GiB
from tests.attribution.model_memory.configs import CONFIGS, VLLM_FIXTURE
from tests.attribution.test_safetensors_header import TINY, TINY_BYTES


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main([*args, "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_cli_json_carries_kv_and_weights_and_how_each_was_obtained(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--config", str(VLLM_FIXTURE))
    assert out["kv_bytes_per_token"] == 1024
    assert out["kv_method"].startswith("GQA: 2 (K and V) × 4 layers")
    assert out["weight_method"] == "estimate"
    assert out["weight_bytes"] == weight_sizing(load_config(VLLM_FIXTURE)).weight_bytes
    assert "architecture estimate" in out["weight_detail"]
    assert out["model_type"] == "llama"
    assert "capacity_tokens" not in out


def test_cli_plans_capacity_and_concurrency_for_a_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    weights = weight_sizing(load_config(VLLM_FIXTURE)).weight_bytes
    out = run_json(
        capsys,
        *("--config", str(VLLM_FIXTURE / "config.json"), "--gpu-memory", str(GiB + weights)),
        *("--gpu-memory-utilization", "1", "--activation-peak", "0", "--non-torch", "0B"),
        *("--block-size", "128", "--max-model-len", "1024"),
    )
    assert out["kv_budget_bytes"] == GiB
    assert out["capacity_tokens"] == 1_048_576
    assert out["max_concurrency"] == 1024.0
    assert out["kv_bytes_per_block"] == 128 * 1024


def test_cli_uses_the_safetensors_in_model_dir_and_splits_weights_over_ranks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_json(capsys, "--config", str(TINY), "--model-dir", str(TINY), "--tensor-parallel", "2")
    assert (out["weight_method"], out["weight_bytes"], out["weight_bytes_per_gpu"]) == ("safetensors", TINY_BYTES, 6736)
    assert out["kv_heads_per_gpu"] == 1


def test_cli_flags_default_from_gpuattr_environment_variables(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUATTR_MODEL_CONFIG", str(CONFIGS / "llama-3.1-70b.json"))
    monkeypatch.setenv("GPUATTR_TENSOR_PARALLEL", "8")
    monkeypatch.setenv("GPUATTR_KV_CACHE_DTYPE", "fp8")
    out = run_json(capsys)
    assert out["kv_bytes_per_token"] == 20_480


def test_cli_size_and_switch_flags_come_from_the_environment_and_the_command_line_wins(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUATTR_GPU_MEMORY", "80GiB")
    monkeypatch.setenv("GPUATTR_NON_TORCH", "0B")
    monkeypatch.setenv("GPUATTR_JSON", "yes")
    assert main(["--config", str(CONFIGS / "llama-3.1-8b.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["gpu_memory_bytes"], out["non_torch_bytes"]) == (80 * GiB, 0)
    assert main(["--config", str(CONFIGS / "llama-3.1-8b.json"), "--gpu-memory", "40GiB"]) == 0
    assert json.loads(capsys.readouterr().out)["gpu_memory_bytes"] == 40 * GiB


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GPUATTR_TENSOR_PARALLEL", "two", "GPUATTR_TENSOR_PARALLEL: 'two' is not valid: invalid literal for int()"),
        ("GPUATTR_GPU_MEMORY", "lots", "GPUATTR_GPU_MEMORY: 'lots' is not valid: not a size: 'lots'"),
        ("GPUATTR_JSON", "maybe", "GPUATTR_JSON: expected true or false, got 'maybe'"),
    ],
)
def test_cli_a_bad_environment_value_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["--config", str(VLLM_FIXTURE)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"gpuattr model-memory: {message}"), captured.err


def test_cli_gpu_defaults_are_stated_in_its_capacity_method(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--config", str(CONFIGS / "llama-3.1-8b.json"), "--gpu-memory", "80GiB")
    assert out["gpu_memory_utilization"] == 0.9
    assert out["activation_peak_bytes"] == 3 * GiB // 2
    assert out["non_torch_bytes"] == GiB // 2
    assert "activation peak 1.50 GiB + non-torch 0.50 GiB" in out["capacity_method"]
    assert 400_000 < out["capacity_tokens"] < 460_000


def test_cli_text_output_names_both_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--config", str(CONFIGS / "deepseek-v3.json"), "--tensor-parallel", "8", "--gpu-memory", "141GiB"]) == 0
    )
    text = capsys.readouterr().out
    assert "KV cache: 70,272 B per token per GPU" in text
    assert "(estimate)" in text
    assert "capacity:" in text


def test_cli_reports_kv_when_only_the_weights_cannot_be_sized(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--config", str(CONFIGS / "gemma-3-27b-it.json"))
    assert out["kv_bytes_per_token"] == 573_440
    assert out["weight_bytes"] is None
    assert "vocab_size is missing" in out["weight_detail"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--config is required"),
        (["--config", "/nonexistent/config.json"], "/nonexistent/config.json: no such file"),
        (
            ["--config", str(CONFIGS / "qwen3-next-80b-a3b.json"), "--gpu-memory", "80GiB"],
            "the weights of a qwen3_next hybrid are not estimated",
        ),
        (["--config", str(VLLM_FIXTURE), "--gpu-memory", "lots"], "--gpu-memory: not a size: 'lots'"),
        (["--config", str(VLLM_FIXTURE), "--tensor-parallel", "two"], "--tensor-parallel: invalid int value"),
        (["--config", str(VLLM_FIXTURE), "--kv-cache-dtype", "fp2"], "kv_cache_dtype 'fp2'"),
        (
            ["--config", str(CONFIGS / "gemma-3-27b-it.json"), "--gpu-memory", "80GiB"],
            r"text_config\.vocab_size is missing",
        ),
        (
            ["--config", str(VLLM_FIXTURE), "--gpu-memory", "80GiB", "--gpu-memory-utilization", "2"],
            "gpu_memory_utilization must be in",
        ),
    ],
)
def test_cli_errors_exit_2_naming_the_input(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuattr model-memory: ")
    assert re.search(message, err), err


def test_gpuattr_model_memory_runs_this_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from gpuattr.cli import main as gpuattr_main

    assert gpuattr_main(["model-memory", "--config", str(VLLM_FIXTURE), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_bytes_per_token"] == 1024


JAMBA = str(CONFIGS / "ai21labs" / "Jamba-v0.1")


def test_cli_plans_a_hybrids_capacity_with_the_state_of_its_running_sequences(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run_json(
        capsys,
        *("--config", JAMBA, "--gpu-memory", "11GiB", "--weights", "1GiB", "--gpu-memory-utilization", "1"),
        *("--activation-peak", "0", "--non-torch", "0B", "--max-num-seqs", "100", "--max-model-len", "4096"),
    )
    # Jamba (test_hybrid): 16,384 B a token, 9,175,040 B of state a sequence, 80-token blocks
    assert (out["kv_bytes_per_token"], out["state_bytes_per_seq"], out["block_size"]) == (16_384, 9_175_040, 80)
    assert out["kv_bytes_per_block"] == 80 * 16_384
    assert out["kv_budget_bytes"] == 10 * GiB
    # (10 GiB − 100 × 9,175,040 B) / (16,384 B × 80) = 7,492 blocks of 80 tokens (test_budget)
    assert out["capacity_tokens"] == 7_492 * 80
    assert "100 sequences × 9,175,040 B of state" in out["capacity_method"]
    assert out["max_concurrency"] == 138  # whole 4,096-token requests with their state (test_budget)


def test_cli_text_shows_a_hybrids_state_and_json_leaves_it_out_for_attention_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--config", JAMBA]) == 0
    text = capsys.readouterr().out
    assert "state: 9,175,040 B per sequence per GPU (28 Mamba / linear-attention layers)" in text
    assert "(1.25 MiB per 80-token block)" in text
    assert "state_bytes_per_seq" not in run_json(capsys, "--config", str(VLLM_FIXTURE))


@pytest.mark.parametrize(("dtype", "expected"), [("auto", 131_072), ("float16", 131_072), ("float32", 262_144)])
def test_cli_dtype_sets_the_auto_kv_cache_bytes(capsys: pytest.CaptureFixture[str], dtype: str, expected: int) -> None:
    out = run_json(capsys, "--config", str(CONFIGS / "llama-3.1-8b.json"), "--dtype", dtype)
    assert (out["dtype"], out["kv_bytes_per_token"]) == (dtype, expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "int8"], "dtype 'int8' is not one of auto"),
        (["--gpu-memory", "80GiB", "--weights", "1GiB", "--max-num-seqs", "0"], "--max-num-seqs must be at least 1"),
    ],
)
def test_cli_hybrid_and_dtype_errors_exit_2_naming_the_input(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["--config", JAMBA, *args]) == 2
    assert message in capsys.readouterr().err
