"""Model memory from a Hugging Face ``config.json``: KV bytes per token per GPU, weight bytes, KV capacity.

The rules follow vLLM (see ``shared/reference/vllm-memory.md`` §3–4):

* standard / grouped-query attention: ``2 × layers_on_this_GPU × kv_heads_per_GPU × head_size × dtype_bytes``
  with ``kv_heads_per_GPU = max(1, num_key_value_heads // TP)`` and ``layers_on_this_GPU = ⌈layers / PP⌉``;
* MLA (DeepSeek-V2/V3/R1, Kimi-K2, Moonlight): ``(kv_lora_rank + qk_rope_head_dim) × layers × dtype_bytes``,
  replicated on every TP rank;
* sliding-window hybrids (Gemma-2/3, gpt-oss): vLLM's hybrid KV cache manager groups layers of each kind
  into groups of equal size and pads the last group of a kind; physical bytes per token follow all layer
  slots including the padding;
* anything else (Mamba / linear-attention hybrids, KV sharing, sparse-attention indexers, encoder-decoder)
  is refused with :class:`UnsupportedModel`, never guessed.

Weights come from the safetensors headers when a checkpoint directory is given (exact), otherwise from an
architecture estimate whose assumptions are stated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from attribution.safetensors_header import CheckpointHeaders, find_shards

GiB = 2**30  # bytes
MAX_CONFIG_BYTES = 16 * 2**20  # bytes; a config.json is a few KiB
DEFAULT_UTILIZATION = 0.9  # vLLM's --gpu-memory-utilization default
DEFAULT_ACTIVATION_PEAK = "1.5GiB"  # vLLM logs ≈1.26 GiB for an 8B model at its default batch
DEFAULT_NON_TORCH_TP1 = "0.5GiB"  # non-torch memory at TP 1 (cuBLAS workspaces, allocator slack)
DEFAULT_NON_TORCH_TP = "2GiB"  # non-torch memory at TP > 1 (NCCL buffers)
DEFAULT_BLOCK_SIZE = 16  # tokens per KV block, vLLM's CUDA default
MAX_LAYERS = 10_000  # layers; more is not a real model, and per-layer lists must stay small
MAX_CONFIG_INT = 2**53  # a size or count beyond this is no real model's, and products of such overflow floats


class UnsupportedModel(ValueError):  # noqa: N818 (the name the callers use)
    """The config describes a model this calculator does not size; the message names the file and why."""


class ConfigError(ValueError):
    """A config.json that is missing, unreadable or not a JSON object; the message names the path."""


@dataclass(frozen=True)
class KvSizing:
    """KV cache bytes per token on one GPU, and how they were computed."""

    kv_bytes_per_token: int  # bytes per token per GPU
    attention: str  # "mha" | "gqa" | "mqa" | "mla"
    layers_per_gpu: int  # layer slots on the largest pipeline stage (padding layers of hybrids included)
    kv_heads_per_gpu: int | None  # None for MLA
    head_dim: int | None  # elements per head; None for MLA
    dtype_bytes: int  # bytes per cached element
    method: str  # one sentence: formula and inputs


@dataclass(frozen=True)
class WeightSizing:
    """Weight bytes of the whole model (all ranks together), and how they were obtained."""

    weight_bytes: int  # bytes, whole model
    method: str  # "safetensors" | "estimate"
    detail: str  # shard headers read, or the estimate and its assumptions


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
# Attention geometry


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
# Model types whose config class fixes which layers slide when the config gives no list or pattern
# (transformers' defaults: Gemma-2 alternates, Gemma-3 has 5 sliding : 1 full, Cohere-2 3 : 1).
_DEFAULT_SLIDING_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6, "cohere2": 4}
# Model types whose ``sliding_window`` applies to every layer.
_UNIFORM_SLIDING = frozenset({"mistral", "mixtral", "starcoder2", "phi3", "phimoe", "phi3small"})


def _refuse_unsupported(view: _View) -> None:
    if view.top.get("is_encoder_decoder") is True or view.cfg.get("is_encoder_decoder") is True:
        raise UnsupportedModel(
            f"{view.source}: encoder-decoder model ({view.model_type or 'unknown type'}): its cross-attention "
            "cache is not sized here"
        )
    if view.model_type in _NON_ATTENTION_MODEL_TYPES:
        raise UnsupportedModel(
            f"{view.source}: model_type {view.model_type!r} mixes attention with Mamba / linear-attention layers "
            "(per-request state, padded pages): not sized here"
        )
    for key in _NON_ATTENTION_KEYS:
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


def _layer_kinds(view: _View, layers: int) -> tuple[list[str], str]:
    """Each layer's attention kind ("full", "sliding", "chunked") and where that came from."""
    raw_types = view.cfg.get("layer_types")
    if raw_types is not None:
        if not isinstance(raw_types, list) or len(raw_types) != layers:
            raise UnsupportedModel(f"{view.where('layer_types')} is not a list of {layers} layer types")
        kinds = []
        for kind in raw_types:
            if not isinstance(kind, str) or kind not in _ATTENTION_LAYER_TYPES:
                raise UnsupportedModel(
                    f"{view.where('layer_types')} holds {kind!r}: a non-attention (or unknown) layer type, whose "
                    "state is not sized here"
                )
            kinds.append(_ATTENTION_LAYER_TYPES[kind])
        return kinds, "layer_types"
    if view.has("attention_chunk_size"):
        raise UnsupportedModel(
            f"{view.where('attention_chunk_size')} is set without layer_types: which layers use chunked attention "
            "is unknown"
        )
    window = view.cfg.get("sliding_window")
    if window is None or window is False:
        return ["full"] * layers, "no sliding window"
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise UnsupportedModel(f"{view.where('sliding_window')} is {window!r}, not a number of tokens")
    if window == 0:
        return ["full"] * layers, "sliding_window 0"
    use = view.cfg.get("use_sliding_window")
    if use is False:
        return ["full"] * layers, "use_sliding_window false"
    if use is not None and use is not True:
        raise UnsupportedModel(f"{view.where('use_sliding_window')} is {use!r}, not true/false")
    pattern = _opt_int(view, "sliding_window_pattern")
    how = "sliding_window_pattern"
    if pattern is None and view.model_type in _DEFAULT_SLIDING_PATTERN:
        pattern = _DEFAULT_SLIDING_PATTERN[view.model_type]
        how = f"{view.model_type}'s default pattern"
    if pattern is not None:
        kinds = ["sliding" if (i + 1) % pattern else "full" for i in range(layers)]
        return kinds, f"{how}: every {pattern}th layer full"
    if use is True:  # Qwen-2 style: layers from max_window_layers on slide
        first = _int(view, "max_window_layers", minimum=0, need="use_sliding_window")
        return ["full" if i < first else "sliding" for i in range(layers)], f"layers ≥ max_window_layers {first} slide"
    if view.model_type in _UNIFORM_SLIDING:
        return ["sliding"] * layers, f"sliding window {window} on every layer"
    raise UnsupportedModel(
        f"{view.where('sliding_window')} is {window} but the config says neither layer_types nor "
        f"sliding_window_pattern, and model_type {view.model_type!r} has no known pattern: which layers slide is "
        "unknown"
    )


def _layer_slots(kinds: Sequence[str]) -> tuple[int, str]:
    """Layer slots the hybrid KV cache manager allocates (layers plus padding) and how it grouped them.

    vLLM groups the layers of each kind into groups of ``group_size`` layers, the fewest layers of any
    kind (or the most, when the counts are within 25 %), padding each kind's last group.
    """
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    if len(counts) <= 1:
        return len(kinds), ""
    smallest, largest = min(counts.values()), max(counts.values())
    group = largest if largest < smallest * 1.25 else smallest
    slots = sum(-(-n // group) * group for n in counts.values())
    mix = " + ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    padding = slots - len(kinds)
    how = f"hybrid: {mix} layers grouped by {group} (vLLM hybrid KV cache manager)"
    if padding:
        how += (
            f" with {padding} padding layer{'' if padding == 1 else 's'}, so physical bytes follow {slots} layer "
            f"slots ({len(kinds)} with --disable-hybrid-kv-cache-manager)"
        )
    else:
        how += ", no padding: physical bytes follow all layers"
    return slots, how


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


def _model_dtype(view: _View) -> tuple[int, str, str]:
    """Bytes per element of the dtype vLLM serves the model in with ``--dtype auto``, its name, and a note."""
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


_KV_DTYPES = {
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "float32": 4,
    "fp32": 4,
    "float": 4,
}


def _kv_dtype(view: _View, kv_cache_dtype: str) -> tuple[int, str, str]:
    if not isinstance(kv_cache_dtype, str):
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is not a string")
    wanted = kv_cache_dtype.strip().lower()
    if wanted == "auto":
        return _model_dtype(view)
    if wanted not in _KV_DTYPES:
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is not one of auto, {', '.join(_KV_DTYPES)}")
    return _KV_DTYPES[wanted], wanted, ""


def _head_geometry(view: _View) -> tuple[int, int, int, str]:
    """(attention heads, KV heads, head_dim, note) of standard attention."""
    heads = _int(view, "num_attention_heads", "n_head", "n_heads", need="the head count")
    notes = []
    head_dim = _opt_int(view, "head_dim")
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


def _check_parallel(tensor_parallel: int, pipeline_parallel: int) -> None:
    for name, value in (("tensor_parallel", tensor_parallel), ("pipeline_parallel", pipeline_parallel)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _layers_on_gpu(view: _View, layers: int, pipeline_parallel: int) -> tuple[int, str]:
    if pipeline_parallel > layers:
        raise ValueError(f"pipeline_parallel {pipeline_parallel} exceeds the {layers} layers of {view.source}")
    per_stage = -(-layers // pipeline_parallel)
    if pipeline_parallel == 1:
        return layers, f"{layers} layers"
    if layers % pipeline_parallel:
        return per_stage, (
            f"⌈{layers} layers / PP {pipeline_parallel}⌉ = {per_stage} layers on the largest stage (stages hold "
            f"{layers // pipeline_parallel} or {per_stage})"
        )
    return per_stage, f"{layers} layers / PP {pipeline_parallel} = {per_stage}"


def kv_sizing(
    config: Mapping[str, Any],
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    kv_cache_dtype: str = "auto",
    source: str = "<config>",
) -> KvSizing:
    """KV cache bytes per token on one GPU of a vLLM server running this model.

    Raises :class:`UnsupportedModel` (naming ``source`` and the field) for a model whose cache this does
    not size, and ValueError for parallelism vLLM would refuse or an unknown ``kv_cache_dtype``.
    """
    _check_parallel(tensor_parallel, pipeline_parallel)
    view = _view(config, source)
    _refuse_unsupported(view)
    layers = _layer_count(view, "the layer count")
    dtype_bytes, dtype_name, dtype_note = _kv_dtype(view, kv_cache_dtype)
    tp = tensor_parallel

    if view.cfg.get("kv_lora_rank") is not None:
        rank = _int(view, "kv_lora_rank", need="MLA")
        rope = _int(view, "qk_rope_head_dim", need="MLA")
        heads = _int(view, "num_attention_heads", need="the head count")
        if heads % tp:
            raise ValueError(f"tensor_parallel {tp} does not divide the {heads} attention heads of {source}")
        on_gpu, layer_how = _layers_on_gpu(view, layers, pipeline_parallel)
        total = (rank + rope) * on_gpu * dtype_bytes
        method = (
            f"MLA: (kv_lora_rank {rank} + qk_rope_head_dim {rope}) × {layer_how} × {dtype_bytes} B ({dtype_name}) "
            f"= {total:,} B per token per GPU, no K/V factor 2"
            f"{f', the latent replicated on each of the {tp} TP ranks' if tp > 1 else ''}"
            f"{'; ' + dtype_note if dtype_note else ''}"
        )
        return KvSizing(total, "mla", on_gpu, None, None, dtype_bytes, method)

    heads, kv_heads, head_dim, geometry_note = _head_geometry(view)
    if heads % tp:
        raise ValueError(f"tensor_parallel {tp} does not divide the {heads} attention heads of {source}")
    if kv_heads >= tp and kv_heads % tp:
        raise ValueError(f"tensor_parallel {tp} does not divide the {kv_heads} KV heads of {source}")
    if kv_heads < tp and tp % kv_heads:
        raise ValueError(f"tensor_parallel {tp} is not a multiple of the {kv_heads} KV heads of {source}")
    kv_per_gpu = max(1, kv_heads // tp)
    kinds, kinds_how = _layer_kinds(view, layers)
    slots, hybrid_how = _layer_slots(kinds)
    if hybrid_how:
        hybrid_how += f" (layer kinds from {kinds_how})"
    if hybrid_how and pipeline_parallel > 1:
        raise UnsupportedModel(
            f"{source}: hybrid attention ({kinds_how}) with pipeline_parallel {pipeline_parallel}: vLLM's grouping "
            "across stages is not sized here"
        )
    if hybrid_how:
        on_gpu, layer_how = slots, f"{slots} layer slots"
    else:
        on_gpu, layer_how = _layers_on_gpu(view, layers, pipeline_parallel)
    total = 2 * on_gpu * kv_per_gpu * head_dim * dtype_bytes
    attention = "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"
    plural = "s" if kv_per_gpu != 1 else ""
    if tp == 1:
        heads_how = f"{kv_per_gpu} KV head{plural}"
    elif kv_heads < tp:
        heads_how = f"{kv_per_gpu} KV head (the {kv_heads} KV heads replicated over TP {tp})"
    else:
        heads_how = f"{kv_per_gpu} KV head{plural} ({kv_heads} / TP {tp})"
    notes = [n for n in (geometry_note, hybrid_how, dtype_note) if n]
    if not hybrid_how and "sliding" in kinds:
        notes.append(f"{kinds_how}: bytes per token unchanged, each request holds at most the window")
    method = (
        f"{attention.upper()}: 2 (K and V) × {layer_how} × {heads_how} × head_dim {head_dim} × {dtype_bytes} B "
        f"({dtype_name}) = {total:,} B per token per GPU{'; ' + '; '.join(notes) if notes else ''}"
    )
    return KvSizing(total, attention, on_gpu, kv_per_gpu, head_dim, dtype_bytes, method)


# ---------------------------------------------------------------------------------------------------------
# Weights


_MTP_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def weight_sizing(config: Mapping[str, Any], model_dir: str | Path | None = None) -> WeightSizing:
    """Weight bytes of the whole model: exact from the safetensors headers in ``model_dir``, else estimated.

    A ``model_dir`` that is not a directory, or whose headers are malformed, raises
    :class:`~attribution.safetensors_header.SafetensorsHeaderError` (a ValueError) naming the file; one
    holding no safetensors file falls back to the estimate and says so.
    """
    prefix = ""
    if model_dir is not None:
        checkpoint = find_shards(model_dir)
        if checkpoint is not None:
            return _exact(config, checkpoint)
        prefix = f"no *.safetensors in {model_dir}; "
    estimate = _estimate(config)
    return WeightSizing(estimate.weight_bytes, "estimate", prefix + estimate.detail)


def _exact(config: Mapping[str, Any], checkpoint: CheckpointHeaders) -> WeightSizing:
    view = _view(config, "<config>") if isinstance(config, Mapping) else None
    layers = None
    mtp = 0
    if view is not None:
        layers = view.cfg.get("num_hidden_layers")
        nextn = view.cfg.get("num_nextn_predict_layers")
        mtp = nextn if isinstance(nextn, int) and not isinstance(nextn, bool) else 0
    total = skipped = skipped_count = count = 0
    by_dtype: dict[str, int] = {}
    for tensor in checkpoint.tensors:
        match = _MTP_LAYER.match(tensor.name)
        if mtp > 0 and isinstance(layers, int) and match and int(match.group(1)) >= layers:
            skipped += tensor.nbytes
            skipped_count += 1
            continue
        count += 1
        total += tensor.nbytes
        by_dtype[tensor.dtype] = by_dtype.get(tensor.dtype, 0) + tensor.nbytes
    shards = len(checkpoint.headers)
    found = "model.safetensors.index.json" if checkpoint.found_by == "index" else "*.safetensors"
    dtypes = ", ".join(f"{d} {b / GiB:.2f} GiB" for d, b in sorted(by_dtype.items(), key=lambda kv: -kv[1]))
    detail = (
        f"headers of {shards} shard{'s' if shards != 1 else ''} in {checkpoint.model_dir} (via {found}): "
        f"{count:,} tensors, {total:,} bytes as stored ({dtypes})"
    )
    if skipped_count:
        detail += (
            f"; left out {skipped_count:,} tensors ({skipped / GiB:.2f} GiB) of multi-token-prediction layers "
            f"≥ {layers}, which vLLM loads only for speculative decoding"
        )
    if checkpoint.skipped:
        detail += f"; left out {', '.join(p.name for p in checkpoint.skipped)} (a second copy of the weights)"
    if by_dtype.get("F32", 0) > total / 2:
        detail += "; mostly F32: vLLM's --dtype auto loads float32 checkpoints in 16-bit, about half these bytes"
    return WeightSizing(total, "safetensors", detail)


# MLP without a gate (two projections); every other model type is taken to have a gated MLP (three).
_UNGATED_MLP = frozenset(
    {"gpt2", "gpt_bigcode", "gpt_neox", "gptj", "falcon", "bloom", "opt", "phi", "starcoder2", "mpt", "gpt_neo"}
)
_GATED_KNOWN = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "deepseek_v2",
        "deepseek_v3",
        "kimi_k2",
        "gemma",
        "gemma2",
        "gemma3",
        "gemma3_text",
        "phi3",
        "granite",
        "granitemoe",
        "olmo2",
        "olmoe",
        "internlm2",
        "cohere",
        "cohere2",
        "gpt_oss",
        "glm4",
        "glm4_moe",
        "exaone",
        "minicpm",
        "minicpm3",
        "ernie4_5",
        "ernie4_5_moe",
        "llama4_text",
    }
)
_TIED_BY_DEFAULT = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text", "cohere", "cohere2"})


@dataclass(frozen=True)
class _Linear:
    """``count`` linear layers of ``in_f`` × ``out_f`` weights."""

    in_f: int
    out_f: int
    count: int
    expert: bool = False


LinearBytes = Callable[[int, int], int]


def _quantisation(view: _View, dtype_bytes: int) -> tuple[LinearBytes | None, bool, str]:
    """How many bytes a quantised ``in × out`` linear takes, whether only experts are quantised, and a note.

    ``None`` when the model is not quantised.
    """
    raw, name = view.get_either("quantization_config")
    if raw is None:
        return None, False, "no quantization_config: every weight in the model dtype"
    if not isinstance(raw, Mapping):
        raise UnsupportedModel(f"{view.source}: {name} is not an object")
    method = str(raw.get("quant_method", "")).lower()

    def number(key: str, default: int, *aliases: str) -> int:
        for k in (key, *aliases):
            value = raw.get(k)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise UnsupportedModel(f"{view.source}: {name}.{k} is {value!r}, not an integer")
                return value
        return default

    if method == "fp8":
        block = raw.get("weight_block_size")
        if block is not None:
            if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
                raise UnsupportedModel(f"{view.source}: {name}.weight_block_size is {block!r}, not [rows, cols]")
            bn, bk = int(block[0]), int(block[1])

            def fp8_block(i: int, o: int) -> int:
                return i * o + (-(-o // bn)) * (-(-i // bk)) * 4

            return fp8_block, False, f"fp8: 1 B per linear weight + an F32 scale per {bn}×{bk} block"

        def fp8_tensor(i: int, o: int) -> int:
            return i * o + 8

        return fp8_tensor, False, "fp8: 1 B per linear weight + per-tensor F32 scales"
    if method in ("awq", "gptq"):
        bits = number("bits", 4, "w_bit")
        group = number("group_size", 128, "q_group_size")
        if bits not in (2, 3, 4, 8) or group == 0 or group < -1:
            raise UnsupportedModel(f"{view.source}: {name} has bits {bits}, group_size {group}: not sized here")
        zeros = raw.get("zero_point", True) is not False or method == "gptq"
        g_idx = method == "gptq"

        def grouped(i: int, o: int) -> int:
            groups = 1 if group == -1 else -(-i // group)
            size = (i * o * bits + 7) // 8 + groups * o * 2  # packed weights + FP16 scales
            if zeros:
                size += (groups * o * bits + 7) // 8
            if g_idx:
                size += i * 4
            return size

        per = "per output channel" if group == -1 else f"per {group} weights"
        return (
            grouped,
            False,
            f"{method} int{bits}: {bits / 8:g} B per linear weight + FP16 scales{' and packed zeros' if zeros else ''}"
            f" {per}{' + an I32 g_idx per input' if g_idx else ''}",
        )
    if method == "bitsandbytes":
        if raw.get("load_in_4bit") is True:
            double = raw.get("bnb_4bit_use_double_quant") is True

            def nf4(i: int, o: int) -> int:
                blocks = -(-(i * o) // 64)
                return (i * o + 1) // 2 + (blocks + (-(-blocks // 256)) * 4 if double else blocks * 4)

            quant_note = "U8 absmax per 64 (double quant)" if double else "an F32 absmax per 64 weights"
            return nf4, False, f"bitsandbytes 4-bit: 0.5 B per linear weight + {quant_note}"
        if raw.get("load_in_8bit") is True:

            def int8(i: int, o: int) -> int:
                return i * o + o * 4

            return int8, False, "bitsandbytes 8-bit: 1 B per linear weight + an F32 scale per output row"
        raise UnsupportedModel(f"{view.source}: {name} is bitsandbytes without load_in_4bit or load_in_8bit")
    if method == "mxfp4":

        def mxfp4(i: int, o: int) -> int:
            return (i * o + 1) // 2 + -(-(i * o) // 32)

        return mxfp4, True, "mxfp4: MoE expert weights 0.5 B + a U8 scale per 32; other layers in the model dtype"
    if method == "modelopt":
        algo = str(raw.get("quant_algo", "")).upper()
        if algo == "FP8":
            return (lambda i, o: i * o + 8), False, "modelopt FP8: 1 B per linear weight + per-tensor scales"
        if algo == "NVFP4":
            group = number("group_size", 16)
            return (
                (lambda i, o: (i * o + 1) // 2 + -(-(i * o) // group) + 8),
                False,
                f"modelopt NVFP4: 0.5 B per linear weight + an FP8 scale per {group}",
            )
        raise UnsupportedModel(f"{view.source}: {name}.quant_algo {algo!r} is not sized here")
    if method == "compressed-tensors":
        return _compressed_tensors(view, name, raw, dtype_bytes)
    raise UnsupportedModel(
        f"{view.source}: {name}.quant_method {method or None!r} is not sized here; give the checkpoint directory "
        "for exact bytes"
    )


def _compressed_tensors(
    view: _View, name: str, raw: Mapping[str, Any], dtype_bytes: int
) -> tuple[LinearBytes, bool, str]:
    groups = raw.get("config_groups")
    if not isinstance(groups, Mapping) or not groups:
        raise UnsupportedModel(f"{view.source}: {name}.config_groups is missing")
    schemes = []
    for group in groups.values():
        weights = group.get("weights") if isinstance(group, Mapping) else None
        if not isinstance(weights, Mapping):
            raise UnsupportedModel(f"{view.source}: {name}.config_groups has a group without weights")
        schemes.append(
            (weights.get("num_bits"), weights.get("type"), weights.get("strategy"), weights.get("group_size"))
        )
    if len({repr(scheme) for scheme in schemes}) != 1:
        raise UnsupportedModel(f"{view.source}: {name} mixes weight schemes {sorted({repr(s) for s in schemes})}")
    raw_bits, kind, strategy, raw_group = schemes[0]
    if raw_bits not in (4, 8) or strategy not in ("tensor", "channel", "group", "tensor_group", "block"):
        raise UnsupportedModel(f"{view.source}: {name} weights of {raw_bits} bits by {strategy!r} are not sized here")
    bits = int(raw_bits)
    group = raw_group if isinstance(raw_group, int) and not isinstance(raw_group, bool) and raw_group > 0 else 0
    if strategy in ("group", "tensor_group") and not group:
        raise UnsupportedModel(f"{view.source}: {name} group strategy without a positive group_size")
    scale = 1 if kind == "float" and bits == 4 else dtype_bytes  # NVFP4 keeps FP8 scales

    def compressed(i: int, o: int) -> int:
        size = (i * o * bits + 7) // 8
        if strategy == "channel":
            size += o * scale
        elif strategy in ("group", "tensor_group"):
            size += -(-i // group) * o * scale
        elif strategy == "block":
            size += -(-i // 128) * -(-o // 128) * 4
        else:
            size += 4
        return size

    return (
        compressed,
        False,
        f"compressed-tensors {kind} {bits}-bit by {strategy}"
        f"{f' of {group}' if strategy in ('group', 'tensor_group') else ''}: {bits / 8:g} B per linear weight + scales",
    )


def _moe_layers(view: _View, layers: int) -> list[bool]:
    first_dense = _opt_int(view, "first_k_dense_replace", minimum=0) or 0
    freq = _opt_int(view, "moe_layer_freq") or 1
    step = _opt_int(view, "decoder_sparse_step", "interleave_moe_layer_step") or 1
    dense_only = view.cfg.get("mlp_only_layers") or []
    if not isinstance(dense_only, list):
        raise UnsupportedModel(f"{view.where('mlp_only_layers')} is not a list")
    return [i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and i not in dense_only for i in range(layers)]


def _estimate(config: Mapping[str, Any]) -> WeightSizing:
    view = _view(config, "<config>")
    _refuse_unsupported(view)
    layer_types = view.cfg.get("layer_types")
    if isinstance(layer_types, list) and any(
        not isinstance(t, str) or t not in _ATTENTION_LAYER_TYPES for t in layer_types
    ):
        raise UnsupportedModel(
            f"{view.where('layer_types')} holds non-attention layers, whose weights are not sized here"
        )
    hidden = _int(view, "hidden_size", "n_embd", "d_model", need="the weight estimate")
    vocab = _int(view, "vocab_size", need="the embeddings")
    layers = _layer_count(view, "the weight estimate")
    model_type = view.model_type
    assumptions: list[str] = []

    plain: dict[str, int] = {}  # parameters kept in the model dtype
    linears: dict[str, list[_Linear]] = {"attention": [], "mlp": [], "experts": []}

    tied = _opt_bool(view, "tie_word_embeddings", either=True)
    if tied is None:
        tied = model_type in _TIED_BY_DEFAULT
        assumptions.append(f"tie_word_embeddings absent: {'tied' if tied else 'untied'} for {model_type or 'this'}")
    plain["embeddings"] = vocab * hidden
    plain["lm_head"] = 0 if tied else vocab * hidden
    norms = 2 * hidden * layers + hidden

    if view.cfg.get("kv_lora_rank") is not None:
        heads = _int(view, "num_attention_heads", need="MLA")
        rank = _int(view, "kv_lora_rank", need="MLA")
        rope = _int(view, "qk_rope_head_dim", need="MLA")
        nope = _int(view, "qk_nope_head_dim", need="MLA")
        v_dim = _int(view, "v_head_dim", need="MLA")
        q_rank = _opt_int(view, "q_lora_rank")
        attention = linears["attention"]
        if q_rank is None:
            attention.append(_Linear(hidden, heads * (nope + rope), layers))
        else:
            attention += [_Linear(hidden, q_rank, layers), _Linear(q_rank, heads * (nope + rope), layers)]
            norms += q_rank * layers
        attention += [
            _Linear(hidden, rank + rope, layers),
            _Linear(rank, heads * (nope + v_dim), layers),
            _Linear(heads * v_dim, hidden, layers),
        ]
        norms += rank * layers
        attention_how = f"MLA (q_lora_rank {q_rank}, kv_lora_rank {rank}, {heads} heads)"
    else:
        heads, kv_heads, head_dim, _ = _head_geometry(view)
        q, kv = heads * head_dim, kv_heads * head_dim
        linears["attention"] += [
            _Linear(hidden, q, layers),
            _Linear(hidden, kv, 2 * layers),
            _Linear(q, hidden, layers),
        ]
        bias = 0
        if _opt_bool(view, "attention_bias") is True:
            bias = q + 2 * kv + hidden
        elif model_type.startswith("qwen2"):
            bias = q + 2 * kv
        plain["attention biases"] = bias * layers
        attention_how = f"{heads} heads, {kv_heads} KV heads × {head_dim}"

    gated = model_type not in _UNGATED_MLP
    if model_type not in _GATED_KNOWN and model_type not in _UNGATED_MLP:
        assumptions.append(f"model_type {model_type!r} taken to have a gated (SiLU) MLP like Llama")
    projections = 3 if gated else 2

    experts = _opt_int(view, "n_routed_experts", "num_local_experts", "num_experts")
    moe = _moe_layers(view, layers) if experts else [False] * layers
    n_moe = sum(moe)
    n_dense = layers - n_moe
    mlp_how = ""
    if n_dense:
        inter = _int(view, "intermediate_size", need="the dense MLP")
        linears["mlp"] += [_Linear(hidden, inter, (projections - 1) * n_dense), _Linear(inter, hidden, n_dense)]
        mlp_how = f"{n_dense} dense MLP layers of {inter}"
    if n_moe and experts:
        expert_inter = _opt_int(view, "moe_intermediate_size") or _int(view, "intermediate_size", need="the experts")
        count = experts * n_moe
        linears["experts"] += [
            _Linear(hidden, expert_inter, (projections - 1) * count, expert=True),
            _Linear(expert_inter, hidden, count, expert=True),
        ]
        plain["routers"] = experts * hidden * n_moe
        shared_how = ""
        shared = _opt_int(view, "n_shared_experts", minimum=0) or 0
        if shared:
            linears["mlp"] += [
                _Linear(hidden, expert_inter * shared, (projections - 1) * n_moe),
                _Linear(expert_inter * shared, hidden, n_moe),
            ]
            shared_how = f" + {shared} shared"
        shared_inter = _opt_int(view, "shared_expert_intermediate_size", minimum=0) or 0
        if shared_inter:
            linears["mlp"] += [
                _Linear(hidden, shared_inter, (projections - 1) * n_moe),
                _Linear(shared_inter, hidden, n_moe),
            ]
            plain["routers"] += hidden * n_moe  # the shared expert's gate
            shared_how = f" + a shared expert of {shared_inter}"
        mlp_how = (mlp_how + "; " if mlp_how else "") + (
            f"{n_moe} MoE layers of {experts} experts × {expert_inter}{shared_how} + router"
        )
    plain["norms"] = norms

    dtype_bytes, dtype_name, dtype_note = _model_dtype(view)
    if dtype_note:
        assumptions.append(dtype_note)
    quantised, experts_only, quant_note = _quantisation(view, dtype_bytes)

    params = sum(plain.values()) + sum(lin.in_f * lin.out_f * lin.count for group in linears.values() for lin in group)
    total = sum(plain.values()) * dtype_bytes
    for group in linears.values():
        for lin in group:
            if quantised is not None and (lin.expert or not experts_only):
                total += quantised(lin.in_f, lin.out_f) * lin.count
            else:
                total += lin.in_f * lin.out_f * dtype_bytes * lin.count
    if quantised is not None:
        quant_note += f"; embeddings, lm_head, norms, routers{' and the rest' if experts_only else ''} in {dtype_name}"

    if any(isinstance(view.top.get(k), Mapping) for k in ("vision_config", "audio_config")):
        assumptions.append("language model only: the vision/audio encoder is not counted")
    nextn = _opt_int(view, "num_nextn_predict_layers", minimum=0)
    if nextn:
        assumptions.append(
            f"{nextn} multi-token-prediction layer(s) not counted (loaded only for speculative decoding)"
        )
    assumptions.append("norms 2 per layer; small biases and extras ignored")

    def billions(n: int) -> str:
        return f"{n / 1e9:.2f} B"

    linear_params = {k: sum(lin.in_f * lin.out_f * lin.count for lin in v) for k, v in linears.items()}
    parts = [
        f"embeddings {billions(plain['embeddings'])}",
        f"lm_head {billions(plain['lm_head'])}" if plain["lm_head"] else "lm_head tied",
        f"attention {billions(linear_params['attention'])} ({attention_how})",
        f"MLP {billions(linear_params['mlp'] + linear_params['experts'] + plain.get('routers', 0))} ({mlp_how})",
    ]
    detail = (
        f"architecture estimate: {params / 1e9:.2f} B parameters — {', '.join(parts)}; {dtype_name} "
        f"({dtype_bytes} B); {quant_note}; assumptions: {'; '.join(assumptions)}"
    )
    return WeightSizing(total, "estimate", detail)


# ---------------------------------------------------------------------------------------------------------
# The budget


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
) -> int:
    """Tokens of KV cache that fit on one GPU: the KV budget (reference §4) over the bytes per token.

    Rounded down to whole blocks of ``block_size`` tokens; 0 when weights and overheads exceed the budget.
    """
    if kv_bytes_per_token <= 0:
        raise ValueError(f"kv_bytes_per_token must be positive, got {kv_bytes_per_token!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size!r}")
    budget = kv_budget_bytes(
        gpu_memory_bytes=gpu_memory_bytes,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes_per_gpu=weights_bytes_per_gpu,
        activation_peak_bytes=activation_peak_bytes,
        non_torch_bytes=non_torch_bytes,
    )
    if budget <= 0:
        return 0
    return budget // (kv_bytes_per_token * block_size) * block_size


# ---------------------------------------------------------------------------------------------------------
# The CLI


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(f"GPUATTR_{flag}", default)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="gpuattr model-memory",
        description="KV cache bytes per token per GPU and weight bytes of a model from its config.json, and how "
        "many tokens of KV fit on a GPU. Every flag is also an environment variable GPUATTR_<FLAG>.",
    )
    parser.add_argument(
        "--config",
        default=_env("MODEL_CONFIG"),
        help="config.json, or a directory holding it [env GPUATTR_MODEL_CONFIG]",
    )
    parser.add_argument(
        "--tensor-parallel",
        type=int,
        default=_env("TENSOR_PARALLEL", "1"),
        help="TP size [env GPUATTR_TENSOR_PARALLEL]",
    )
    parser.add_argument(
        "--pipeline-parallel",
        type=int,
        default=_env("PIPELINE_PARALLEL", "1"),
        help="PP size [env GPUATTR_PIPELINE_PARALLEL]",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        default=_env("KV_CACHE_DTYPE", "auto"),
        help="vLLM's --kv-cache-dtype: auto (the model dtype), fp8, fp8_e4m3, fp8_e5m2, bfloat16… "
        "[env GPUATTR_KV_CACHE_DTYPE]",
    )
    parser.add_argument(
        "--model-dir",
        default=_env("MODEL_DIR"),
        help="checkpoint directory: weights summed exactly from its safetensors headers [env GPUATTR_MODEL_DIR]",
    )
    parser.add_argument(
        "--gpu-memory",
        default=_env("GPU_MEMORY"),
        help="memory of one GPU, e.g. 80GiB: asks for the capacity plan [env GPUATTR_GPU_MEMORY]",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=_env("GPU_MEMORY_UTILIZATION", str(DEFAULT_UTILIZATION)),
        help=f"vLLM's --gpu-memory-utilization (default {DEFAULT_UTILIZATION}) [env GPUATTR_GPU_MEMORY_UTILIZATION]",
    )
    parser.add_argument(
        "--activation-peak",
        default=_env("ACTIVATION_PEAK", DEFAULT_ACTIVATION_PEAK),
        help=f"PyTorch activation peak per GPU (default {DEFAULT_ACTIVATION_PEAK}; the start-up log's budget line has "
        "the real figure) [env GPUATTR_ACTIVATION_PEAK]",
    )
    parser.add_argument(
        "--non-torch",
        default=_env("NON_TORCH"),
        help=f"non-torch memory per GPU (default {DEFAULT_NON_TORCH_TP1} at TP 1, {DEFAULT_NON_TORCH_TP} at TP > 1 for "
        "NCCL buffers) [env GPUATTR_NON_TORCH]",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=_env("MAX_MODEL_LEN"),
        help="tokens per request, for the concurrency the capacity allows [env GPUATTR_MAX_MODEL_LEN]",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=_env("BLOCK_SIZE", str(DEFAULT_BLOCK_SIZE)),
        help=f"tokens per KV block; capacity is whole blocks (default {DEFAULT_BLOCK_SIZE}) [env GPUATTR_BLOCK_SIZE]",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=(_env("JSON", "") or "").lower() in ("1", "true", "yes"),
        help="print one JSON object [env GPUATTR_JSON]",
    )
    return parser


def _size(flag: str, value: str) -> int:
    from common.units import parse_size

    try:
        return int(parse_size(value))
    except ValueError as exc:
        raise _UsageError(f"{flag}: {exc}") from None


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def main(argv: Sequence[str] | None = None) -> int:
    """``gpuattr model-memory``: 0 on success, 2 on bad input (the message names it)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.config:
            raise _UsageError("--config is required (or GPUATTR_MODEL_CONFIG)")
        report = _report(args)
    except _UsageError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # UnsupportedModel, ConfigError, SafetensorsHeaderError, bad parallelism
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report))
    return 0


def _report(args: argparse.Namespace) -> dict[str, Any]:
    source = str(args.config)
    config = load_config(args.config)
    kv = kv_sizing(
        config,
        tensor_parallel=args.tensor_parallel,
        pipeline_parallel=args.pipeline_parallel,
        kv_cache_dtype=args.kv_cache_dtype,
        source=source,
    )
    report: dict[str, Any] = {
        "config": source,
        "model_type": _view(config, source).model_type or None,
        "tensor_parallel": args.tensor_parallel,
        "pipeline_parallel": args.pipeline_parallel,
        "kv_cache_dtype": args.kv_cache_dtype,
        "kv_bytes_per_token": kv.kv_bytes_per_token,
        "kv_method": kv.method,
        "attention": kv.attention,
        "layers_per_gpu": kv.layers_per_gpu,
        "kv_heads_per_gpu": kv.kv_heads_per_gpu,
        "head_dim": kv.head_dim,
        "kv_dtype_bytes": kv.dtype_bytes,
        "kv_bytes_per_block": kv.kv_bytes_per_token * args.block_size,
        "block_size": args.block_size,
    }
    try:
        weights: WeightSizing | None = weight_sizing(config, args.model_dir)
    except UnsupportedModel as exc:
        if args.gpu_memory:
            raise
        weights = None
        report.update(weight_bytes=None, weight_method=None, weight_detail=f"not sized: {exc}")
    ranks = args.tensor_parallel * args.pipeline_parallel
    if weights is not None:
        report.update(
            weight_bytes=weights.weight_bytes,
            weight_method=weights.method,
            weight_detail=weights.detail,
            weight_bytes_per_gpu=-(-weights.weight_bytes // ranks),
        )
    if args.gpu_memory and weights is not None:
        gpu = _size("--gpu-memory", args.gpu_memory)
        activation = _size("--activation-peak", args.activation_peak)
        non_torch_raw = args.non_torch or (DEFAULT_NON_TORCH_TP if args.tensor_parallel > 1 else DEFAULT_NON_TORCH_TP1)
        non_torch = _size("--non-torch", non_torch_raw)
        if args.block_size < 1:
            raise _UsageError(f"--block-size must be at least 1, got {args.block_size}")
        budget_args = {
            "gpu_memory_bytes": gpu,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "weights_bytes_per_gpu": report["weight_bytes_per_gpu"],
            "activation_peak_bytes": activation,
            "non_torch_bytes": non_torch,
        }
        try:
            budget = kv_budget_bytes(**budget_args)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        tokens = kv_capacity_tokens(**budget_args, kv_bytes_per_token=kv.kv_bytes_per_token, block_size=args.block_size)
        report.update(
            gpu_memory_bytes=gpu,
            gpu_memory_utilization=args.gpu_memory_utilization,
            activation_peak_bytes=activation,
            non_torch_bytes=non_torch,
            kv_budget_bytes=budget,
            capacity_tokens=tokens,
            capacity_method=(
                f"{_gib(gpu)} × {args.gpu_memory_utilization:g} − (weights {_gib(report['weight_bytes_per_gpu'])} "
                f"[whole model / {ranks} ranks] + activation peak {_gib(activation)} + non-torch {_gib(non_torch)}) "
                f"= {_gib(budget)} of KV per GPU, / {kv.kv_bytes_per_token:,} B per token, in whole blocks of "
                f"{args.block_size}"
            ),
        )
        if args.max_model_len is not None:
            if args.max_model_len < 1:
                raise _UsageError(f"--max-model-len must be at least 1, got {args.max_model_len}")
            report.update(max_model_len=args.max_model_len, max_concurrency=tokens / args.max_model_len)
    return report


def _text(report: Mapping[str, Any]) -> str:
    lines = [
        f"model: {report['config']} ({report['model_type'] or 'unknown type'}), TP {report['tensor_parallel']}, "
        f"PP {report['pipeline_parallel']}, KV cache dtype {report['kv_cache_dtype']}",
        f"KV cache: {report['kv_bytes_per_token']:,} B per token per GPU "
        f"({report['kv_bytes_per_block'] / 2**20:.3g} MiB per {report['block_size']}-token block)",
        f"  how: {report['kv_method']}",
    ]
    if report.get("weight_bytes") is None:
        lines.append(f"weights: {report['weight_detail']}")
    else:
        lines += [
            f"weights: {_gib(report['weight_bytes'])} whole model ({report['weight_method']}), "
            f"≈{_gib(report['weight_bytes_per_gpu'])} per GPU",
            f"  how: {report['weight_detail']}",
        ]
    if "capacity_tokens" in report:
        lines += [
            f"capacity: {report['capacity_tokens']:,} tokens of KV per GPU",
            f"  how: {report['capacity_method']}",
        ]
        if "max_concurrency" in report:
            lines.append(
                f"  {report['max_concurrency']:.2f} requests of {report['max_model_len']:,} tokens at once "
                "(full-attention models)"
            )
    return "\n".join(lines)
