"""Model memory from a Hugging Face ``config.json``: KV bytes per token per GPU, weight bytes, KV capacity.

The rules follow vLLM (see ``docs/reference/vllm-memory.md`` §3–4). The package is split by responsibility:

* :mod:`~attribution.model_memory.config` reads a config.json and normalises the language model's fields
  (:class:`ConfigError`, :class:`UnsupportedModel`);
* :mod:`~attribution.model_memory.kv` sizes the KV cache per token per GPU (:func:`kv_sizing`);
* :mod:`~attribution.model_memory.weights` sizes the weights, exactly from safetensors headers or by an
  estimate whose assumptions are stated (:func:`weight_sizing`);
* :mod:`~attribution.model_memory.budget` is vLLM's memory budget and the tokens of KV that fit in it
  (:func:`kv_budget_bytes`, :func:`kv_capacity_tokens`, :func:`concurrent_sequences`);
* :mod:`~attribution.model_memory.hybrid` is the layer layout and per-sequence state of Mamba / gated
  delta-net hybrids, which :func:`kv_sizing` uses;
* :mod:`~attribution.model_memory.cli` is ``gpuattr model-memory`` (:func:`main`).

The names below are the package's public interface; callers import them from here.
"""

from attribution.model_memory.budget import (
    DEFAULT_ACTIVATION_PEAK,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_NON_TORCH_TP,
    DEFAULT_NON_TORCH_TP1,
    DEFAULT_UTILIZATION,
    concurrent_sequences,
    kv_budget_bytes,
    kv_capacity_tokens,
)
from attribution.model_memory.cli import main
from attribution.model_memory.config import ConfigError, UnsupportedModel, load_config
from attribution.model_memory.kv import KvSizing, kv_sizing
from attribution.model_memory.weights import WeightSizing, weight_sizing

__all__ = [
    "DEFAULT_ACTIVATION_PEAK",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_NON_TORCH_TP",
    "DEFAULT_NON_TORCH_TP1",
    "DEFAULT_UTILIZATION",
    "ConfigError",
    "KvSizing",
    "UnsupportedModel",
    "WeightSizing",
    "concurrent_sequences",
    "kv_budget_bytes",
    "kv_capacity_tokens",
    "kv_sizing",
    "load_config",
    "main",
    "weight_sizing",
]
