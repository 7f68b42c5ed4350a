"""The capacity review as people read it: Markdown and HTML, both rendered from one list of sections.

:func:`sections` turns the review (the dict :func:`attribution.review.analysis.run` returns) into titled
sections of paragraphs, a table and a bulleted list, with every figure formatted once; :func:`markdown` and
:func:`html` only lay those out, so the two formats cannot disagree. :func:`write` writes them with the
machine-readable files (JSON, and CSV or Parquet per dimension).
"""

from __future__ import annotations

import html as h
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from attribution import charts
from attribution.report import fit_sentence
from common.files import text_writer, write_all
from common.units import format_duration, parse_duration

FORMATS = ("html", "md", "csv", "parquet", "json")


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[int] = frozenset()  # indices of the right-aligned (numeric) columns


@dataclass(frozen=True)
class Section:
    title: str
    text: tuple[str, ...] = ()  # paragraphs, before the table and the list
    table: Table | None = None
    items: tuple[str, ...] = ()  # a bulleted list, after the table
    charts: tuple[str, ...] = ()  # inline SVG, HTML only (Markdown has no place for it), after the text
    keys: tuple[str, ...] = ()  # a machine-readable name per table row (the headline's figures), HTML only


def dimension_header(currency: str = "USD") -> tuple[str, ...]:
    return (
        "name",
        "GPUs allocated",
        "GPUs' worth used",
        "memory share",
        "idle GPU-hours",
        "activity unknown (GPU-hours)",
        f"cost ({currency})",
        f"idle cost ({currency})",
    )


DIMENSION_HEADER = dimension_header()
MODELS_HEADER = ("model", "tokens", "traffic share", "GPU share", "GPU share ÷ traffic share")
HEADLINE_HEADER = ("figure", "value", "source")


def _currency(review: dict[str, Any]) -> str:
    return str(review.get("currency") or "USD")


def _hours(review: dict[str, Any]) -> float:
    return parse_duration(str(review["window"]), "window") / 3600


def covers(review: dict[str, Any]) -> str:
    """The dates the review covers ("7d from ... to ... UTC"), or the bare window when its end is unknown."""
    end = review.get("end")
    if end is None:
        return f"the last {review['window']}"
    start = float(end) - parse_duration(str(review["window"]), "window")
    return f"{review['window']} from {_utc(start)} to {_utc(float(end))}"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def title(review: dict[str, Any]) -> str:
    return f"GPU capacity review, {covers(review)}"


def _totals(review: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one dimension that covers every pod once (team), to add up the whole cluster."""
    by = review["by"]
    return list(by.get("team") or next(iter(by.values()), []))


def headline(review: dict[str, Any]) -> dict[str, Any]:
    """The answer in figures: GPUs held and used on average over the window, what they cost, what sat idle
    and what the consolidation plan frees (at the average price of the GPUs held)."""
    rows = _totals(review)
    held = sum(float(r["gpus_allocated"]) for r in rows)
    cost = sum(float(r["cost"]) for r in rows)
    gpu_hours = held * _hours(review)
    cons = review["consolidation"]
    price = cost / gpu_hours if gpu_hours else None
    unknown = [r.get("unknown_gpu_hours") for r in rows]
    return {
        "currency": _currency(review),
        "covers": covers(review),
        "gpus_held": round(held, 2),
        "gpus_used": round(sum(float(r["gpus_used_sm"]) for r in rows), 2),
        "cost": round(cost, 2),
        "idle_cost": round(sum(float(r["cost_idle"]) for r in rows), 2),
        "idle_gpu_hours": round(sum(float(r["idle_gpu_hours"]) for r in rows), 1),
        "unknown_gpu_hours": round(sum(float(u) for u in unknown if u is not None), 1),
        "gpus_today": cons["gpus_today"],
        "gpus_freed": cons["gpus_freed"],
        "freed_cost": None if price is None else round(cons["gpus_freed"] * _hours(review) * price, 2),
    }


def _money(value: float | None, currency: str) -> str:
    return "unknown" if value is None else f"{value:,.0f} {currency}"


def _headline_section(review: dict[str, Any]) -> Section:
    head = headline(review)
    cur = head["currency"]
    share = f" ({head['idle_cost'] / head['cost']:.0%} of the cost)" if head["cost"] else ""
    used = f" ({head['gpus_used'] / head['gpus_held']:.0%} of those held)" if head["gpus_held"] else ""
    rows = [
        ("gpus_held", "GPUs held", f"{head['gpus_held']:.1f} GPUs on average", "pod GPU allocations (kubelet)"),
        ("gpus_used", "GPUs' worth used", f"{head['gpus_used']:.1f} GPUs{used}", "SM activity (DCGM / NVML GPM)"),
        ("cost", "GPU cost", _money(head["cost"], cur), "allocated GPU-hours × price per GPU-hour"),
        ("idle_cost", "Idle cost", _money(head["idle_cost"], cur) + share, "idle allocated GPU-hours × price"),
        (
            "gpus_freed",
            "The plan frees",
            f"{head['gpus_freed']} of {head['gpus_today']} GPUs, {_money(head['freed_cost'], cur)} over the window",
            "consolidation below, at the average price per GPU-hour",
        ),
    ]
    if head["unknown_gpu_hours"]:
        rows.append(
            (
                "unknown_gpu_hours",
                "Activity unknown",
                f"{head['unknown_gpu_hours']:.0f} GPU-hours",
                "MPS or shared MIG: neither used nor idle",
            )
        )
    return Section(
        "Headline",
        text=(f"Covers {head['covers']}; costs in {cur}.",),
        table=Table(HEADLINE_HEADER, tuple(r[1:] for r in rows)),
        keys=tuple(r[0] for r in rows),
    )


def _by_cost_idle(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-float(r["cost_idle"]), str(r["name"] or "")))


def _dimension_row(r: dict[str, Any]) -> tuple[str, ...]:
    share = "-" if r["memory_share"] is None else f"{r['memory_share']:.0%}"
    unknown = r.get("unknown_gpu_hours")
    return (
        str(r["name"] or "(none)"),
        f"{r['gpus_allocated']:.1f}",
        f"{r['gpus_used_sm']:.1f}",
        share,
        f"{r['idle_gpu_hours']:,.0f}",
        "-" if unknown is None else f"{unknown:,.0f}",
        f"{r['cost']:,.0f}",
        f"{r['cost_idle']:,.0f}",
    )


def _slo_item(r: dict[str, Any]) -> str:
    ttft = r["metric"] == "ttft"
    return (
        f"{r['model']}: {r['attainment']:.1%} "
        + ("of requests under " if ttft else "of tokens under ")
        + f"{r['target_s']} s {'to first token' if ttft else 'between tokens'}"
    )


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _models_section(review: dict[str, Any]) -> Section | None:
    models = review.get("models") or []
    if not models:
        return None

    def gap(r: dict[str, Any]) -> float:
        return (r.get("gpu_share") or 0.0) - (r.get("traffic_share") or 0.0)

    rows = []
    for r in sorted(models, key=lambda r: (-gap(r), str(r["model"]))):
        traffic, gpu = r.get("traffic_share"), r.get("gpu_share")
        ratio = f"{gpu / traffic:.1f}×" if traffic and gpu is not None else "-"
        rows.append((str(r["model"]), f"{r['tokens']:,.0f}", _share(traffic), _share(gpu), ratio))
    return Section(
        "Traffic share against GPU share",
        text=("Models holding a larger share of the GPUs than of the tokens served come first.",),
        table=Table(MODELS_HEADER, tuple(rows), frozenset(range(1, 5))),
    )


def _glance(review: dict[str, Any]) -> Section:
    """The charts (HTML only) and, in both formats, the same story in a sentence per team."""
    rows = _by_cost_idle(list(review["by"].get("team", [])))
    cur = _currency(review)
    text = tuple(
        f"{r['name'] or '(none)'}: {r['gpus_used_sm']:.1f} of {r['gpus_allocated']:.1f} GPUs used, "
        f"{_money(float(r['cost_idle']), cur)} idle"
        for r in rows[:5]
    )
    return Section("Allocated against used, by team", text=text, charts=(_use_chart(review), _cost_chart(review)))


def _use_chart(review: dict[str, Any]) -> str:
    rows = _by_cost_idle(list(review["by"].get("team", [])))
    if not rows:
        return ""
    hours = _hours(review)
    before = {t["name"]: t["gpus_used_previous"] for t in review.get("trends", []) if t["dimension"] == "team"}
    bars = []
    for r in rows:
        used, allocated = float(r["gpus_used_sm"]), float(r["gpus_allocated"])
        unknown = float(r.get("unknown_gpu_hours") or 0.0) / hours
        idle = max(0.0, allocated - used - unknown)  # not used: idle GPUs and the unused part of busy ones
        segments = (
            charts.Segment("used", used, "#2f6f9f"),
            charts.Segment("activity unknown", unknown, charts.UNKNOWN, "//"),
            charts.Segment("allocated, not used", idle, "#9ecae9"),
        )
        previous = before.get(r["name"])
        bars.append(
            charts.Bar(
                str(r["name"] or "(none)"),
                segments,
                note=f"{used:.1f} of {allocated:.1f}" + (f"; last window {previous:.1f} used" if previous else ""),
                marker=previous if previous else None,
            )
        )
    legend = [
        charts.Segment("used (SM activity)", 0, "#2f6f9f"),
        charts.Segment("activity unknown", 0, charts.UNKNOWN, "//"),
        charts.Segment("allocated, not used", 0, "#9ecae9"),
        charts.Segment("| used, last window", 0, "#ffffff"),
    ]
    return charts.bars(
        bars,
        title="GPUs allocated against GPUs' worth used, per team",
        axis="GPUs, average over the window (kubelet allocations; DCGM / NVML GPM SM activity)",
        prefix="use",
        legend=legend,
    )


def _cost_chart(review: dict[str, Any]) -> str:
    rows = _by_cost_idle(list(review["by"].get("team", [])))
    if not rows:
        return ""
    cur = _currency(review)
    head = headline(review)
    bars = [
        charts.Bar(
            str(r["name"] or "(none)"),
            (charts.Segment("idle", float(r["cost_idle"]), "#e45756"),),
            note=f"{float(r['cost_idle']):,.0f} {cur} of {float(r['cost']):,.0f}",
        )
        for r in rows
    ]
    if head["freed_cost"] is not None and head["gpus_freed"]:
        bars.append(
            charts.Bar(
                f"consolidation frees {head['gpus_freed']} GPUs",
                (charts.Segment("reclaimable", float(head["freed_cost"]), "#54a24b"),),
                note=f"{head['freed_cost']:,.0f} {cur}",
            )
        )
    return charts.bars(
        bars,
        title=f"Cost of idle capacity per team, and of what consolidation frees ({cur})",
        axis=f"{cur} over the window (GPU-hours × price per GPU-hour)",
        prefix="cost",
        number="{:,.0f}",
    )


TIMELINE_PANELS = 12
"""The most teams the timeline chart shows (largest idle cost first); the JSON has them all."""


def _timeline_teams(review: dict[str, Any]) -> list[tuple[str, list[list[float | None]]]]:
    """The teams of the timeline in the table's order (largest idle cost first), then any the table lacks."""
    timeline: dict[str, list[list[float | None]]] = review.get("timeline") or {}
    order = [str(r["name"]) for r in _by_cost_idle(list(review["by"].get("team", [])))]
    names = [n for n in order if n in timeline] + sorted(n for n in timeline if n not in order)
    return [(n, timeline[n]) for n in names if timeline[n]]


def _timeline_section(review: dict[str, Any]) -> Section | None:
    """Allocated against used per team over time: a line per team in both formats (its peak allocation
    and its mean use over the steps with data), small multiples in the HTML."""
    teams = _timeline_teams(review)
    step_s = review.get("timeline_step_s")
    if not teams or not step_s:
        return None
    step = format_duration(float(step_s))
    items = []
    for name, steps in teams:
        allocated = [float(a) for _, a, _ in steps if a is not None]
        used = [float(u) for _, _, u in steps if u is not None]
        peak = f"peak {max(allocated):.1f} GPUs allocated" if allocated else "no allocation"
        mean = f"{sum(used) / len(used):.1f} GPUs' worth used on average" if used else "use unknown"
        seen = len({t for t, a, u in steps if a is not None or u is not None})
        where = "" if seen == len(steps) else f" (over the {seen} of {len(steps)} steps with data)"
        items.append(f"{name or '(none)'}: {peak}, {mean}{where}")
    return Section(
        "Allocated against used over time",
        text=(f"Per team, the mean over each {step} step; a step without data is a gap, not zero.",),
        items=tuple(items),
        charts=(_timeline_chart(review, teams, float(step_s)),),
    )


def _timeline_chart(review: dict[str, Any], teams: list[tuple[str, list[list[float | None]]]], step_s: float) -> str:
    shown = teams[:TIMELINE_PANELS]
    panels = [
        charts.Timeline(
            name or "(none)",
            tuple(float(t or 0.0) for t, _, _ in steps),
            tuple(a for _, a, _ in steps),
            tuple(u for _, _, u in steps),
        )
        for name, steps in shown
    ]
    more = f", the {len(shown)} with the largest idle cost" if len(shown) < len(teams) else ""
    return charts.timelines(
        panels,
        step_s=step_s,
        title=f"GPUs allocated against GPUs' worth used per team over time{more}",
        axis=f"mean over each {format_duration(step_s)} step, UTC (kubelet allocations; DCGM / NVML GPM SM activity)",
        filled=charts.Segment("allocated", 0, "#9ecae9"),
        line=charts.Segment("used (SM activity)", 0, "#2f6f9f"),
        prefix="timeline",
    )


def sections(review: dict[str, Any]) -> list[Section]:
    """The review's sections in reading order, every figure formatted as both renderings show it: the
    headline first, then the picture by team, then the detail (largest idle cost first)."""
    out = [_headline_section(review), _glance(review)]
    over_time = _timeline_section(review)
    if over_time is not None:
        out.append(over_time)
    cur = _currency(review)
    out += [
        Section(
            f"By {dimension.replace('_', ' ')}",
            table=Table(
                dimension_header(cur),
                tuple(_dimension_row(r) for r in _by_cost_idle(list(rows))),
                frozenset(range(1, 8)),
            ),
        )
        for dimension, rows in review["by"].items()
    ]
    models = _models_section(review)
    if models is not None:
        out.append(models)
    cons = review["consolidation"]
    head = headline(review)
    out.append(
        Section(
            "Consolidation",
            text=(
                fit_sentence("and shared where classes allow, the workloads", cons["gpus_needed"], cons["gpus_today"])
                + (
                    f" {cons['gpus_freed']} freed, {_money(head['freed_cost'], cur)} over the window."
                    if cons["gpus_freed"] > 0
                    else ""
                ),
            ),
            items=tuple(f"not moved: {k}: {v}" for k, v in sorted(cons["refused"].items())),
        )
    )
    worst_first = sorted(review["slo"], key=lambda r: (float(r["attainment"]), str(r["model"]), str(r["metric"])))
    out.append(Section("SLO attainment", items=tuple(_slo_item(r) for r in worst_first)))
    trends = sorted(review["trends"], key=lambda t: (-abs(float(t["change"])), t["dimension"], str(t["name"])))
    out.append(
        Section(
            "Week over week",
            items=tuple(
                f"{t['dimension']} {t['name']}: {t['gpus_used_previous']:.1f} → {t['gpus_used']:.1f} GPUs' worth used"
                for t in trends
            ),
        )
    )
    counted = [line for line in (review.get("sampling", {}).get("note"), *review.get("sharing", [])) if line]
    if counted:
        out.append(Section("How GPUs were counted", items=tuple(counted)))
    if review["problems"]:
        out.append(Section("Missing inputs", items=tuple(str(p) for p in review["problems"])))
    return out


def _md_cell(text: str) -> str:
    """A table cell's text that cannot end the cell or the row early."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    rule = "|" + "|".join("---:" if i in table.right else "---" for i in range(len(table.header))) + "|"
    return [
        "| " + " | ".join(map(_md_cell, table.header)) + " |",
        rule,
        *("| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows),
    ]


def markdown(review: dict[str, Any]) -> str:
    lines = [f"# {title(review)}", ""]
    for section in sections(review):
        blocks = [[p] for p in section.text]
        if section.table is not None:
            blocks.append(_md_table(section.table))
        if section.items:
            blocks.append([f"- {item}" for item in section.items])
        lines += [f"## {section.title}", ""]
        for block in blocks:
            lines += [*block, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _html_table(table: Table, keys: Sequence[str] = (), css: str = "") -> list[str]:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f"<{tag} class='num'>{h.escape(x)}</{tag}>" if i in table.right else f"<{tag}>{h.escape(x)}</{tag}>"
            for i, x in enumerate(row)
        )

    def tr(i: int) -> str:
        return f"<tr data-figure='{h.escape(keys[i])}'>" if i < len(keys) else "<tr>"

    return [
        f"<table class='{css}'>" if css else "<table>",
        f"<thead><tr>{cells('th', table.header)}</tr></thead><tbody>",
        *(f"{tr(i)}{cells('td', row)}</tr>" for i, row in enumerate(table.rows)),
        "</tbody></table>",
    ]


CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1200px;"
    "padding:0 1em;color:#222}"
    "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}th{background:#f3f3f3}"
    "table{border-collapse:collapse;font-size:.92em}.num{text-align:right;font-variant-numeric:tabular-nums}"
    "svg.chart{max-width:100%;height:auto;display:block;margin:1em 0}"
    "table.headline{display:block;width:100%}table.headline thead{display:none}table.headline tbody{display:grid;"
    "grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}"
    "table.headline tr{display:flex;flex-direction:column;border:1px solid #ddd;border-radius:6px;"
    "background:#fafafa;padding:8px 12px}table.headline td{border:0;padding:2px 0}"
    "table.headline td:nth-child(1){color:#444}table.headline td:nth-child(2){font-size:1.35em;font-weight:600;"
    "order:-1}table.headline td:nth-child(3){color:#777;font-size:.8em}"
)


def html(review: dict[str, Any]) -> str:
    body = [f"<h1>{h.escape(title(review))}</h1>"]
    for section in sections(review):
        body.append(f"<h2>{h.escape(section.title)}</h2>")
        body += [f"<p>{h.escape(p)}</p>" for p in section.text]
        body += [chart for chart in section.charts if chart]
        if section.table is not None:
            body += _html_table(section.table, section.keys, "headline" if section.keys else "")
        if section.items:
            body += ["<ul>", *(f"<li>{h.escape(item)}</li>" for item in section.items), "</ul>"]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>GPU capacity review</title>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write(review: dict[str, Any], out: Path, formats: Sequence[str], what: str = "--out") -> list[Path]:
    """The review in each of ``formats`` under ``out``, all or nothing (``common.files.write_all``)."""
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r} ({', '.join(FORMATS)})")
    writers: dict[str, Callable[[Path], None]] = {}
    for fmt in formats:
        if fmt == "html":
            writers["report.html"] = text_writer(html(review))
        elif fmt == "md":
            writers["report.md"] = text_writer(markdown(review))
        elif fmt == "json":
            writers["review.json"] = text_writer(json.dumps(review, indent=1))
        else:
            for dimension, rows in review["by"].items():
                writers[f"by_{dimension}.{fmt}"] = _table_writer(pd.DataFrame(rows), fmt)
    return write_all(out, writers, f"{what} {out}")


def _table_writer(frame: pd.DataFrame, fmt: str) -> Callable[[Path], None]:
    def write_table(path: Path) -> None:
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)

    return write_table
