"""``gpuattr model-memory``: KV bytes per token, weights and the capacity plan of a model, as text or JSON.

Every flag is also a ``GPUATTR_*`` environment variable (:func:`common.envflags.parse_args`); ``--config``
is ``GPUATTR_MODEL_CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

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
from attribution.model_memory.config import UnsupportedModel, _view, load_config
from attribution.model_memory.kv import kv_sizing
from attribution.model_memory.weights import WeightSizing, weight_sizing
from common import envflags
from common.units import MiB, gib, parse_size


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _size(text: str) -> int:
    """A size flag's bytes (``80GiB``, ``512MiB``, ``1.5GB`` or bytes)."""
    try:
        return int(parse_size(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> _Parser:
    parser = _Parser(
        prog="gpuattr model-memory",
        description="KV cache bytes per token per GPU and weight bytes of a model from its config.json, and how "
        "many tokens of KV fit on a GPU. Every flag is also an environment variable GPUATTR_<FLAG>.",
    )
    parser.add_argument(
        "--config",
        dest="model_config",  # GPUATTR_MODEL_CONFIG, as documented
        metavar="CONFIG",
        help="config.json, or a directory holding it (required)",
    )
    parser.add_argument("--tensor-parallel", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--pipeline-parallel", type=int, default=1, help="pipeline-parallel size")
    parser.add_argument(
        "--kv-cache-dtype",
        default="auto",
        help="vLLM's --kv-cache-dtype: auto (the model dtype), fp8, fp8_e4m3, fp8_e5m2, bfloat16…",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="vLLM's --dtype, the served model dtype that --kv-cache-dtype auto and a hybrid's state follow: auto "
        "(the config's, float32 checkpoints in 16-bit), bfloat16, float16, half, float32, float",
    )
    parser.add_argument("--model-dir", help="checkpoint directory: weights summed exactly from its safetensors headers")
    parser.add_argument("--gpu-memory", type=_size, help="memory of one GPU, e.g. 80GiB: asks for the capacity plan")
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=DEFAULT_UTILIZATION,
        help="vLLM's --gpu-memory-utilization",
    )
    parser.add_argument(
        "--activation-peak",
        type=_size,
        default=DEFAULT_ACTIVATION_PEAK,
        help="PyTorch activation peak per GPU (the start-up log's budget line has the real figure)",
    )
    parser.add_argument(
        "--non-torch",
        type=_size,
        help=f"non-torch memory per GPU (default: {DEFAULT_NON_TORCH_TP1} at TP 1, {DEFAULT_NON_TORCH_TP} at TP > 1 "
        "for NCCL buffers)",
    )
    parser.add_argument("--max-model-len", type=int, help="tokens per request, for the concurrency the capacity allows")
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        help="sequences running at once whose Mamba / linear-attention state a hybrid holds beside its KV (default: 1; "
        "capacity is what is left for tokens)",
    )
    parser.add_argument(
        "--weights",
        type=_size,
        help="whole-model weight bytes, e.g. from the start-up log's 'Model loading took', instead of the estimate "
        "(which refuses hybrids)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        help="tokens per KV block; capacity is whole blocks",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``gpuattr model-memory``: 0 on success, 2 on bad input (the message names it)."""
    parser = build_parser()
    try:
        args = envflags.parse_args(parser, argv)
        if not args.model_config:
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
    source = str(args.model_config)
    config = load_config(args.model_config)
    kv = kv_sizing(
        config,
        tensor_parallel=args.tensor_parallel,
        pipeline_parallel=args.pipeline_parallel,
        kv_cache_dtype=args.kv_cache_dtype,
        dtype=args.dtype,
        block_size=args.block_size,
        source=source,
    )
    block_size = kv.block_size or args.block_size  # a hybrid's state pages raise it
    report: dict[str, Any] = {
        "config": source,
        "model_type": _view(config, source).model_type or None,
        "tensor_parallel": args.tensor_parallel,
        "pipeline_parallel": args.pipeline_parallel,
        "dtype": args.dtype,
        "kv_cache_dtype": args.kv_cache_dtype,
        "kv_bytes_per_token": kv.kv_bytes_per_token,
        "kv_method": kv.method,
        "attention": kv.attention,
        "layers_per_gpu": kv.layers_per_gpu,
        "kv_heads_per_gpu": kv.kv_heads_per_gpu,
        "head_dim": kv.head_dim,
        "kv_dtype_bytes": kv.dtype_bytes,
        "kv_bytes_per_block": kv.kv_bytes_per_token * block_size,
        "block_size": block_size,
    }
    if kv.state_layers:
        report.update(
            state_layers=kv.state_layers, state_bytes_per_seq=kv.state_bytes_per_seq, state_method=kv.state_method
        )
    try:
        weights: WeightSizing | None = (
            weight_sizing(config, args.model_dir, dtype=args.dtype)
            if args.weights is None
            else WeightSizing(args.weights, "given", f"--weights {gib(args.weights)}")
        )
    except UnsupportedModel as exc:
        if args.gpu_memory is not None:
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
    if args.gpu_memory is not None and weights is not None:
        gpu, activation = args.gpu_memory, args.activation_peak
        non_torch = args.non_torch
        if non_torch is None:
            non_torch = _size(DEFAULT_NON_TORCH_TP if args.tensor_parallel > 1 else DEFAULT_NON_TORCH_TP1)
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
        if args.max_num_seqs is not None and args.max_num_seqs < 1:
            raise _UsageError(f"--max-num-seqs must be at least 1, got {args.max_num_seqs}")
        sequences = (args.max_num_seqs or 1) if kv.state_layers else 0
        tokens = kv_capacity_tokens(
            **budget_args,
            kv_bytes_per_token=kv.kv_bytes_per_token,
            block_size=block_size,
            state_bytes_per_seq=kv.state_bytes_per_seq,
            sequences=sequences,
        )
        if tokens == 0:
            left = budget - sequences * kv.state_bytes_per_seq
            raise _UsageError(
                _does_not_fit(
                    args, report["weight_bytes_per_gpu"], activation, non_torch, budget=left, block_size=block_size
                )
            )
        state_how = (
            f" − {sequences} sequence{'s' if sequences != 1 else ''} × {kv.state_bytes_per_seq:,} B of state"
            if sequences
            else ""
        )
        report.update(
            gpu_memory_bytes=gpu,
            gpu_memory_utilization=args.gpu_memory_utilization,
            activation_peak_bytes=activation,
            non_torch_bytes=non_torch,
            kv_budget_bytes=budget,
            capacity_tokens=tokens,
            capacity_method=(
                f"{gib(gpu)} × {args.gpu_memory_utilization:g} − (weights {gib(report['weight_bytes_per_gpu'])} "
                f"[whole model / {ranks} ranks] + activation peak {gib(activation)} + non-torch {gib(non_torch)}) "
                f"= {gib(budget)} of KV per GPU{state_how}, / {kv.kv_bytes_per_token:,} B per token, in whole "
                f"blocks of {block_size}"
            ),
        )
        if args.max_model_len is not None:
            if args.max_model_len < 1:
                raise _UsageError(f"--max-model-len must be at least 1, got {args.max_model_len}")
            if kv.state_layers:  # whole requests, each with its blocks and its state
                concurrency: float = concurrent_sequences(
                    kv_budget=budget,
                    kv_bytes_per_token=kv.kv_bytes_per_token,
                    tokens_per_seq=args.max_model_len,
                    block_size=block_size,
                    state_bytes_per_seq=kv.state_bytes_per_seq,
                )
            else:
                concurrency = tokens / args.max_model_len
            report.update(max_model_len=args.max_model_len, max_concurrency=concurrency)
    return report


def _does_not_fit(
    args: argparse.Namespace, weights: int, activation: int, non_torch: int, *, budget: int, block_size: int
) -> str:
    """Why no token of KV fits: the weights alone, the weights with the overheads (and a hybrid's states), or
    less than one block left."""
    usable = args.gpu_memory * args.gpu_memory_utilization
    where = f"--gpu-memory {gib(args.gpu_memory)}: does not fit"
    of = f"of the {gib(usable)} vLLM may use ({gib(args.gpu_memory)} × {args.gpu_memory_utilization:g})"
    if weights >= usable:
        return f"{where}: the weights alone need {gib(weights)} per GPU {of}"
    need = weights + activation + non_torch
    if need >= usable:
        return (
            f"{where}: the weights ({gib(weights)}), activation peak ({gib(activation)}) and non-torch memory "
            f"({gib(non_torch)}) need {gib(need)} per GPU {of}, leaving nothing for the KV cache"
        )
    if budget <= 0:
        return f"{where}: the sequences' state (--max-num-seqs) takes all {gib(usable - need)} left for the KV cache"
    return f"{where}: {gib(budget)} is left for the KV cache, less than one block of {block_size} tokens"


def _text(report: Mapping[str, Any]) -> str:
    lines = [
        f"model: {report['config']} ({report['model_type'] or 'unknown type'}), TP {report['tensor_parallel']}, "
        f"PP {report['pipeline_parallel']}, dtype {report['dtype']}, KV cache dtype {report['kv_cache_dtype']}",
        f"KV cache: {report['kv_bytes_per_token']:,} B per token per GPU "
        f"({report['kv_bytes_per_block'] / MiB:.3g} MiB per {report['block_size']}-token block)",
        f"  how: {report['kv_method']}",
    ]
    if "state_bytes_per_seq" in report:
        lines += [
            f"state: {report['state_bytes_per_seq']:,} B per sequence per GPU ({report['state_layers']} Mamba / "
            "linear-attention layers)",
            f"  how: {report['state_method']}",
        ]
    if report.get("weight_bytes") is None:
        lines.append(f"weights: {report['weight_detail']}")
    else:
        lines += [
            f"weights: {gib(report['weight_bytes'])} whole model ({report['weight_method']}), "
            f"≈{gib(report['weight_bytes_per_gpu'])} per GPU",
            f"  how: {report['weight_detail']}",
        ]
    if "capacity_tokens" in report:
        lines += [
            f"capacity: {report['capacity_tokens']:,} tokens of KV per GPU",
            f"  how: {report['capacity_method']}",
        ]
        if "max_concurrency" in report:
            if "state_bytes_per_seq" in report:
                lines.append(
                    f"  {report['max_concurrency']} whole requests of {report['max_model_len']:,} tokens at once, "
                    "each with its state"
                )
            else:
                lines.append(
                    f"  {report['max_concurrency']:.2f} requests of {report['max_model_len']:,} tokens at once "
                    "(full-attention models)"
                )
    return "\n".join(lines)
