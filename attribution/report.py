"""What the job writes: a terminal table, CSV/Parquet/JSON, an HTML report with a stacked bar per server,
and the split as Prometheus series (served for a Deployment, or pushed to a Pushgateway for a CronJob)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prometheus_client.metrics_core import Metric as Family

from attribution.recommend import Packing
from attribution.sharing import SHARING_NOTE
from common import catalog as c
from common.families import family
from common.units import GiB

COMPONENTS = (
    ("weights", "weights_bytes", "#4c78a8"),
    ("kv_used", "kv_used_max_bytes", "#f58518"),
    ("kv_idle", "kv_idle_bytes", "#e45756"),
    ("overhead", "overhead_bytes", "#9d9d9d"),
)


@dataclass
class Result:
    split: pd.DataFrame
    recommendations: pd.DataFrame
    costs: pd.DataFrame
    packing: Packing | None
    problems: list[str]
    window: str

    def table(self) -> pd.DataFrame:
        """One row per server and GPU, in GiB, with the recommendation."""
        df = self.split.merge(self.recommendations, on=["namespace", "pod", "model", "gpu_uuid"], how="left")
        out = pd.DataFrame(
            {"server": df["namespace"] + "/" + df["pod"], "model": df["model"], "gpu": df["gpu_uuid"].str[:12]}
        )
        for label, column in (
            ("total", "total_bytes"),
            ("weights", "weights_bytes"),
            ("kv used (max)", "kv_used_max_bytes"),
            ("kv idle", "kv_idle_bytes"),
            ("overhead", "overhead_bytes"),
            ("reclaim", "reclaimable_bytes"),
        ):
            out[label + " GiB"] = (df[column].astype("Float64") / GiB).round(2)
        out["recommended util"] = df["recommended_gpu_memory_utilization"]
        return out


def terminal(result: Result) -> str:
    lines = [f"vLLM memory split over {result.window}", "", result.table().to_string(index=False, na_rep="-")]
    if result.packing is not None:
        p = result.packing
        lines += ["", f"Right-sized, these servers fit on {p.gpus_needed} GPU(s) instead of {p.gpus_today}."]
        lines += [f"  not moved: {name}: {why}" for name, why in p.refused.items()]
    if not result.costs.empty:
        for by in ("namespace", "team", "model"):
            summary = cost_summary(result.costs, by)
            lines += [
                "",
                f"Cost by {by} over the window:",
                summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"),
            ]
        total = result.costs[["cost_held", "cost_idle_kv", "cost_reclaimable"]].sum()
        lines += [
            "",
            f"GPU cost over the window: {total['cost_held']:.2f} held, {total['cost_idle_kv']:.2f} in idle KV cache, "
            f"{total['cost_reclaimable']:.2f} reclaimable.",
        ]
        if ((result.split["mig_share"] < 1) | (result.split["replicas"] > 1)).any():
            lines += [f"GPUs held: {SHARING_NOTE}."]
    if result.problems:
        lines += ["", "Missing or inconsistent inputs (the rest of the report stands):"] + [
            f"  - {p}" for p in result.problems
        ]
    return "\n".join(lines)


def cost_summary(costs: pd.DataFrame, by: str) -> pd.DataFrame:
    """Held, idle-KV and reclaimable cost summed per namespace, team or model, largest waste first."""
    columns = ["cost_held", "cost_idle_kv", "cost_reclaimable", "gpus_held"]
    out = costs.groupby(by, as_index=False)[columns].sum()
    return out.sort_values("cost_idle_kv", ascending=False, ignore_index=True)


def write_files(result: Result, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = {"split": result.split, "recommendations": result.recommendations, "costs": result.costs}
    if not result.costs.empty:
        frames.update({f"costs_by_{by}": cost_summary(result.costs, by) for by in ("namespace", "team", "model")})
    written: list[Path] = []
    for fmt in formats:
        for name, frame in frames.items():
            path = out_dir / f"{name}.{fmt}"
            if fmt == "csv":
                frame.to_csv(path, index=False)
            elif fmt == "parquet":
                frame.to_parquet(path, index=False)
            elif fmt == "json":
                path.write_text(frame.to_json(orient="records", indent=1) or "[]", encoding="utf-8")
            elif fmt == "html":
                continue
            else:
                raise ValueError(f"unknown output format {fmt!r} (csv, parquet, json, html)")
            written.append(path)
        if fmt == "html":
            path = out_dir / "report.html"
            path.write_text(html_report(result), encoding="utf-8")
            written.append(path)
    return written


def _bar(row: pd.Series, scale: float, width: int = 560) -> str:
    x, parts = 0.0, []
    for name, column, colour in COMPONENTS:
        value = row[column]
        if value is None or pd.isna(value):
            continue
        w = float(value) / scale * width
        parts.append(
            f'<rect x="{x:.1f}" y="2" width="{w:.1f}" height="18" fill="{colour}"><title>{name}: {float(value) / GiB:.2f} GiB</title></rect>'
        )
        x += w
    return f'<svg width="{width}" height="22" role="img">{"".join(parts)}</svg>'


def html_report(result: Result) -> str:
    df = result.split
    scale = float(max([*df["total_bytes"].dropna(), *df["gpu_memory_bytes"].dropna(), 1]))
    legend = " ".join(
        f'<span style="background:{colour};color:white;padding:2px 6px">{name}</span>' for name, _, colour in COMPONENTS
    )
    rows = []
    rec = result.recommendations.set_index(["namespace", "pod", "gpu_uuid"])
    for _, row in df.iterrows():
        key = (row["namespace"], row["pod"], row["gpu_uuid"])
        advice = html.escape(str(rec.loc[key, "recommendation"])) if key in rec.index else ""
        rows.append(
            f"<tr><td>{html.escape(row['namespace'])}/{html.escape(row['pod'])}<br><small>{html.escape(str(row['model']))}"
            f" · {html.escape(str(row['gpu_uuid']))}</small></td><td>{_bar(row, scale)}</td><td><small>{advice}</small></td>"
            f"<td><small>{html.escape(str(row['assumptions']))}</small></td></tr>"
        )
    packing = ""
    if result.packing is not None:
        packing = f"<p><b>Right-sized, these servers fit on {result.packing.gpus_needed} GPU(s) instead of {result.packing.gpus_today}.</b></p>"
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in result.problems)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vLLM GPU memory: where it goes</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{vertical-align:top;padding:4px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>vLLM GPU memory: where it goes</h1>
<p>Window: {html.escape(result.window)}. Each bar is one server on one GPU, to the scale of the largest GPU: {legend}</p>
{packing}
<table><tr><th>server</th><th>memory</th><th>recommendation</th><th>assumptions</th></tr>{"".join(rows)}</table>
{f"<h2>Missing or inconsistent inputs</h2><ul>{problems}</ul>" if problems else ""}
</body></html>
"""


# The job's advice series and the column of each (the capacity review publishes its own), in catalog order.
ADVICE = (
    (c.VLLM_GPU_MEMORY_UTILIZATION, "gpu_memory_utilization"),
    (c.VLLM_RECOMMENDED_GPU_MEMORY_UTILIZATION, "recommended_gpu_memory_utilization"),
    (c.VLLM_RECLAIMABLE, "reclaimable_bytes"),
)


def families(result: Result) -> list[Family]:
    """The split as Prometheus series, for the dashboards and alerts."""
    fam = family(c.VLLM_MEMORY)
    for row in result.split.to_dict("records"):
        for name, column, _ in COMPONENTS:
            value = row[column]
            if value is not None and not pd.isna(value):
                fam.add_metric([row["namespace"], row["pod"], row["gpu_uuid"], row["model"], name], float(value))
    out: list[Family] = [fam]
    merged = result.split.merge(result.recommendations, on=["namespace", "pod", "model", "gpu_uuid"], how="left")
    for metric, column in ADVICE:
        f = family(metric)
        seen: set[tuple[str, ...]] = set()  # a per-server figure is published once, not once per GPU
        for row in merged.to_dict("records"):
            labels = tuple(str(row[k]) for k in metric.labels)
            value = row.get(column)
            if labels in seen or value is None or pd.isna(value):
                continue
            seen.add(labels)
            f.add_metric(list(labels), float(value))
        out.append(f)
    return out


def to_json(result: Result) -> str:
    return json.dumps(
        {
            "window": result.window,
            "split": json.loads(result.split.to_json(orient="records") or "[]"),
            "recommendations": json.loads(result.recommendations.to_json(orient="records") or "[]"),
            "problems": result.problems,
            "gpus_today": result.packing.gpus_today if result.packing else None,
            "gpus_needed": result.packing.gpus_needed if result.packing else None,
            "refused": result.packing.refused if result.packing else {},
            "costs": json.loads(result.costs.to_json(orient="records") or "[]"),
            "sharing": SHARING_NOTE,
        },
        indent=1,
    )
