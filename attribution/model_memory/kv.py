"""KV cache bytes per token on one GPU of a vLLM server, from the model's config.

The rules follow vLLM (see ``docs/reference/vllm-memory.md`` §3–4):

* standard / grouped-query attention: ``2 × layers_on_this_GPU × kv_heads_per_GPU × head_size × dtype_bytes``
  with ``kv_heads_per_GPU = max(1, num_key_value_heads // TP)`` and ``layers_on_this_GPU = ⌈layers / PP⌉``;
* MLA (DeepSeek-V2/V3/R1, Kimi-K2, Moonlight): ``(kv_lora_rank + qk_rope_head_dim) × layers × dtype_bytes``,
  replicated on every TP rank;
* sliding-window hybrids (Gemma-2/3, gpt-oss): vLLM's hybrid KV cache manager groups layers of each kind
  into groups of equal size and pads the last group of a kind; physical bytes per token follow all layer
  slots including the padding;
* Mamba / gated delta-net hybrids (Jamba, Bamba, Granite 4.0-H, Nemotron-H, Falcon-H1, Qwen3-Next): bytes
  per token of the attention layers only, plus a fixed state per sequence for the other layers
  (:mod:`~attribution.model_memory.hybrid`), both in pages vLLM aligns to one size;
* anything else (other Mamba / linear-attention hybrids, KV sharing, sparse-attention indexers,
  encoder-decoder) is refused with :class:`~attribution.model_memory.config.UnsupportedModel`, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attribution.model_memory.budget import DEFAULT_BLOCK_SIZE
from attribution.model_memory.config import (
    _ATTENTION_LAYER_TYPES,
    SIZED_HYBRID_TYPES,
    UnsupportedModel,
    _head_geometry,
    _int,
    _layer_count,
    _model_dtype,
    _opt_int,
    _refuse_unsupported,
    _View,
    _view,
)
from attribution.model_memory.hybrid import hybrid_layout, layer_state


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
    # Mamba / gated delta-net hybrids only (0, None, "" otherwise):
    state_layers: int = 0  # layers keeping a fixed state per sequence on this GPU
    state_bytes_per_seq: int = 0  # bytes per sequence per GPU those layers hold, in vLLM's padded pages
    block_size: int | None = None  # tokens per attention block vLLM raises the block size to
    state_method: str = ""  # one sentence: shapes, page alignment and grouping
    block_bytes: int = 0  # one block of vLLM's shared pool over all layer slots (a page × the group size)


# Model types whose config class fixes which layers slide when the config gives no list or pattern
# (transformers' defaults: Gemma-2 alternates, Gemma-3 has 5 sliding : 1 full, Cohere-2 3 : 1).
_DEFAULT_SLIDING_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6, "cohere2": 4}
# Model types whose ``sliding_window`` applies to every layer.
_UNIFORM_SLIDING = frozenset({"mistral", "mixtral", "starcoder2", "phi3", "phimoe", "phi3small"})


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


def _kv_dtype(view: _View, kv_cache_dtype: str, dtype: str) -> tuple[int, str, str]:
    if not isinstance(kv_cache_dtype, str):
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is not a string")
    wanted = kv_cache_dtype.strip().lower()
    if wanted == "auto":
        return _model_dtype(view, dtype)
    if wanted not in _KV_DTYPES:
        raise ValueError(f"kv_cache_dtype {kv_cache_dtype!r} is not one of auto, {', '.join(_KV_DTYPES)}")
    return _KV_DTYPES[wanted], wanted, ""


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
    dtype: str = "auto",
    block_size: int = DEFAULT_BLOCK_SIZE,
    source: str = "<config>",
) -> KvSizing:
    """KV cache bytes per token on one GPU of a vLLM server running this model.

    ``dtype`` is vLLM's ``--dtype`` (the served model dtype, which ``--kv-cache-dtype auto`` follows);
    ``block_size`` its ``--block-size``, which a hybrid's state pages raise (:attr:`KvSizing.block_size`).
    Raises :class:`UnsupportedModel` (naming ``source`` and the field) for a model whose cache this does
    not size, and ValueError for parallelism vLLM would refuse or an unknown ``kv_cache_dtype``.
    """
    _check_parallel(tensor_parallel, pipeline_parallel)
    view = _view(config, source)
    _refuse_unsupported(view, sized_hybrids=True)
    layers = _layer_count(view, "the layer count")
    dtype_bytes, dtype_name, dtype_note = _kv_dtype(view, kv_cache_dtype, dtype)
    tp = tensor_parallel
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if view.model_type in SIZED_HYBRID_TYPES:
        state_dtype_bytes = _model_dtype(view, dtype)[0]
        kv = (dtype_bytes, dtype_name, dtype_note)
        return _hybrid_sizing(
            view,
            layers,
            tp=tp,
            pipeline_parallel=pipeline_parallel,
            kv_dtype=kv,
            state_dtype_bytes=state_dtype_bytes,
            block_size=block_size,
        )

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
    kv_per_gpu = _kv_heads_per_gpu(heads, kv_heads, tp, source)
    kinds, kinds_how = _layer_kinds(view, layers)
    slots, hybrid_how = _layer_slots(kinds)
    if hybrid_how:
        hybrid_how += f" (layer kinds from {kinds_how})"
    if hybrid_how and pipeline_parallel > 1:
        raise UnsupportedModel(
            f"{source}: hybrid attention ({kinds_how}) with pipeline_parallel {pipeline_parallel} is not sized, "
            "because how vLLM groups layers of each kind on each stage changed between releases (each stage's own "
            "layers, then groups of the whole model cut by stage)"
        )
    if hybrid_how:
        on_gpu, layer_how = slots, f"{slots} layer slots"
    else:
        on_gpu, layer_how = _layers_on_gpu(view, layers, pipeline_parallel)
    total = 2 * on_gpu * kv_per_gpu * head_dim * dtype_bytes
    attention = "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"
    notes = [n for n in (geometry_note, hybrid_how, dtype_note) if n]
    if not hybrid_how and "sliding" in kinds:
        notes.append(f"{kinds_how}: bytes per token unchanged, each request holds at most the window")
    method = (
        f"{attention.upper()}: 2 (K and V) × {layer_how} × {_heads_how(kv_heads, kv_per_gpu, tp)} × head_dim "
        f"{head_dim} × {dtype_bytes} B ({dtype_name}) = {total:,} B per token per GPU"
        f"{'; ' + '; '.join(notes) if notes else ''}"
    )
    return KvSizing(total, attention, on_gpu, kv_per_gpu, head_dim, dtype_bytes, method)


def _kv_heads_per_gpu(heads: int, kv_heads: int, tp: int, source: str) -> int:
    if heads % tp:
        raise ValueError(f"tensor_parallel {tp} does not divide the {heads} attention heads of {source}")
    if kv_heads >= tp and kv_heads % tp:
        raise ValueError(f"tensor_parallel {tp} does not divide the {kv_heads} KV heads of {source}")
    if kv_heads < tp and tp % kv_heads:
        raise ValueError(f"tensor_parallel {tp} is not a multiple of the {kv_heads} KV heads of {source}")
    return max(1, kv_heads // tp)


def _heads_how(kv_heads: int, kv_per_gpu: int, tp: int) -> str:
    plural = "s" if kv_per_gpu != 1 else ""
    if tp == 1:
        return f"{kv_per_gpu} KV head{plural}"
    if kv_heads < tp:
        return f"{kv_per_gpu} KV head (the {kv_heads} KV heads replicated over TP {tp})"
    return f"{kv_per_gpu} KV head{plural} ({kv_heads} / TP {tp})"


def _hybrid_sizing(
    view: _View,
    layers: int,
    *,
    tp: int,
    pipeline_parallel: int,
    kv_dtype: tuple[int, str, str],
    state_dtype_bytes: int,
    block_size: int,
) -> KvSizing:
    """Attention bytes per token and state bytes per sequence of a Mamba / gated delta-net hybrid, as vLLM
    pages them: the attention block grows until one layer's block holds one layer's state
    (``block = B × ⌈state / (B × per-layer bytes per token)⌉`` with ``B`` the requested block size), the state
    page is padded to that block's bytes, and layers of each kind are grouped as for sliding-window hybrids."""
    source = view.source
    if pipeline_parallel > 1:
        raise UnsupportedModel(
            f"{source}: a {view.model_type} hybrid with pipeline_parallel {pipeline_parallel} is not sized, because "
            "how vLLM groups its attention and state layers into pages on each stage changed between releases (each "
            "stage's own layers, then groups of the whole model cut by stage)"
        )
    layout = hybrid_layout(view, layers)
    if layout.attention_layers == 0 or layout.state_layers == 0:
        raise UnsupportedModel(
            f"{source}: {layout.how} gives {layout.attention_layers} attention and {layout.state_layers} state "
            "layers: not the attention/state hybrid this sizes"
        )
    dtype_bytes, dtype_name, dtype_note = kv_dtype
    heads, kv_heads, head_dim, geometry_note = _head_geometry(view)
    kv_per_gpu = _kv_heads_per_gpu(heads, kv_heads, tp, source)
    per_layer = 2 * kv_per_gpu * head_dim * dtype_bytes  # one token of one attention layer
    state = layer_state(view, tp, state_dtype_bytes)
    block = block_size * -(-state.state_bytes // (block_size * per_layer))
    page = block * per_layer  # bytes of one block of one layer, attention or state
    counts = (layout.attention_layers, layout.state_layers)
    group = max(counts) if max(counts) < min(counts) * 1.25 else min(counts)
    attn_slots, state_slots = (-(-n // group) * group for n in counts)
    total = attn_slots * per_layer
    state_total = state_slots * page
    attention = "mha" if kv_heads == heads else "mqa" if kv_heads == 1 else "gqa"
    notes = [n for n in (geometry_note, dtype_note) if n]
    method = (
        f"{attention.upper()} on the {layout.attention_layers} attention layers of a {view.model_type} hybrid "
        f"({layout.how}): 2 (K and V) × {attn_slots} layer slots × {_heads_how(kv_heads, kv_per_gpu, tp)} × "
        f"head_dim {head_dim} × {dtype_bytes} B ({dtype_name}) = {total:,} B per token per GPU"
        f"{'; ' + '; '.join(notes) if notes else ''}"
    )
    padding = page - state.state_bytes
    state_method = (
        f"{layout.state_layers} state layers × {state.how} per sequence; attention block raised to "
        f"{block} tokens ({block_size} × ⌈{state.state_bytes:,} / ({block_size} × {per_layer:,} B)⌉) so one "
        f"page of {page:,} B holds a layer's state ({padding:,} B padding); layers grouped by {group} → "
        f"{state_slots} state slots × {page:,} B = {state_total:,} B per sequence per GPU "
        f"(unpadded {layout.state_layers * state.state_bytes:,} B)"
    )
    return KvSizing(
        total,
        attention,
        attn_slots,
        kv_per_gpu,
        head_dim,
        dtype_bytes,
        method,
        state_layers=layout.state_layers,
        state_bytes_per_seq=state_total,
        block_size=block,
        state_method=state_method,
        block_bytes=page * group,
    )
