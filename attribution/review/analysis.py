"""``gpuattr review``: the capacity review. Allocation against use per team, namespace, workload, model and
workload class; idle-but-allocated GPU-hours and their cost; traffic share against GPU share; SLO
attainment; a consolidation plan for every GPU workload; and week-over-week trends.

It reuses the attribution job's inputs (Prometheus, aggregation in PromQL), packing and outputs. GPU-hours
are integrated with subqueries at ``--resolution``, so a pod that held GPUs for part of the window counts
for that part, and silence (no activity series) counts as zero use.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attribution.job import window_seconds
from attribution.prometheus import PrometheusClient, PrometheusError, Sample
from attribution.recommend import Item, pack
from common import catalog as c

DIMENSIONS = ("team", "namespace", "workload", "model", "workload_class")
KEYS = "namespace, pod"
GiB = 2**30


def _seconds(duration: str) -> float:
    return window_seconds(duration)


@dataclass
class Inputs:
    per_pod: pd.DataFrame  # one row per pod: allocation and use over the window, metadata, peaks
    previous: pd.DataFrame  # the same figures for the window before (trends)
    tokens: dict[tuple[str, str], float]
    latency_buckets: dict[str, dict[tuple[str, str], dict[float, float]]]  # "ttft"/"itl" -> pod -> le -> count
    problems: list[str] = field(default_factory=list)


def _queries(window: str, resolution: str, idle: float) -> dict[str, str]:
    step_h = _seconds(resolution) / 3600
    alloc = c.CONTAINER_ALLOCATED.name
    sm = f'{c.CONTAINER_SM_ACTIVE.name}{{pod!="", source=~"nvml|gpm"}}'
    mem = f'{c.CONTAINER_MEMORY.name}{{pod!=""}}'
    total = f"max by (gpu_uuid, mig_instance) ({c.GPU_MEMORY_TOTAL.name})"

    # A subquery includes both ends of its range: one step less than the window gives exactly
    # window / resolution points, each standing for one step of time.
    span = f"{int(_seconds(window) - _seconds(resolution))}s"

    def hours(expr: str) -> str:
        return f"sum_over_time(({expr})[{span}:{resolution}]) * {step_h}"

    return {
        # GPU-hours, integrated at the resolution: absent series count as zero
        "alloc_h": hours(f"sum by ({KEYS}) ({alloc})"),
        "used_h": hours(f"sum by ({KEYS}) ({sm})"),
        "mem_h": hours(f"sum by ({KEYS}) ({mem} / on (gpu_uuid, mig_instance) group_left {total})"),
        "idle_h": hours(
            f"sum by ({KEYS}) ({alloc} unless on (namespace, pod, container, gpu_uuid, mig_instance) ({sm} > {idle}))"
        ),
        "peak_mem": f"max by ({KEYS}) (max_over_time(({mem})[{window}:{resolution}]))",
        "peak_sm": f"max by ({KEYS}) (max_over_time(({sm})[{window}:{resolution}]))",
        "gpus": f"max by ({KEYS}) (max_over_time((count by ({KEYS}) ({alloc}))[{window}:{resolution}]))",
        "gpu_bytes": f"max by ({KEYS}) (max_over_time((max by ({KEYS}) ({alloc} * on (gpu_uuid) group_left max by (gpu_uuid) ({c.GPU_MEMORY_TOTAL.name}))) [{window}:{resolution}]))",
        "gpu_model": f"max by ({KEYS}, gpu_model) (last_over_time(({c.CONTAINER_ALLOCATED.name} * on (gpu_uuid) group_left (gpu_model) max by (gpu_uuid, gpu_model) ({c.GPU_INFO.name}))[{window}:{resolution}]))",
        "info": f"max by ({KEYS}, team, workload_class, workload_kind, workload, model) (last_over_time({c.POD_INFO.name}[{window}]))",
        # increase() drops the metric name, so the two counters are summed apart, then added
        "tokens": " + ".join(
            f"sum by ({KEYS}) (increase({name}[{window}]))"
            for name in (c.External.VLLM_PROMPT_TOKENS, c.External.VLLM_GENERATION_TOKENS)
        ),
        "ttft": f"sum by ({KEYS}, le) (increase({c.External.VLLM_TTFT}_bucket[{window}]))",
        # the name since vLLM 0.11, or the one before; a server exposes one of them
        "itl": " or ".join(
            f"sum by ({KEYS}, le) (increase({name}_bucket[{window}]))" for name in c.External.VLLM_INTER_TOKEN_LATENCY
        ),
    }


def _by_pod(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.labels.get("namespace", ""), s.labels.get("pod", "")): s.value for s in samples}


def gather(client: PrometheusClient, window: str, at: float, resolution: str, idle: float) -> Inputs:
    problems: list[str] = []

    def ask(expr: str, when: float) -> list[Sample]:
        try:
            return client.query(expr, when)
        except PrometheusError as exc:
            problems.append(str(exc))
            return []

    frames = []
    for when in (at, at - _seconds(window)):
        got = {
            name: ask(expr, when)
            for name, expr in _queries(window, resolution, idle).items()
            if name not in ("tokens", "ttft", "itl", "info", "gpu_model") or when == at
        }
        values = {name: _by_pod(s) for name, s in got.items() if name not in ("info", "gpu_model")}
        gpu_models = {
            (s.labels.get("namespace", ""), s.labels.get("pod", "")): s.labels.get("gpu_model", "")
            for s in got.get("gpu_model", [])
        }
        pods = sorted(set(values["alloc_h"]) | set(values["used_h"]))
        info = {(s.labels.get("namespace", ""), s.labels.get("pod", "")): s.labels for s in got.get("info", [])}
        rows = []
        for key in pods:
            labels = info.get(key, {}) if when == at else {}
            rows.append(
                {
                    "namespace": key[0],
                    "pod": key[1],
                    "team": labels.get("team", ""),
                    "workload_class": labels.get("workload_class", ""),
                    "workload": (labels.get("workload_kind", "") + "/" + labels.get("workload", "")).strip("/"),
                    "model": labels.get("model", ""),
                    "gpu_model": gpu_models.get(key, ""),
                    **{
                        name: values[name].get(key, 0.0)
                        for name in ("alloc_h", "used_h", "mem_h", "idle_h", "peak_mem", "peak_sm", "gpus", "gpu_bytes")
                    },
                }
            )
        frames.append(pd.DataFrame(rows))
        if when == at:
            tokens = dict(_by_pod(got.get("tokens", [])))
            latency: dict[str, dict[tuple[str, str], dict[float, float]]] = {"ttft": {}, "itl": {}}
            for metric, histograms in latency.items():
                for s in got.get(metric, []):
                    key = (s.labels.get("namespace", ""), s.labels.get("pod", ""))
                    le = float(s.labels.get("le", "inf").replace("+Inf", "inf"))
                    histograms.setdefault(key, {})[le] = s.value
    current, previous = frames
    if not current.empty and not previous.empty:
        # the window before takes each pod's metadata from now (the info series is read once)
        carried = [d for d in (*DIMENSIONS, "gpu_model") if d != "namespace"]
        meta = current.set_index(["namespace", "pod"])[carried]
        previous = (
            previous.drop(columns=carried)
            .join(meta, on=["namespace", "pod"], how="left")
            .fillna(dict.fromkeys(carried, ""))
        )
    return Inputs(current, previous, tokens, latency, problems)


def priced(per_pod: pd.DataFrame, prices: dict[str, float], default: float) -> pd.DataFrame:
    """Each pod's cost over the window at its GPU model's price per GPU-hour (the default for others)."""
    if per_pod.empty:
        return per_pod.assign(cost=[], cost_idle=[])
    rate = per_pod["gpu_model"].map(lambda m: prices.get(str(m), default))
    return per_pod.assign(cost=per_pod["alloc_h"] * rate, cost_idle=per_pod["idle_h"] * rate)


def by_dimension(per_pod: pd.DataFrame, dimension: str, hours: float) -> pd.DataFrame:
    cols = ["alloc_h", "used_h", "mem_h", "idle_h", "cost", "cost_idle"]
    if per_pod.empty:
        return pd.DataFrame(
            columns=["name", "gpus_allocated", "gpus_used_sm", "memory_share", "idle_gpu_hours", "cost", "cost_idle"]
        )
    g = per_pod.groupby(dimension, as_index=False)[cols].sum()
    out = pd.DataFrame(
        {
            "name": g[dimension],
            "gpus_allocated": g["alloc_h"] / hours,
            "gpus_used_sm": g["used_h"] / hours,
            "memory_share": (g["mem_h"] / g["alloc_h"]).where(g["alloc_h"] > 0),
            "idle_gpu_hours": g["idle_h"],
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


def consolidation(per_pod: pd.DataFrame, headroom: float) -> dict[str, Any]:
    """Right-sized footprints (peak memory + headroom per GPU; peak SM) packed with time-slicing where the
    class allows it. Training keeps its GPUs (it saturates them by design); multi-GPU pods move whole."""
    refused: dict[str, str] = {}
    items: list[Item] = []
    today = 0
    gpu_bytes = int(per_pod["gpu_bytes"].max()) if not per_pod.empty and per_pod["gpu_bytes"].max() > 0 else 80 * GiB
    for row in per_pod.to_dict("records"):
        gpus = round(row["gpus"]) or 0
        if gpus == 0:
            continue
        today += gpus
        name = f"{row['namespace']}/{row['pod']}"
        if row["workload_class"] == "training":
            refused[name] = "training keeps its GPUs: it is built to saturate them"
            items.append(Item(name, gpu_bytes, ranks=gpus))
            continue
        per_gpu = int(row["peak_mem"] / max(1, gpus) * (1 + headroom))
        sm_share = float(row["peak_sm"]) / max(1, gpus)
        # time-slicing shares SM time too: a footprint takes at least its SM share of a GPU's memory "slot"
        items.append(Item(name, max(per_gpu, int(gpu_bytes * min(1.0, sm_share * (1 + headroom)))), ranks=gpus))
    plan = pack(items, gpu_bytes, gpus_today=today)
    return {
        "gpus_today": today,
        "gpus_needed": plan.gpus_needed,
        "gpus_freed": today - plan.gpus_needed,
        "refused": {**refused, **plan.refused},
        "assumptions": [
            f"footprint per GPU = peak memory × {1 + headroom:g}, and at least the peak SM share × {1 + headroom:g} of a GPU",
            "inference, batch and experimentation workloads may share a GPU by time-slicing; MIG where footprints fit a profile",
            "multi-GPU pods move as a whole, each rank on a different GPU; all GPUs taken as the largest kind seen",
        ],
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
    hours = window_seconds(window) / 3600
    inputs = gather(client, window, at, resolution, idle)
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
        "problems": inputs.problems,
    }


def markdown(review: dict[str, Any]) -> str:
    lines = [f"# GPU capacity review ({review['window']})", ""]
    by = review["by"]
    assert isinstance(by, dict)
    for dimension, rows in by.items():
        lines += [
            f"## By {dimension.replace('_', ' ')}",
            "",
            "| name | GPUs allocated | GPUs' worth used | memory share | idle GPU-hours | cost | idle cost |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            share = "-" if r["memory_share"] is None else f"{r['memory_share']:.0%}"
            lines.append(
                f"| {r['name'] or '(none)'} | {r['gpus_allocated']:.1f} | {r['gpus_used_sm']:.1f} | {share} | {r['idle_gpu_hours']:.0f} | {r['cost']:.0f} | {r['cost_idle']:.0f} |"
            )
        lines.append("")
    cons = review["consolidation"]
    assert isinstance(cons, dict)
    lines += [
        "## Consolidation",
        "",
        f"Right-sized and shared where classes allow, the workloads fit on {cons['gpus_needed']} GPUs instead of {cons['gpus_today']} ({cons['gpus_freed']} freed).",
        "",
    ]
    lines += [f"- not moved: {k}: {v}" for k, v in cons["refused"].items()]
    lines += ["", "## SLO attainment", ""] + [
        f"- {r['model']}: {r['attainment']:.1%} "
        + ("of requests under " if r["metric"] == "ttft" else "of tokens under ")
        + f"{r['target_s']} s {'to first token' if r['metric'] == 'ttft' else 'between tokens'}"
        for r in review["slo"]
    ]
    lines += ["", "## Week over week", ""] + [
        f"- {t['dimension']} {t['name']}: {t['gpus_used_previous']:.1f} → {t['gpus_used']:.1f} GPUs' worth used"
        for t in review["trends"]
    ]
    problems = review["problems"]
    if problems:
        lines += ["", "## Missing inputs", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def html(review: dict[str, Any]) -> str:
    import html as h

    body = []
    for line in markdown(review).splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{h.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{h.escape(line[3:])}</h2>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("| name"):
            body.append(
                "<table><tr>" + "".join(f"<th>{h.escape(x.strip())}</th>" for x in line.strip("|").split("|")) + "</tr>"
            )
        elif line.startswith("| "):
            body.append(
                "<tr>" + "".join(f"<td>{h.escape(x.strip())}</td>" for x in line.strip("|").split("|")) + "</tr>"
            )
        elif line == "" and body and body[-1].startswith("<tr>"):
            body.append("</table>")
        elif line.startswith("- "):
            body.append(f"<li>{h.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{h.escape(line)}</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>GPU capacity review</title><style>body{font-family:sans-serif;margin:2em}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write(review: dict[str, Any], out: Path, formats: Sequence[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    by = review["by"]
    assert isinstance(by, dict)
    for fmt in formats:
        if fmt == "html":
            (out / "report.html").write_text(html(review), encoding="utf-8")
            written.append(out / "report.html")
        elif fmt == "md":
            (out / "report.md").write_text(markdown(review), encoding="utf-8")
            written.append(out / "report.md")
        elif fmt == "json":
            (out / "review.json").write_text(json.dumps(review, indent=1), encoding="utf-8")
            written.append(out / "review.json")
        elif fmt in ("csv", "parquet"):
            for dimension, rows in by.items():
                frame = pd.DataFrame(rows)
                path = out / f"by_{dimension}.{fmt}"
                frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
                written.append(path)
        else:
            raise ValueError(f"unknown format {fmt!r} (html, md, csv, parquet, json)")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gpuattr review",
        description="The GPU capacity review: allocation against use, waste, SLOs, consolidation.",
    )
    p.add_argument("--prometheus", required=True)
    p.add_argument("--window", default="7d")
    p.add_argument("--at", type=float, default=None, help="end of the window, unix seconds (default: now)")
    p.add_argument("--resolution", default="5m", help="step of the GPU-hour integration (subquery resolution)")
    p.add_argument("--price-per-gpu-hour", type=float, default=2.5, help="price of a GPU-hour of any other GPU model")
    p.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="GPU_MODEL=PRICE",
        help='price per GPU-hour of one GPU model, e.g. "NVIDIA H100 80GB HBM3=3.9" (repeatable)',
    )
    p.add_argument("--pushgateway", help="push the headline figures to this Pushgateway")
    p.add_argument(
        "--idle-threshold", type=float, default=0.05, help="SM activity at or below which an allocated GPU is idle"
    )
    p.add_argument("--slo-ttft", type=float, default=0.5, help="time-to-first-token target, seconds")
    p.add_argument("--slo-itl", type=float, default=0.1, help="inter-token latency target, seconds")
    p.add_argument("--headroom", type=float, default=0.2)
    p.add_argument("--out")
    p.add_argument("--format", default="html,md,csv,json")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    import time

    try:
        window_seconds(args.window)
        window_seconds(args.resolution)
    except ValueError as exc:
        print(f"gpuattr review: {exc}", file=sys.stderr)
        return 2
    prices: dict[str, float] = {}
    for spec in args.price:
        model, sep, value = spec.rpartition("=")
        try:
            prices[model] = float(value)
        except ValueError:
            sep = ""
        if not sep or not model:
            print(f"gpuattr review: --price: expected GPU_MODEL=PRICE, got {spec!r}", file=sys.stderr)
            return 2
    for flag, number in (
        ("--price-per-gpu-hour", args.price_per_gpu_hour),
        *((f"--price {model}", value) for model, value in prices.items()),
        ("--idle-threshold", args.idle_threshold),
        ("--slo-ttft", args.slo_ttft),
        ("--slo-itl", args.slo_itl),
        ("--headroom", args.headroom),
        ("--timeout", args.timeout),
    ):
        if not math.isfinite(number) or number < 0:
            print(f"gpuattr review: {flag}: expected a finite number, not negative, got {number}", file=sys.stderr)
            return 2
    client = PrometheusClient(args.prometheus, timeout_s=args.timeout, retries=1)
    review = run(
        client,
        window=args.window,
        at=args.at or time.time(),
        resolution=args.resolution,
        price=args.price_per_gpu_hour,
        idle=args.idle_threshold,
        slo_ttft=args.slo_ttft,
        slo_itl=args.slo_itl,
        headroom=args.headroom,
        prices=prices,
    )
    print(json.dumps(review, indent=1) if args.json else markdown(review))
    if args.out:
        for path in write(review, Path(args.out), [f.strip() for f in args.format.split(",") if f.strip()]):
            print(f"wrote {path}", file=sys.stderr)
    if args.pushgateway:
        from prometheus_client import CollectorRegistry, push_to_gateway

        registry = CollectorRegistry()
        registry.register(Headline(review))
        push_to_gateway(args.pushgateway, job="gpuattr-review", registry=registry)
    return 0


class Headline:
    """The review's headline figures as catalog series, for the cluster-efficiency dashboard."""

    def __init__(self, review: dict[str, Any]) -> None:
        self.review = review

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        window = str(self.review["window"])
        out = []
        for metric, field_name in (
            (c.REVIEW_GPUS_ALLOCATED, "gpus_allocated"),
            (c.REVIEW_GPUS_USED, "gpus_used_sm"),
            (c.REVIEW_IDLE_GPU_HOURS, "idle_gpu_hours"),
        ):
            fam = GaugeMetricFamily(metric.family, metric.help, labels=list(metric.labels))
            for dimension, rows in self.review["by"].items():
                for row in rows:
                    fam.add_metric([dimension, str(row["name"]), window], float(row[field_name]))
            out.append(fam)
        freeable = GaugeMetricFamily(c.REVIEW_GPUS_FREEABLE.family, c.REVIEW_GPUS_FREEABLE.help, labels=["window"])
        freeable.add_metric([window], float(self.review["consolidation"]["gpus_freed"]))
        return [*out, freeable]
