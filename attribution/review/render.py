"""The capacity review as people read it: Markdown and HTML, both rendered from one list of sections.

:func:`sections` turns the review (the dict :func:`attribution.review.analysis.run` returns) into titled
sections of paragraphs, a table and a bulleted list, with every figure formatted once; :func:`markdown` and
:func:`html` only lay those out, so the two formats cannot disagree. :func:`write` writes them with the
machine-readable files (JSON, and CSV or Parquet per dimension).
"""

from __future__ import annotations

import html as h
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

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


DIMENSION_HEADER = (
    "name",
    "GPUs allocated",
    "GPUs' worth used",
    "memory share",
    "idle GPU-hours",
    "activity unknown (GPU-hours)",
    "cost",
    "idle cost",
)


def title(review: dict[str, Any]) -> str:
    return f"GPU capacity review ({review['window']})"


def _dimension_row(r: dict[str, Any]) -> tuple[str, ...]:
    share = "-" if r["memory_share"] is None else f"{r['memory_share']:.0%}"
    return (
        str(r["name"] or "(none)"),
        f"{r['gpus_allocated']:.1f}",
        f"{r['gpus_used_sm']:.1f}",
        share,
        f"{r['idle_gpu_hours']:.0f}",
        f"{r.get('unknown_gpu_hours') or 0:.0f}",
        f"{r['cost']:.0f}",
        f"{r['cost_idle']:.0f}",
    )


def _slo_item(r: dict[str, Any]) -> str:
    ttft = r["metric"] == "ttft"
    return (
        f"{r['model']}: {r['attainment']:.1%} "
        + ("of requests under " if ttft else "of tokens under ")
        + f"{r['target_s']} s {'to first token' if ttft else 'between tokens'}"
    )


def sections(review: dict[str, Any]) -> list[Section]:
    """The review's sections in reading order, every figure formatted as both renderings show it."""
    out = [
        Section(
            f"By {dimension.replace('_', ' ')}",
            table=Table(DIMENSION_HEADER, tuple(_dimension_row(r) for r in rows), frozenset(range(1, 7))),
        )
        for dimension, rows in review["by"].items()
    ]
    cons = review["consolidation"]
    out.append(
        Section(
            "Consolidation",
            text=(
                f"Right-sized and shared where classes allow, the workloads fit on {cons['gpus_needed']} GPUs "
                f"instead of {cons['gpus_today']} ({cons['gpus_freed']} freed).",
            ),
            items=tuple(f"not moved: {k}: {v}" for k, v in cons["refused"].items()),
        )
    )
    out.append(Section("SLO attainment", items=tuple(_slo_item(r) for r in review["slo"])))
    out.append(
        Section(
            "Week over week",
            items=tuple(
                f"{t['dimension']} {t['name']}: {t['gpus_used_previous']:.1f} → {t['gpus_used']:.1f} GPUs' worth used"
                for t in review["trends"]
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


def _html_table(table: Table) -> list[str]:
    def cells(tag: str, row: Sequence[str]) -> str:
        return "".join(
            f"<{tag} class='num'>{h.escape(x)}</{tag}>" if i in table.right else f"<{tag}>{h.escape(x)}</{tag}>"
            for i, x in enumerate(row)
        )

    return [
        "<table>",
        f"<tr>{cells('th', table.header)}</tr>",
        *(f"<tr>{cells('td', row)}</tr>" for row in table.rows),
        "</table>",
    ]


def html(review: dict[str, Any]) -> str:
    body = [f"<h1>{h.escape(title(review))}</h1>"]
    for section in sections(review):
        body.append(f"<h2>{h.escape(section.title)}</h2>")
        body += [f"<p>{h.escape(p)}</p>" for p in section.text]
        if section.table is not None:
            body += _html_table(section.table)
        if section.items:
            body += ["<ul>", *(f"<li>{h.escape(item)}</li>" for item in section.items), "</ul>"]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>GPU capacity review</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}.num{text-align:right}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write(review: dict[str, Any], out: Path, formats: Sequence[str]) -> list[Path]:
    """The review in each of ``formats`` under ``out``; the paths written."""
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format {unknown[0]!r} ({', '.join(FORMATS)})")
    out.mkdir(parents=True, exist_ok=True)
    written = []
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
        else:
            for dimension, rows in review["by"].items():
                frame = pd.DataFrame(rows)
                path = out / f"by_{dimension}.{fmt}"
                frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
                written.append(path)
    return written
