"""What the job writes: a terminal table, CSV/Parquet/JSON, an HTML report with a stacked bar per server,
and the split as Prometheus series (served for a Deployment, or pushed to a Pushgateway for a CronJob)."""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prometheus_client.metrics_core import Metric as Family

from attribution import charts
from attribution.recommend import Packing
from attribution.sharing import SHARING_NOTE
from common import catalog as c
from common.families import family
from common.files import text_writer, write_all
from common.units import GiB, MiB, parse_duration

COMPONENTS = (
    ("weights", "weights_bytes", "#4c78a8"),
    ("kv_used", "kv_used_max_bytes", "#f58518"),
    ("kv_idle", "kv_idle_bytes", "#e45756"),
    ("overhead", "overhead_bytes", "#9d9d9d"),
)

LABELS = {
    "weights": "weights",
    "kv_used": "KV cache used (peak)",
    "kv_idle": "KV cache never used",
    "overhead": "overhead",
}


@dataclass
class Result:
    split: pd.DataFrame
    recommendations: pd.DataFrame
    costs: pd.DataFrame
    packing: Packing | None
    problems: list[str]
    window: str
    failed_starts: pd.DataFrame = field(default_factory=pd.DataFrame)  # split.FAILED_START_COLUMNS
    workers: pd.DataFrame = field(default_factory=pd.DataFrame)  # split.WORKER_COLUMNS
    at: float | None = None  # the end of the window (unix seconds), or the moment of a one-shot reading
    point_in_time: bool = False  # one-shot: one reading, no window
    currency: str = "USD"

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


def fit_sentence(what: str, needed: int, today: int) -> str:
    """The packing plan in words: "instead of" only when it frees GPUs, never read as a saving otherwise."""
    if needed < today:
        return f"Right-sized, {what} fit on {needed} GPU(s) instead of {today}."
    if needed == today:
        return f"Right-sized, {what} still need all {today} GPU(s): none to give back."
    return f"Right-sized, {what} need {needed} GPU(s), more than the {today} they have."


def terminal(result: Result) -> str:
    lines = [f"vLLM memory split, {when(result)}", "", result.table().to_string(index=False, na_rep="-")]
    if result.packing is not None:
        p = result.packing
        lines += ["", fit_sentence("these servers", p.gpus_needed, p.gpus_today)]
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
    lines += startup_lines(result)
    if result.problems:
        lines += ["", "Missing or inconsistent inputs (the rest of the report stands):"] + [
            f"  - {p}" for p in result.problems
        ]
    return "\n".join(lines)


def startup_lines(result: Result) -> list[str]:
    """Servers that failed to start, and the per-worker KV figures of TP/PP servers, as text lines."""
    lines: list[str] = []
    if not result.failed_starts.empty:
        lines += ["", "Failed to start (from the start-up log):"]
        for row in result.failed_starts.to_dict("records"):
            lines.append(f"  {row['namespace']}/{row['pod']}: {row['reason']}; {row['suggestion']}")
    if not result.workers.empty:
        lines += ["", "Per worker (TP/PP; vLLM uses the fewest blocks of any worker):"]
        for row in result.workers.to_dict("records"):
            kv = row["available_kv_cache_bytes"]
            count = row["kv_cache_tokens"] if not pd.isna(row["kv_cache_tokens"]) else row["num_gpu_blocks"]
            what = "tokens" if not pd.isna(row["kv_cache_tokens"]) else "blocks"
            lines.append(
                f"  {row['namespace']}/{row['pod']} {row['worker']}: available KV "
                f"{'-' if pd.isna(kv) else f'{kv / GiB:.2f} GiB'}, {'-' if pd.isna(count) else f'{count:,}'} {what}"
                f"{'  <- sets the block count' if row['sets_block_count'] is True else ''}"
            )
    return lines


def cost_summary(costs: pd.DataFrame, by: str) -> pd.DataFrame:
    """Held, idle-KV and reclaimable cost summed per namespace, team or model, largest waste first."""
    columns = ["cost_held", "cost_idle_kv", "cost_reclaimable", "gpus_held"]
    out = costs.groupby(by, as_index=False)[columns].sum()
    return out.sort_values("cost_idle_kv", ascending=False, ignore_index=True)


def startup_frames(result: Result) -> dict[str, pd.DataFrame]:
    return {"failed_starts": result.failed_starts, "workers": result.workers}


def write_files(result: Result, out_dir: Path, formats: Sequence[str], what: str = "--out") -> list[Path]:
    """Every report file, all or nothing (``common.files.write_all``): a failed write leaves the last run's."""
    frames = {"split": result.split, "recommendations": result.recommendations, "costs": result.costs}
    frames.update({name: frame for name, frame in startup_frames(result).items() if not frame.empty})
    if not result.costs.empty:
        frames.update({f"costs_by_{by}": cost_summary(result.costs, by) for by in ("namespace", "team", "model")})
    writers: dict[str, Callable[[Path], None]] = {}
    for fmt in formats:
        if fmt not in ("csv", "parquet", "json", "html"):
            raise ValueError(f"unknown output format {fmt!r} (csv, parquet, json, html)")
        if fmt == "html":
            writers["report.html"] = text_writer(html_report(result))
            continue
        if fmt == "json":
            writers["result.json"] = text_writer(to_json(result))  # the headline and everything --json prints
        for name, frame in frames.items():
            writers[f"{name}.{fmt}"] = _frame_writer(frame, fmt)
    return write_all(out_dir, writers, f"{what} {out_dir}")


def _frame_writer(frame: pd.DataFrame, fmt: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            path.write_text(frame.to_json(orient="records", indent=1) or "[]", encoding="utf-8")

    return write


def _known(value: Any) -> float | None:
    """A frame cell as a float; None for a missing one (None, NaN, pandas' NA)."""
    return None if value is None or pd.isna(value) else float(value)


def when(result: Result) -> str:
    """The dates the figures cover: a window's start and end, or the moment of a one-shot reading."""
    if result.at is None:
        return f"over the last {result.window}" if not result.point_in_time else "now (one reading)"
    end = _utc(result.at)
    if result.point_in_time:
        return f"at {end} (one reading)"
    start = _utc(result.at - parse_duration(result.window, "--window"))
    return f"{result.window} from {start} to {end}"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def headline(result: Result) -> dict[str, Any]:
    """The report's answer in figures: what is held, what sits idle, what a right-sizing gives back and
    what that costs over the window. None where an input is unknown, never 0 for unknown."""
    split, recs, money = result.split, result.recommendations, result.costs

    def total(frame: pd.DataFrame, column: str) -> float | None:
        if frame.empty or column not in frame or frame[column].isna().all():
            return None
        return float(frame[column].astype("Float64").sum(skipna=True))

    servers = 0 if split.empty else len(split[["namespace", "pod"]].drop_duplicates())
    return {
        "currency": result.currency,
        "covers": when(result),
        "servers": servers,
        "gpus_held": result.packing.gpus_today
        if result.packing
        else (int(split["gpu_uuid"].nunique()) if servers else 0),
        "gpus_needed": result.packing.gpus_needed if result.packing else None,
        "memory_held_gib": _gib(total(split, "total_bytes")),
        "kv_idle_gib": _gib(total(split, "kv_idle_bytes")),
        "reclaimable_gib": _gib(total(recs, "reclaimable_bytes")),
        "cost_held": total(money, "cost_held"),
        "cost_idle_kv": total(money, "cost_idle_kv"),
        "cost_reclaimable": total(money, "cost_reclaimable"),
    }


def _gib(n: float | None) -> float | None:
    return None if n is None else round(n / GiB, 2)


def vllm_flags(keep_bytes: float | None, utilization: float | None) -> str:
    """The vLLM flags that give a KV budget of ``keep_bytes``: ``--gpu-memory-utilization`` where today's is
    known, and ``--kv-cache-memory-bytes`` in a form vLLM parses (a whole number of MiB with its binary
    ``M`` suffix: vLLM takes decimals only with the decimal suffixes), rounded up, with the GiB beside it."""
    if keep_bytes is None:
        return ""
    mib = math.ceil(keep_bytes / MiB)
    kv = f"--kv-cache-memory-bytes={mib}M ({mib * MiB / GiB:.2f} GiB of KV cache)"
    return kv if utilization is None else f"--gpu-memory-utilization={utilization:.3f} or {kv}"


def _money(value: float | None, currency: str) -> str:
    return "unknown" if value is None else f"{value:,.2f} {currency}"


def _figure(value: float | None, unit: str, digits: int = 1) -> str:
    return "unknown" if value is None else f"{value:,.{digits}f} {unit}"


def memory_bars(result: Result) -> list[charts.Bar]:
    """Each server on each GPU as a stacked bar in GiB against its GPU's capacity (a line across the bar),
    most reclaimable first; what NVML shows held but no input splits (weights unknown) is its own,
    hatched, "unknown" part: the parts known are drawn, the rest is marked, nothing is left out."""
    rows = []
    df = result.split.assign(_reclaim=_reclaim_column(result))
    df = df.sort_values(["_reclaim", "namespace", "pod", "gpu_uuid"], ascending=[False, True, True, True])
    per_pod = df.groupby(["namespace", "pod"])["gpu_uuid"].transform("count")
    for (_, row), ranks in zip(df.iterrows(), per_pod, strict=True):
        segments = []
        known = 0.0
        for name, column, colour in COMPONENTS:
            value = _known(row[column])
            if value is not None:
                segments.append(charts.Segment(LABELS[name], value / GiB, colour))
                known += value
        held = _known(row["total_bytes"])
        if held is not None and held - known > 0.005 * GiB:
            segments.append(charts.Segment("unknown", (held - known) / GiB, charts.UNKNOWN, "//"))
        capacity = _known(row["gpu_memory_bytes"])
        note = "held: unknown" if held is None else f"{held / GiB:.1f} GiB held"
        if capacity is not None:
            note += f" of {capacity / GiB:.0f} GiB"
        label = f"{row['namespace']}/{row['pod']}" + (f" · {str(row['gpu_uuid'])[:12]}" if ranks > 1 else "")
        rows.append(charts.Bar(label, tuple(segments), note=note, marker=None if capacity is None else capacity / GiB))
    return rows


def memory_chart(result: Result) -> str:
    legend = [charts.Segment(LABELS[n], 0, c) for n, _, c in COMPONENTS] + [
        charts.Segment("unknown (no weights figure)", 0, charts.UNKNOWN, "//"),
        charts.Segment("| GPU capacity", 0, "#ffffff"),
    ]
    return charts.bars(
        memory_bars(result),
        title="GPU memory per vLLM server",
        axis="GiB per GPU (NVML, vLLM /metrics, start-up logs)",
        prefix="memory",
        legend=legend,
    )


def _reclaim_column(result: Result) -> pd.Series:
    keys = ["namespace", "pod", "gpu_uuid"]
    rec = result.recommendations.set_index(keys)["reclaimable_bytes"] if not result.recommendations.empty else None
    if rec is None:
        return pd.Series([0.0] * len(result.split), index=result.split.index)
    values = [_known(rec.get(tuple(k))) or 0.0 for k in result.split[keys].itertuples(index=False, name=None)]
    return pd.Series(values, index=result.split.index)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: frozenset[int] = frozenset()) -> str:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f"<{tag} class='num'>{html.escape(x)}</{tag}>" if i in numeric else f"<{tag}>{html.escape(x)}</{tag}>"
            for i, x in enumerate(row)
        )

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<div class='wide'><table><thead><tr>{cells('th', header)}</tr></thead><tbody>{body}</tbody></table></div>"


def _server_table(result: Result) -> str:
    merged = result.split.merge(result.recommendations, on=["namespace", "pod", "model", "gpu_uuid"], how="left")
    merged = merged.assign(_r=merged["reclaimable_bytes"].astype("Float64").fillna(-1.0))
    merged = merged.sort_values(["_r", "namespace", "pod", "gpu_uuid"], ascending=[False, True, True, True])
    rows = []
    for row in merged.to_dict("records"):
        keep, util = _known(row.get("kv_keep_bytes")), _known(row.get("recommended_gpu_memory_utilization"))
        flags = vllm_flags(keep, util)
        rows.append(
            (
                f"{row['namespace']}/{row['pod']}",
                str(row["model"]),
                str(row["gpu_uuid"])[:12],
                *(_gib_cell(row[c]) for _, c, _ in COMPONENTS),
                _gib_cell(row["total_bytes"]),
                _gib_cell(row.get("reclaimable_bytes")),
                flags or str(row.get("recommendation") or ""),
                str(row["weights_source"]),
                str(row["assumptions"]),
            )
        )
    header = (
        "server",
        "model",
        "GPU",
        "weights",
        "KV used (peak)",
        "KV never used",
        "overhead",
        "held",
        "reclaimable",
        "recommended vLLM flags",
        "weights from",
        "assumptions",
    )
    return _table(header, rows, frozenset(range(3, 9)))


def _gib_cell(value: object) -> str:
    v = _known(value)
    return "unknown" if v is None else f"{v / GiB:.2f}"


def _cost_tables(result: Result) -> str:
    if result.costs.empty:
        return ""
    cur = result.currency
    parts = []
    for by in ("team", "namespace", "model"):
        summary = cost_summary(result.costs, by)
        rows = [
            (
                str(r[by]) or "(none)",
                f"{r['gpus_held']:.0f}",
                f"{r['cost_held']:,.2f}",
                f"{r['cost_idle_kv']:,.2f}",
                f"{r['cost_reclaimable']:,.2f}",
            )
            for r in summary.to_dict("records")
        ]
        header = (by, "GPUs held", f"cost held ({cur})", f"idle KV cost ({cur})", f"reclaimable ({cur})")
        parts.append(f"<h3>By {by}</h3>" + _table(header, rows, frozenset(range(1, 5))))
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .period{color:#555;margin-top:0}
.headline{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:10px;margin:1em 0}
.figure{border:1px solid #ddd;border-radius:6px;padding:10px 12px;background:#fafafa}
.figure .value{font-size:1.5em;font-weight:600} .figure .what{color:#444} .figure .src{color:#777;font-size:.8em}
svg.chart{max-width:100%;height:auto;display:block;margin:1em 0} .wide{overflow-x:auto}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em} td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f3f3f3} .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} .note{color:#555;font-size:.9em}
"""


def _card(key: str, value: str, what: str, source: str) -> str:
    return (
        f'<div class="figure" data-figure="{key}"><div class="value">{html.escape(value)}</div>'
        f'<div class="what">{html.escape(what)}</div><div class="src">{html.escape(source)}</div></div>'
    )


def html_report(result: Result) -> str:
    head = headline(result)
    cur = result.currency
    over = "projected over " + result.window if result.point_in_time else "over the window"
    needed = head["gpus_needed"]
    cards = [
        _card("servers", f"{head['servers']}", "vLLM servers", "vLLM /metrics"),
        _card(
            "gpus_held",
            f"{head['gpus_held']} GPUs",
            "held today" + (f"; right-sized they fit on {needed}" if needed is not None else ""),
            "gpuattr exporter (NVML)",
        ),
        _card("memory_held_gib", _figure(head["memory_held_gib"], "GiB"), "GPU memory held", "NVML, peak in window"),
        _card("kv_idle_gib", _figure(head["kv_idle_gib"], "GiB"), "KV cache never used", "vLLM kv_cache_usage_perc"),
        _card(
            "reclaimable_gib",
            _figure(head["reclaimable_gib"], "GiB"),
            "reclaimable with the flags below",
            "peak KV + --headroom",
        ),
        _card("cost_held", _money(head["cost_held"], cur), f"GPU cost {over}", "--price-per-gpu-hour"),
        _card("cost_idle_kv", _money(head["cost_idle_kv"], cur), f"in idle KV cache, {over}", "GPU share × price"),
        _card("cost_reclaimable", _money(head["cost_reclaimable"], cur), f"reclaimable, {over}", "GPU share × price"),
    ]
    packing = ""
    if result.packing is not None:
        p = result.packing
        packing = f"<p><b>{html.escape(fit_sentence('these servers', p.gpus_needed, p.gpus_today))}</b></p>"
        packing += "".join(
            f"<p class='note'>not moved: {html.escape(n)}: {html.escape(w)}</p>" for n, w in p.refused.items()
        )
    problems = "".join(f"<li>{html.escape(p)}</li>" for p in result.problems)
    startup = "\n".join(startup_lines(result)).strip()
    startup_html = f"<h2>Start-up</h2><pre>{html.escape(startup)}</pre>" if startup else ""
    chart = memory_chart(result) if not result.split.empty else "<p>No vLLM server found.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vLLM GPU memory: where it goes</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style></head>
<body><h1>vLLM GPU memory: where it goes</h1>
<p class="period" data-figure="covers">{html.escape(when(result))}; costs in {html.escape(cur)}.</p>
<div class="headline">{"".join(cards)}</div>
{packing}
<h2>Memory per server against its GPU</h2>
{chart}
<p class="note">GiB per GPU. Weights from the start-up log, safetensors or an estimate (column "weights from"); KV used is the peak of vLLM's kv_cache_usage_perc over the window; overhead is what NVML shows held beyond weights and KV. Hatched: held, but no input says for what.</p>
<h2>Servers, most reclaimable first</h2>
<p class="note">GiB per GPU. The flags give the KV cache that holds the observed peak plus --headroom; vLLM reads --kv-cache-memory-bytes as bytes or with a K, M, G or T (binary) suffix.</p>
{_server_table(result)}
{startup_html}
{"<h2>GPU cost " + over + "</h2>" + _cost_tables(result) if not result.costs.empty else ""}
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
            **{
                name: json.loads(frame.to_json(orient="records") or "[]")
                for name, frame in startup_frames(result).items()
            },
            "currency": result.currency,
            "at": result.at,
            "point_in_time": result.point_in_time,
            "headline": headline(result),
            "gpus_today": result.packing.gpus_today if result.packing else None,
            "gpus_needed": result.packing.gpus_needed if result.packing else None,
            "refused": result.packing.refused if result.packing else {},
            "costs": json.loads(result.costs.to_json(orient="records") or "[]"),
            "sharing": SHARING_NOTE,
        },
        indent=1,
    )
