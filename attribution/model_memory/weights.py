"""Weight bytes of a model: exact from its safetensors headers, else an architecture estimate.

With a checkpoint directory the bytes are summed from the shards' headers as stored (multi-token-prediction
layers, which vLLM loads only for speculative decoding, left out); without one, parameters are counted from
the config's geometry and priced in the serving dtype or the checkpoint's quantisation, with every
assumption stated in the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attribution.model_memory.config import (
    _ATTENTION_LAYER_TYPES,
    SIZED_HYBRID_TYPES,
    UnsupportedModel,
    _head_geometry,
    _int,
    _layer_count,
    _model_dtype,
    _opt_bool,
    _opt_int,
    _refuse_unsupported,
    _View,
    _view,
)
from attribution.safetensors_header import CheckpointHeaders, find_shards
from common.units import gib


@dataclass(frozen=True)
class WeightSizing:
    """Weight bytes of the whole model (all ranks together), and how they were obtained."""

    weight_bytes: int  # bytes, whole model
    method: str  # "safetensors" | "estimate"
    detail: str  # shard headers read, or the estimate and its assumptions


_MTP_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def weight_sizing(
    config: Mapping[str, Any], model_dir: str | Path | None = None, *, dtype: str = "auto"
) -> WeightSizing:
    """Weight bytes of the whole model: exact from the safetensors headers in ``model_dir``, else estimated
    with unquantised weights in the served ``dtype`` (vLLM's ``--dtype``; the exact bytes are the files').

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
    estimate = _estimate(config, dtype)
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
    dtypes = ", ".join(f"{d} {gib(b)}" for d, b in sorted(by_dtype.items(), key=lambda kv: -kv[1]))
    detail = (
        f"headers of {shards} shard{'s' if shards != 1 else ''} in {checkpoint.model_dir} (via {found}): "
        f"{count:,} tensors, {total:,} bytes as stored ({dtypes})"
    )
    if skipped_count:
        detail += (
            f"; left out {skipped_count:,} tensors ({gib(skipped)}) of multi-token-prediction layers "
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


def _estimate(config: Mapping[str, Any], dtype: str = "auto") -> WeightSizing:
    view = _view(config, "<config>")
    if view.model_type in SIZED_HYBRID_TYPES:
        raise UnsupportedModel(
            f"{view.source}: the weights of a {view.model_type} hybrid are not estimated, because the parameters of "
            "its Mamba / linear-attention layers are not modelled here; give the checkpoint's *.safetensors for "
            "exact bytes, or its start-up log for vLLM's own figure"
        )
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

    dtype_bytes, dtype_name, dtype_note = _model_dtype(view, dtype)
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
