"""The capacity review's figures from its inputs: each pod priced, allocation against use per dimension,
traffic share against GPU share per model, SLO attainment, a consolidation plan and week-over-week trends.

GPU-hours come integrated from PromQL (:mod:`attribution.review.data`), so a pod that held GPUs for part of
the window counts for that part, and silence (no activity series) counts as zero use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from typing import Any

import pandas as pd

from attribution.health import check
from attribution.prometheus import PrometheusClient
from attribution.recommend import Item, pack
from attribution.review.data import DIMENSIONS, ESSENTIAL, Inputs, gather
from attribution.sharing import SHARING_NOTE
from common import catalog as c
from common.units import GiB, parse_duration


def priced(per_pod: pd.DataFrame, prices: dict[str, float], default: float) -> pd.DataFrame:
    """Each pod's cost over the window at its GPU model's price per GPU-hour (the default for others)."""
    if per_pod.empty:
        return per_pod.assign(cost=[], cost_idle=[])
    rate = per_pod["gpu_model"].map(lambda m: prices.get(str(m), default))
    return per_pod.assign(cost=per_pod["alloc_h"] * rate, cost_idle=per_pod["idle_h"] * rate)


def by_dimension(per_pod: pd.DataFrame, dimension: str, hours: float) -> pd.DataFrame:
    cols = ["alloc_h", "used_h", "mem_h", "idle_h", "unknown_h", "cost", "cost_idle"]
    if per_pod.empty:
        return pd.DataFrame(
            columns=[
                "name",
                "gpus_allocated",
                "gpus_used_sm",
                "memory_share",
                "idle_gpu_hours",
                "unknown_gpu_hours",
                "cost",
                "cost_idle",
            ]
        )
    g = per_pod.groupby(dimension, as_index=False)[cols].sum()
    out = pd.DataFrame(
        {
            "name": g[dimension],
            "gpus_allocated": g["alloc_h"] / hours,
            "gpus_used_sm": g["used_h"] / hours,
            "memory_share": (g["mem_h"] / g["alloc_h"]).where(g["alloc_h"] > 0),
            "idle_gpu_hours": g["idle_h"],
            "unknown_gpu_hours": g["unknown_h"],
            "cost": g["cost"],
            "cost_idle": g["cost_idle"],
        }
    )
    return out.sort_values("cost_idle", ascending=False, ignore_index=True)


def slo(inputs: Inputs, targets: dict[str, float]) -> pd.DataFrame:
    """Per model and latency (``ttft``, ``itl``): the share of observations within the target, from the
    histogram's bucket at the target (interpolated linearly inside a bucket, as histogram_quantile does)."""
    rows = []
    for metric, target_s in targets.items():
        rows += [
            {"model": m, "metric": metric, "target_s": target_s, "attainment": w / n}
            for m, (w, n) in sorted(_attainment(inputs, inputs.latency_buckets.get(metric, {}), target_s).items())
        ]
    return pd.DataFrame(rows, columns=["model", "metric", "target_s", "attainment"])


def _attainment(
    inputs: Inputs, histograms: dict[tuple[str, str], dict[float, float]], target_s: float
) -> dict[str, list[float]]:
    models = inputs.per_pod.set_index(["namespace", "pod"])["model"].to_dict() if not inputs.per_pod.empty else {}
    totals: dict[str, list[float]] = {}
    for key, buckets in histograms.items():
        les = sorted(buckets)
        count = buckets.get(math.inf, 0.0)
        if not count:
            continue
        within = 0.0
        previous_le, previous_n = 0.0, 0.0
        for le in les:
            if le >= target_s:
                n = buckets[le]
                within = previous_n + (n - previous_n) * (
                    (target_s - previous_le) / (le - previous_le) if le != math.inf and le > previous_le else 0.0
                )
                break
            previous_le, previous_n = le, buckets[le]
        model = models.get(key) or key[1]
        acc = totals.setdefault(model, [0.0, 0.0])
        acc[0] += within
        acc[1] += count
    return totals


def footprint(row: Mapping[Hashable, Any], headroom: float) -> tuple[int, bool]:
    """Bytes a pod needs on each of its GPUs, and whether that is vLLM's right-sized footprint.

    vLLM reserves most of its GPU by design (``--gpu-memory-utilization``), so its peak memory says nothing of
    what it needs: its footprint is what it holds less its KV reservation, plus the peak KV in use plus
    headroom, as the attribution job recommends (:func:`attribution.recommend.recommend`). Other pods need
    their peak memory plus headroom."""
    peak = float(row["peak_mem"])
    kv_bytes, kv_max = float(row.get("kv_bytes", math.nan)), float(row.get("kv_max", math.nan))
    if row.get("model") and not math.isnan(kv_max) and 0 < kv_bytes <= peak:
        keep = min(kv_bytes, math.ceil(kv_bytes * min(1.0, max(0.0, kv_max)) * (1 + headroom)))
        return int(peak - kv_bytes + keep), True
    return int(peak * (1 + headroom)), False


def consolidation(per_pod: pd.DataFrame, headroom: float) -> dict[str, Any]:
    """Right-sized footprints (vLLM's weights, overhead and peak KV + headroom; other pods' peak memory +
    headroom, per GPU; peak SM) packed with time-slicing where the class allows it. Training keeps its GPUs
    (it saturates them by design); multi-GPU pods move whole. Today's GPUs are those held: a MIG instance or
    a shared replica counts as its share of a GPU."""
    refused: dict[str, str] = {}
    items: list[Item] = []
    today = 0.0
    vllm_unsized: list[str] = []
    gpu_bytes = int(per_pod["gpu_bytes"].max()) if not per_pod.empty and per_pod["gpu_bytes"].max() > 0 else 80 * GiB
    for row in per_pod.to_dict("records"):
        gpus = round(row["gpus"]) or 0
        if gpus == 0:
            continue
        today += float(row.get("held", gpus))
        name = f"{row['namespace']}/{row['pod']}"
        if row["workload_class"] == "training":
            refused[name] = "training keeps its GPUs: it is built to saturate them"
            items.append(Item(name, gpu_bytes, ranks=gpus))
            continue
        per_gpu, sized = footprint(row, headroom)
        if row.get("model") and not sized:
            vllm_unsized.append(name)
        sm_share = float(row["peak_sm"]) / max(1, gpus)
        # time-slicing shares SM time too: a footprint takes at least its SM share of a GPU's memory "slot"
        items.append(Item(name, max(per_gpu, int(gpu_bytes * min(1.0, sm_share * (1 + headroom)))), ranks=gpus))
    plan = pack(items, gpu_bytes, gpus_today=math.ceil(round(today, 6)))
    today = round(today, 2)
    if today == int(today):  # whole GPUs read as they did: 160, not 160.0
        today = int(today)
    assumptions = [
        f"footprint per GPU of a vLLM server = what it holds less its KV cache reservation, plus its peak KV "
        f"in use × {1 + headroom:g} (as the attribution job recommends); of any other pod = peak memory × "
        f"{1 + headroom:g}; and at least the peak SM share × {1 + headroom:g} of a GPU",
        "inference, batch and experimentation workloads may share a GPU by time-slicing; "
        "MIG where footprints fit a profile",
        "multi-GPU pods move as a whole, each rank on a different GPU; all GPUs taken as the largest kind seen",
        "GPUs today are those held: " + SHARING_NOTE,
    ]
    if vllm_unsized:
        more = f" and {len(vllm_unsized) - 5} more" if len(vllm_unsized) > 5 else ""
        assumptions.append(
            "vLLM servers without KV cache usage or cache_config_info, packed at peak memory × "
            f"{1 + headroom:g}: {', '.join(vllm_unsized[:5])}{more}"
        )
    return {
        "gpus_today": today,
        "gpus_needed": plan.gpus_needed,
        "gpus_freed": round(today - plan.gpus_needed, 2),
        "refused": {**refused, **plan.refused},
        "assumptions": assumptions,
    }


def timeline(inputs: Inputs) -> dict[str, list[list[float | None]]]:
    """Per team (named as in ``by``), one ``[start of the step, GPUs allocated, GPUs' worth used]`` per
    step of the timeline, oldest first; each figure the mean over the step, None where no pod of the team
    had a series in the step (a gap, not zero). Teams come from the pods' info series, as in the table."""
    frame, step_s = inputs.timeline, inputs.timeline_step_s
    if step_s is None:
        return {}
    teams: dict[tuple[str, str], str] = {}
    if not inputs.per_pod.empty:
        pods = zip(inputs.per_pod["namespace"], inputs.per_pod["pod"], strict=True)
        teams = dict(zip(pods, inputs.per_pod["team"], strict=True))
    names = set(teams.values())
    sums: dict[tuple[str, float], dict[str, float]] = {}
    if not frame.empty:
        frame = frame.assign(team=[teams.get(k, "") for k in zip(frame["namespace"], frame["pod"], strict=True)])
        names |= set(frame["team"])
        grouped = frame.groupby(["team", "time"], as_index=False)[["allocated", "used"]].sum(min_count=1)
        sums = {
            (str(r["team"]), float(r["time"])): {"allocated": float(r["allocated"]), "used": float(r["used"])}
            for r in grouped.to_dict("records")
        }

    def value(team: str, t: float, figure: str) -> float | None:
        got = float(sums.get((team, t), {}).get(figure, math.nan))
        return None if math.isnan(got) else round(got, 6)

    return {
        name: [[t - step_s, value(name, t, "allocated"), value(name, t, "used")] for t in inputs.timeline_times]
        for name in sorted(names)
    }


def run(
    client: PrometheusClient,
    *,
    window: str,
    at: float,
    resolution: str,
    price: float,
    idle: float,
    slo_ttft: float,
    slo_itl: float = 0.1,
    headroom: float,
    prices: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The review of the window ending at ``at``; InputsFailedError when an essential input failed."""
    hours = parse_duration(window, "--window") / 3600
    inputs = gather(client, window, at, resolution, idle)
    check(inputs.failed, ESSENTIAL)  # InputsFailedError: no figures from a review without them
    inputs.per_pod = priced(inputs.per_pod, prices or {}, price)
    inputs.previous = priced(inputs.previous, prices or {}, price)
    by = {d: by_dimension(inputs.per_pod, d, hours) for d in DIMENSIONS}
    models_rows = []
    if not inputs.per_pod.empty:
        serving = inputs.per_pod[inputs.per_pod["model"] != ""]
        gpu_by_model = serving.groupby("model")["alloc_h"].sum() / hours
        tokens_by_model: dict[str, float] = {}
        for (ns, pod), n in inputs.tokens.items():
            model = serving.set_index(["namespace", "pod"])["model"].get((ns, pod)) if not serving.empty else None
            if model:
                tokens_by_model[model] = tokens_by_model.get(model, 0.0) + n
        all_tokens, all_gpus = sum(tokens_by_model.values()), float(gpu_by_model.sum())
        for model, gpus in gpu_by_model.items():
            tok = tokens_by_model.get(str(model), 0.0)
            models_rows.append(
                {
                    "model": model,
                    "tokens": tok,
                    "traffic_share": tok / all_tokens if all_tokens else None,
                    "gpu_share": gpus / all_gpus if all_gpus else None,
                }
            )
    trends = []
    for dimension in ("team", "namespace"):
        now = by_dimension(inputs.per_pod, dimension, hours).set_index("name")["gpus_used_sm"]
        before = (
            by_dimension(inputs.previous, dimension, hours).set_index("name")["gpus_used_sm"]
            if not inputs.previous.empty
            else pd.Series(dtype=float)
        )
        for name in sorted(set(now.index) | set(before.index)):
            a, b = float(now.get(name, 0.0)), float(before.get(name, 0.0))
            trends.append(
                {"dimension": dimension, "name": name, "gpus_used": a, "gpus_used_previous": b, "change": a - b}
            )
    return {
        "window": window,
        "by": {d: json.loads(frame.to_json(orient="records") or "[]") for d, frame in by.items()},
        "models": models_rows,
        "slo": json.loads(slo(inputs, {"ttft": slo_ttft, "itl": slo_itl}).to_json(orient="records") or "[]"),
        "consolidation": consolidation(inputs.per_pod, headroom)
        if not inputs.per_pod.empty
        else {"gpus_today": 0, "gpus_needed": 0, "gpus_freed": 0, "refused": {}, "assumptions": []},
        "trends": trends,
        "problems": [*inputs.problems, *_unknown_activity(inputs.per_pod), *_unjudged(inputs)],
        "sampling": {"spacing_s": inputs.spacing_s, "resolution": resolution, "note": inputs.sampling},
        "timeline": timeline(inputs),
        "timeline_step_s": inputs.timeline_step_s,
        "sharing": [SHARING_NOTE],
        "failed_inputs": list(inputs.failed),
    }


def _unknown_activity(per_pod: pd.DataFrame) -> list[str]:
    """A caveat naming the allocation whose activity the driver did not measure: neither used nor idle."""
    if per_pod.empty or "unknown_h" not in per_pod or float(per_pod["unknown_h"].sum()) <= 0:
        return []
    pods = per_pod[per_pod["unknown_h"] > 0]
    names = ", ".join(f"{ns}/{pod}" for ns, pod in list(zip(pods["namespace"], pods["pod"], strict=True))[:5])
    more = f" and {len(pods) - 5} more" if len(pods) > 5 else ""
    return [
        f"{float(per_pod['unknown_h'].sum()):.0f} allocated GPU-hours had unknown activity (several MPS clients on "
        f"one GPU, or several containers in one MIG instance: the driver does not measure them apart), counted "
        f"neither as used nor as idle: {names}{more}"
    ]


LATENCY_NAMES = {"ttft": (c.External.VLLM_TTFT,), "itl": c.External.VLLM_INTER_TOKEN_LATENCY}


def _unjudged(inputs: Inputs) -> list[str]:
    """A problem for each latency SLO that no histogram in Prometheus lets the review judge, when vLLM
    servers ran (pods serving a model, or token counters): without them there is nothing to judge. A query
    that failed is named as such already."""
    serving = bool(inputs.tokens) or (not inputs.per_pod.empty and bool((inputs.per_pod["model"] != "").any()))
    if not serving:
        return []
    out = []
    for metric, names in LATENCY_NAMES.items():
        if not inputs.latency_buckets.get(metric) and metric not in inputs.failed:
            either = names[0] + "".join(f" (or {n})" for n in names[1:])
            out.append(f"no {either} histograms in Prometheus; {metric.upper()} SLO not judged")
    return out
