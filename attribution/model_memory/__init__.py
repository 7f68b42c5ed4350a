"""Model memory from a Hugging Face ``config.json`` (being split into modules by responsibility)."""

from attribution.model_memory.weights import (
    ConfigError,
    KvSizing,
    UnsupportedModel,
    WeightSizing,
    kv_budget_bytes,
    kv_capacity_tokens,
    kv_sizing,
    load_config,
    main,
    weight_sizing,
)

__all__ = [
    "ConfigError",
    "KvSizing",
    "UnsupportedModel",
    "WeightSizing",
    "kv_budget_bytes",
    "kv_capacity_tokens",
    "kv_sizing",
    "load_config",
    "main",
    "weight_sizing",
]
