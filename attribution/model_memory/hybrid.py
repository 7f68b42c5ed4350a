"""Hybrid models that mix full attention with Mamba / gated delta-net layers: which layers keep which cache,
and the fixed state each non-attention layer keeps per sequence.

The rules follow vLLM (``MambaStateShapeCalculator`` and ``MambaStateDtypeCalculator`` in
``vllm/model_executor/layers/mamba/mamba_utils.py``, and the hybrid page-size alignment; see
``docs/reference/vllm-memory.md`` §3), per GPU at tensor parallelism ``tp``:

* Mamba-1 (Jamba): conv state ``(d_conv − 1) × intermediate/tp`` plus SSM state ``intermediate/tp × d_state``,
  with ``intermediate = mamba_expand × hidden_size``;
* Mamba-2 (Bamba, Granite 4.0-H, Nemotron-H, Falcon-H1): conv state ``(d_conv − 1) × (intermediate + 2 ×
  groups × d_state)/tp`` plus SSM state ``heads/tp × head_dim × d_state``, where groups not divisible by
  ``tp`` are replicated up to ``tp``;
* gated delta-net (Qwen3-Next): conv state ``(conv_kernel − 1) × (2 × k_heads × k_dim + v_heads × v_dim)/tp``
  plus recurrent state ``v_heads/tp × v_dim × k_dim``.

Both states take the served model dtype (vLLM's ``--mamba-cache-dtype auto``), not the KV cache dtype; the
SSM state takes the config's ``mamba_ssm_cache_dtype`` when it names one (Nemotron-H's float32).
"""

from __future__ import annotations

from dataclasses import dataclass

from attribution.model_memory.config import SIZED_HYBRID_TYPES, UnsupportedModel, _int, _opt_int, _View

__all__ = ["SIZED_HYBRID_TYPES", "HybridLayout", "LayerState", "hybrid_layout", "layer_state"]

_STATE_DTYPES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True)
class HybridLayout:
    """How many layers keep a paged KV cache and how many a per-sequence state, on one GPU."""

    attention_layers: int
    state_layers: int
    how: str  # where the layer kinds came from


@dataclass(frozen=True)
class LayerState:
    """The fixed state one non-attention layer keeps per sequence on one GPU."""

    state_bytes: int  # bytes per sequence per layer per GPU
    how: str  # the shapes and dtypes


def _kinds_from_list(view: _View, key: str, layers: int, attention: set[str], state: set[str]) -> HybridLayout:
    raw = view.cfg.get(key)
    if not isinstance(raw, list) or len(raw) != layers:
        raise UnsupportedModel(f"{view.where(key)} is not a list of {layers} layer types")
    attn = mamba = 0
    for kind in raw:
        if kind in attention:
            attn += 1
        elif kind in state:
            mamba += 1
        elif not isinstance(kind, str) or kind not in {"mlp", "moe"}:
            raise UnsupportedModel(f"{view.where(key)} holds {kind!r}: an unknown layer type")
    return HybridLayout(attn, mamba, key)


def hybrid_layout(view: _View, layers: int) -> HybridLayout:
    """The attention and state layers of a hybrid of one of :data:`SIZED_HYBRID_TYPES`."""
    kind = view.model_type
    if kind == "jamba":
        period = _int(view, "attn_layer_period", need="Jamba's attention layers")
        offset = _int(view, "attn_layer_offset", minimum=0, need="Jamba's attention layers")
        attn = sum(1 for i in range(layers) if i % period == offset)
        return HybridLayout(attn, layers - attn, f"attn_layer_period {period}, attn_layer_offset {offset}")
    if kind == "falcon_h1":  # every layer runs attention and Mamba-2 side by side
        return HybridLayout(layers, layers, "Falcon-H1: attention and Mamba-2 in every layer")
    if kind == "qwen3_next":
        if view.has("layer_types"):
            return _kinds_from_list(view, "layer_types", layers, {"full_attention"}, {"linear_attention"})
        interval = _int(view, "full_attention_interval", need="Qwen3-Next's full-attention layers")
        attn = sum(1 for i in range(layers) if (i + 1) % interval == 0)
        return HybridLayout(attn, layers - attn, f"full_attention_interval {interval}")
    if kind == "nemotron_h":
        if view.has("layers_block_type"):
            return _kinds_from_list(view, "layers_block_type", layers, {"attention"}, {"mamba"})
        pattern = view.cfg.get("hybrid_override_pattern")
        if not isinstance(pattern, str) or len(pattern) != layers or set(pattern) - set("M*-E"):
            raise UnsupportedModel(
                f"{view.where('hybrid_override_pattern')} is not a string of {layers} layer marks (M, *, -, E)"
            )
        return HybridLayout(pattern.count("*"), pattern.count("M"), "hybrid_override_pattern")
    if view.has("layer_types"):  # granitemoehybrid
        return _kinds_from_list(view, "layer_types", layers, {"attention"}, {"mamba"})
    indices = view.cfg.get("attn_layer_indices")  # bamba
    if indices is None:
        raise UnsupportedModel(f"{view.where('attn_layer_indices')} is missing (needed for the attention layers)")
    if not isinstance(indices, list) or any(
        isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < layers for i in indices
    ):
        raise UnsupportedModel(f"{view.where('attn_layer_indices')} is not a list of layer numbers below {layers}")
    attn = len(set(indices))
    return HybridLayout(attn, layers - attn, "attn_layer_indices")


def _split(view: _View, what: str, value: int, tp: int) -> int:
    if value % tp:
        raise ValueError(f"tensor_parallel {tp} does not divide the {value} {what} of {view.source}")
    return value // tp


def _ssm_dtype(view: _View, state_dtype_bytes: int) -> tuple[int, str]:
    value = view.cfg.get("mamba_ssm_cache_dtype")
    if value is None or value == "auto":
        return state_dtype_bytes, ""
    if not isinstance(value, str) or value not in _STATE_DTYPES:
        raise UnsupportedModel(f"{view.where('mamba_ssm_cache_dtype')} is {value!r}, not float32/bfloat16/float16")
    return _STATE_DTYPES[value], f" (mamba_ssm_cache_dtype {value})"


def layer_state(view: _View, tp: int, dtype_bytes: int) -> LayerState:
    """The state one non-attention layer keeps per sequence on one GPU, in ``dtype_bytes`` per element."""
    kind = view.model_type
    hidden = _int(view, "hidden_size", need="the Mamba state")
    if kind == "qwen3_next":
        k_heads = _int(view, "linear_num_key_heads", need="the gated delta-net state")
        v_heads = _int(view, "linear_num_value_heads", need="the gated delta-net state")
        k_dim = _int(view, "linear_key_head_dim", need="the gated delta-net state")
        v_dim = _int(view, "linear_value_head_dim", need="the gated delta-net state")
        kernel = _int(view, "linear_conv_kernel_dim", need="the gated delta-net state")
        conv_dim = _split(view, "gated delta-net conv channels", 2 * k_heads * k_dim + v_heads * v_dim, tp)
        conv = (kernel - 1) * conv_dim
        recurrent = _split(view, "linear_num_value_heads", v_heads, tp) * v_dim * k_dim
        total = (conv + recurrent) * dtype_bytes
        return LayerState(
            total,
            f"gated delta-net: conv {kernel - 1} × {conv_dim} + recurrent {v_heads // tp} × {v_dim} × {k_dim} "
            f"elements × {dtype_bytes} B = {total:,} B",
        )
    if kind == "jamba":
        expand = _int(view, "mamba_expand", need="the Mamba state")
        state = _int(view, "mamba_d_state", need="the Mamba state")
        kernel = _int(view, "mamba_d_conv", need="the Mamba state")
        inner = _split(view, "Mamba channels", expand * hidden, tp)
        ssm_bytes, ssm_note = _ssm_dtype(view, dtype_bytes)
        total = (kernel - 1) * inner * dtype_bytes + inner * state * ssm_bytes
        return LayerState(
            total,
            f"Mamba-1: conv {kernel - 1} × {inner} × {dtype_bytes} B + SSM {inner} × d_state {state} × "
            f"{ssm_bytes} B{ssm_note} = {total:,} B",
        )
    if kind == "nemotron_h":
        heads = _int(view, "mamba_num_heads", need="the Mamba state")
        head_dim = _int(view, "mamba_head_dim", need="the Mamba state")
        state = _int(view, "ssm_state_size", need="the Mamba state")
        groups = _int(view, "n_groups", "mamba_num_groups", need="the Mamba state")
        kernel = _int(view, "conv_kernel", need="the Mamba state")
        inner = heads * head_dim
    else:  # bamba, granitemoehybrid, falcon_h1
        heads = _int(view, "mamba_n_heads", need="the Mamba state")
        head_dim = _int(view, "mamba_d_head", need="the Mamba state")
        state = _int(view, "mamba_d_state", need="the Mamba state")
        groups = _opt_int(view, "mamba_n_groups") or 1
        kernel = _int(view, "mamba_d_conv", need="the Mamba state")
        d_ssm = _opt_int(view, "mamba_d_ssm") if kind == "falcon_h1" else None
        inner = d_ssm if d_ssm is not None else _int(view, "mamba_expand", need="the Mamba state") * hidden
    if groups % tp:  # vLLM replicates the groups so that each head shard has its own
        groups = tp
    conv_dim = _split(view, "Mamba conv channels", inner + 2 * groups * state, tp)
    local_heads = _split(view, "Mamba heads", heads, tp)
    ssm_bytes, ssm_note = _ssm_dtype(view, dtype_bytes)
    total = (kernel - 1) * conv_dim * dtype_bytes + local_heads * head_dim * state * ssm_bytes
    return LayerState(
        total,
        f"Mamba-2: conv {kernel - 1} × {conv_dim} × {dtype_bytes} B + SSM {local_heads} heads × head_dim "
        f"{head_dim} × d_state {state} × {ssm_bytes} B{ssm_note} = {total:,} B",
    )
