"""Reading a model's ``config.json`` and normalising it: the language model's fields, checked and named.

A multimodal config keeps its language model under ``text_config`` (or ``llm_config``, ``language_config``);
every reader here looks there first and names a field with its prefix in messages. A model whose memory
this package does not size (Mamba / linear-attention hybrids other than :data:`SIZED_HYBRID_TYPES`, whose
weights are not estimated either; KV sharing, sparse-attention indexers, encoder-decoder) is refused with
:class:`UnsupportedModel`, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 16 * 2**20  # bytes; a config.json is a few KiB
MAX_LAYERS = 10_000  # layers; more is not a real model, and per-layer lists must stay small
MAX_CONFIG_INT = 2**53  # a size or count beyond this is no real model's, and products of such overflow floats


class UnsupportedModel(ValueError):  # noqa: N818 (the name the callers use)
    """The config describes a model this calculator does not size; the message names the file and why."""


class ConfigError(ValueError):
    """A config.json that is missing, unreadable or not a JSON object; the message names the path."""


# ---------------------------------------------------------------------------------------------------------
# Reading the config


def load_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a config.json, or a directory holding one)."""
    path = Path(path)
    target = path / "config.json" if path.is_dir() else path
    try:
        size = target.stat().st_size  # bytes
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{target}: {size} bytes is too large for a config.json")
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f"{path} holds no config.json" if path.is_dir() else f"{target}: no such file"
        raise ConfigError(where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: cannot read: {exc}") from exc
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an integer past Python's digits limit
        raise ConfigError(f"{target}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{target}: not a JSON object")
    return config


@dataclass(frozen=True)
class _View:
    """The language model's part of a config (``text_config`` for multimodal ones) and the whole config."""

    cfg: Mapping[str, Any]
    top: Mapping[str, Any]
    prefix: str  # "text_config." when nested
    source: str

    def where(self, key: str) -> str:
        return f"{self.source}: {self.prefix}{key}"

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def get_either(self, key: str) -> tuple[Any, str]:
        """A key from the language-model part, else from the top level; with its name for messages."""
        if self.cfg.get(key) is not None:
            return self.cfg[key], f"{self.prefix}{key}"
        return self.top.get(key), key

    @property
    def model_type(self) -> str:
        for value in (self.cfg.get("model_type"), self.top.get("model_type")):
            if isinstance(value, str):
                return value
        return ""


_NESTED = ("text_config", "llm_config", "language_config")


def _view(config: Mapping[str, Any], source: str) -> _View:
    if not isinstance(config, Mapping):
        raise UnsupportedModel(f"{source}: the config is not a JSON object")
    for key in _NESTED:
        sub = config.get(key)
        if sub is None:
            continue
        if not isinstance(sub, Mapping):
            raise UnsupportedModel(f"{source}: {key} is not an object")
        return _View(sub, config, f"{key}.", source)
    return _View(config, config, "", source)


def _layer_count(view: _View, need: str) -> int:
    layers = _int(view, "num_hidden_layers", "n_layer", "n_layers", "num_layers", need=need)
    if layers > MAX_LAYERS:
        raise UnsupportedModel(f"{view.where('num_hidden_layers')} is {layers}: more than {MAX_LAYERS} layers")
    return layers


def _int(view: _View, *keys: str, minimum: int = 1, need: str = "") -> int:
    """The first of ``keys`` present, as an integer ≥ ``minimum``; UnsupportedModel naming the field."""
    value = _opt_int(view, *keys, minimum=minimum)
    if value is None:
        why = f" (needed for {need})" if need else ""
        raise UnsupportedModel(f"{view.where(keys[0])} is missing{why}")
    return value


def _opt_int(view: _View, *keys: str, minimum: int = 1) -> int | None:
    for key in keys:
        value = view.cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise UnsupportedModel(f"{view.where(key)} is {value!r}, not an integer")
        if value < minimum:
            raise UnsupportedModel(f"{view.where(key)} is {value}, must be at least {minimum}")
        if value > MAX_CONFIG_INT:
            raise UnsupportedModel(f"{view.where(key)} is {value}, more than any real model's ({MAX_CONFIG_INT})")
        return value
    return None


def _opt_bool(view: _View, key: str, *, either: bool = False) -> bool | None:
    value, name = view.get_either(key) if either else (view.cfg.get(key), f"{view.prefix}{key}")
    if value is None:
        return None
    if not isinstance(value, bool):
        raise UnsupportedModel(f"{view.source}: {name} is {value!r}, not true/false")
    return value


# ---------------------------------------------------------------------------------------------------------
# What is sized, and the geometry both KV and weights follow


_NON_ATTENTION_MODEL_TYPES = frozenset(
    {
        "bamba",
        "falcon_h1",
        "falcon_mamba",
        "granitemoehybrid",
        "hymba",
        "jamba",
        "kimi_linear",
        "lfm2",
        "lfm2_moe",
        "mamba",
        "mamba2",
        "minimax",
        "minimax_m1",
        "minimax_text_01",
        "nemotron_h",
        "plamo2",
        "qwen3_next",
        "recurrent_gemma",
        "rwkv",
        "xlstm",
        "zamba",
        "zamba2",
    }
)
# The hybrids kv_sizing sizes (attention pages plus a per-sequence state; see hybrid.py); the weight
# estimate still refuses them.
SIZED_HYBRID_TYPES = frozenset({"jamba", "bamba", "granitemoehybrid", "nemotron_h", "falcon_h1", "qwen3_next"})
_NON_ATTENTION_KEYS = (
    "layers_block_type",
    "hybrid_override_pattern",
    "attn_layer_period",
    "attn_layer_offset",
    "mamba_d_state",
    "mamba_d_conv",
    "ssm_state_size",
    "linear_num_value_heads",
    "linear_attn_config",
    "full_attention_interval",
)
_ATTENTION_LAYER_TYPES = {
    "full_attention": "full",
    "sliding_attention": "sliding",
    "chunked_attention": "chunked",
}


def _refuse_unsupported(view: _View, *, sized_hybrids: bool = False) -> None:
    """UnsupportedModel for a model not sized here; ``sized_hybrids`` lets :data:`SIZED_HYBRID_TYPES` through."""
    if view.top.get("is_encoder_decoder") is True or view.cfg.get("is_encoder_decoder") is True:
        raise UnsupportedModel(
            f"{view.source}: encoder-decoder model ({view.model_type or 'unknown type'}): its cross-attention "
            "cache is not sized here"
        )
    hybrid_ok = sized_hybrids and view.model_type in SIZED_HYBRID_TYPES
    if view.model_type in _NON_ATTENTION_MODEL_TYPES and not hybrid_ok:
        raise UnsupportedModel(
            f"{view.source}: model_type {view.model_type!r} mixes attention with Mamba / linear-attention layers "
            "(per-request state, padded pages): not sized here"
        )
    for key in () if hybrid_ok else _NON_ATTENTION_KEYS:
        if view.has(key):
            raise UnsupportedModel(
                f"{view.where(key)} is set: a hybrid with non-attention (Mamba / linear-attention) layers, whose "
                "per-request state and padded pages are not sized here"
            )
    if view.has("num_kv_shared_layers"):
        raise UnsupportedModel(f"{view.where('num_kv_shared_layers')} is set: layers sharing KV are not sized here")
    if view.has("index_topk"):
        raise UnsupportedModel(
            f"{view.where('index_topk')} is set: DeepSeek sparse attention keeps an indexer cache beside the MLA "
            "latent, not sized here"
        )


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


# vLLM's --dtype values other than auto, and the bytes per element each serves the model in
SERVED_DTYPES = {"half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}


def _model_dtype(view: _View, dtype: str = "auto") -> tuple[int, str, str]:
    """Bytes per element of the dtype vLLM serves the model in with ``--dtype`` (``auto``: from the config),
    its name, and a note. ValueError for a ``dtype`` vLLM does not take."""
    if not isinstance(dtype, str):
        raise ValueError(f"dtype {dtype!r} is not a string")
    wanted = dtype.strip().lower()
    if wanted != "auto":
        if wanted not in SERVED_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(SERVED_DTYPES)}")
        name = {"half": "float16", "float": "float32"}.get(wanted, wanted)
        return SERVED_DTYPES[wanted], name, f"served as --dtype {wanted}"
    value, name = view.get_either("torch_dtype")
    if value is None:
        value, name = view.get_either("dtype")
    if value is None:
        return 2, "16-bit", "torch_dtype absent: vLLM reads it as float32 and serves it in 16-bit (--dtype auto)"
    if not isinstance(value, str) or value.removeprefix("torch.") not in _DTYPE_BYTES:
        raise UnsupportedModel(f"{view.source}: {name} is {value!r}, not bfloat16/float16/float32")
    dtype = value.removeprefix("torch.")
    if _DTYPE_BYTES[dtype] == 4:
        return 2, "16-bit", f"{name} {dtype}: vLLM's --dtype auto serves float32 checkpoints in 16-bit"
    return 2, dtype, ""


def _head_geometry(view: _View) -> tuple[int, int, int, str]:
    """(attention heads, KV heads, head_dim, note) of standard attention."""
    heads = _int(view, "num_attention_heads", "n_head", "n_heads", need="the head count")
    notes = []
    head_dim = _opt_int(view, "head_dim", "attention_head_dim")  # Nemotron-H names it so
    if head_dim is None:
        hidden = _int(view, "hidden_size", "n_embd", "d_model", need="head_dim = hidden_size / num_attention_heads")
        if hidden % heads:
            raise UnsupportedModel(
                f"{view.source}: {view.prefix}hidden_size {hidden} is not a multiple of num_attention_heads {heads} "
                "and head_dim is absent"
            )
        head_dim = hidden // heads
        notes.append(f"head_dim = hidden_size {hidden} / {heads} heads")
    kv_heads = _opt_int(view, "num_key_value_heads", "num_kv_heads")
    if kv_heads is None:
        if _opt_bool(view, "multi_query") is True:
            kv_heads = 1
            notes.append("multi_query: 1 KV head")
        else:
            kv_heads = heads
            notes.append("num_key_value_heads absent: one KV head per attention head")
    if kv_heads > heads or heads % kv_heads:
        raise UnsupportedModel(
            f"{view.source}: {view.prefix}num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}"
        )
    return heads, kv_heads, head_dim, "; ".join(notes)
