"""Model configs the model-memory tests share: the shipped vLLM fixture, public models' config.json files,
and a small synthetic Llama whose fields a test overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attribution.model_memory.config import load_config
from attribution.model_memory.kv import KvSizing, kv_sizing
from tests.conftest import VLLM_FIXTURES

VLLM_FIXTURE = VLLM_FIXTURES
CONFIGS = Path(__file__).resolve().parent.parent / "fixtures" / "configs"


def config(name: str) -> dict[str, Any]:
    """A public model's config: ``configs/<org>/<name>/config.json`` for "org/name", else ``configs/<name>.json``."""
    return load_config(CONFIGS / name if "/" in name else CONFIGS / f"{name}.json")


def kv(name: str, **kwargs: Any) -> KvSizing:
    return kv_sizing(config(name), source=name, **kwargs)


def small(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model_type": "llama",
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "hidden_size": 512,
        "torch_dtype": "bfloat16",
    }
    return {k: v for k, v in (base | fields).items() if v is not None}


PER_LAYER = 2 * 4 * 64 * 2  # bytes per token per layer of small()
