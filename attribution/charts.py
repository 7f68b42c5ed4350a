"""The reports' charts: matplotlib's SVG backend, inlined as ``<svg>`` in a self-contained HTML page.

No pyplot (no GUI, no global figure state): each chart is a :class:`~matplotlib.figure.Figure` drawn by the
SVG canvas. Text stays text (``svg.fonttype`` none: readable, searchable, small), the hash salt is fixed and
the metadata carries no date, so the same figures give the same bytes. Element ids get a per-chart prefix:
several charts share one page, and an SVG's ``url(#id)`` references resolve across the whole document.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import matplotlib as mpl
import matplotlib.dates as mdates
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from common.units import GiB

STYLE: dict[Any, Any] = {
    "svg.hashsalt": "gpuattr",
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#888888",
    "axes.titlesize": 10.0,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
}
UNKNOWN = "#cccccc"
INK = "#222222"


@dataclass(frozen=True)
class Segment:
    name: str
    value: float  # in the chart's unit
    colour: str
    hatch: str | None = None


@dataclass(frozen=True)
class Bar:
    label: str
    segments: tuple[Segment, ...]
    note: str = ""  # written after the bar's end
    marker: float | None = None  # a capacity (or last window's) line across the bar, in the chart's unit
    marker_label: str = ""


@dataclass(frozen=True)
class Timeline:
    """One panel of :func:`timelines`: two figures per step, None where the step has no data (a gap)."""

    label: str
    starts: tuple[float, ...]  # unix seconds, the start of each step; each step lasts ``step_s``
    filled: tuple[float | None, ...]  # drawn as a filled area (e.g. GPUs allocated)
    line: tuple[float | None, ...]  # drawn as a line over it (e.g. GPUs' worth used)


def to_svg(fig: Figure, prefix: str) -> str:
    """The figure as an inline ``<svg>`` element whose ids all start with ``prefix``."""
    FigureCanvasSVG(fig)
    buffer = io.StringIO()
    with mpl.rc_context(STYLE):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r'xlink:href="#([^"]+)"', rf'xlink:href="#{prefix}-\1"', text)
    # as wide as the page allows, never wider than drawn; the height follows
    return text.replace("<svg ", '<svg class="chart" role="img" ', 1).strip() + "\n"


def bars(
    rows: Sequence[Bar],
    *,
    title: str,
    axis: str,
    prefix: str,
    number: str = "{:.1f}",
    min_label_share: float = 0.06,
    legend: Sequence[Segment] = (),
) -> str:
    """Horizontal stacked bars, one per row (first row on top), each segment's value written inside it
    when it is wide enough, the row's note after its end, and an optional marker line per row."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(10.0, 1.2 + 0.42 * max(1, len(rows))), layout="constrained")
        ax = fig.add_subplot()
        ends = [sum(s.value for s in r.segments) for r in rows]
        markers = [r.marker for r in rows if r.marker is not None]
        span = max([*ends, *markers, 1e-9])
        for y, row in enumerate(rows):
            left = 0.0
            for seg in row.segments:
                if seg.value <= 0:
                    continue
                ax.barh(
                    y, seg.value, left=left, height=0.62, color=seg.colour, hatch=seg.hatch, edgecolor="white", lw=0.5
                )
                if seg.value >= span * min_label_share:
                    dark = seg.colour in (UNKNOWN, "#f2cf5b", "#9ecae9", "#dddddd")
                    ax.text(
                        left + seg.value / 2,
                        y,
                        number.format(seg.value),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color=INK if dark else "white",
                    )
                left += seg.value
            if row.marker is not None:
                ax.vlines(row.marker, y - 0.42, y + 0.42, colors=INK, linewidth=1.6)
            note = row.note or (row.marker_label if row.marker is not None else "")
            if note:
                ax.text(max(left, row.marker or 0.0) + span * 0.01, y, note, va="center", fontsize=8, color=INK)
        ax.set_yticks(range(len(rows)), [r.label for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, span * 1.28)
        ax.set_xlabel(axis)
        ax.set_title(title)
        ax.grid(axis="x", color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)
        if legend:
            handles = [
                Patch(
                    facecolor=s.colour,
                    hatch=s.hatch,
                    edgecolor="#999999" if s.colour == "#ffffff" else "white",
                    label=s.name,
                )
                for s in legend
            ]
            fig.legend(handles=handles, loc="outside lower left", fontsize=8, frameon=False, ncols=len(handles))
        return to_svg(fig, prefix)


def timelines(
    panels: Sequence[Timeline],
    *,
    step_s: float,
    title: str,
    axis: str,
    filled: Segment,
    line: Segment,
    prefix: str,
    columns: int = 3,
) -> str:
    """Small multiples, one panel per timeline (first on the top left), all on one y axis: the filled
    figure as a step area, the line figure as a step line over it, each step drawn over its whole duration
    and a step without data left blank. Dates on the x axis, in UTC."""
    with mpl.rc_context(STYLE):
        cols = max(1, min(columns, len(panels)))
        rows = max(1, math.ceil(len(panels) / cols))
        fig = Figure(figsize=(10.0, 0.9 + 1.7 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
        top = max([v for p in panels for v in (*p.filled, *p.line) if v is not None] + [1e-9])
        for i, ax in enumerate(axes.flat):
            if i >= len(panels):
                ax.set_axis_off()
                continue
            panel = panels[i]
            # one more point at the end of the last step: a value holds over its step ("post")
            when = [datetime.fromtimestamp(t, UTC) for t in (*panel.starts, panel.starts[-1] + step_s)]
            area = [math.nan if v is None else v for v in panel.filled]
            used = [math.nan if v is None else v for v in panel.line]
            area.append(area[-1])
            used.append(used[-1])
            have = [not math.isnan(v) for v in area]
            ax.fill_between(when, area, step="post", where=have, color=filled.colour, linewidth=0)
            ax.step(when, used, where="post", color=line.colour, linewidth=1.4)
            ax.set_title(panel.label, fontsize=9)
            ax.set_xlim(when[0], when[-1])
            ax.set_ylim(0, top * 1.1)
            if i + cols >= len(panels):  # the last panel of its column: its dates are shown
                ax.xaxis.set_tick_params(labelbottom=True)
            ax.grid(axis="y", color="#e5e5e5", linewidth=0.6)
            ax.set_axisbelow(True)
            locator = mdates.AutoDateLocator(minticks=3, maxticks=6)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
            ax.tick_params(labelsize=8)
        for ax in axes[:, 0]:
            ax.set_ylabel("GPUs")
        fig.suptitle(title, x=0.0, ha="left", fontsize=10, fontweight="bold")
        handles = [
            Patch(facecolor=filled.colour, label=filled.name),
            Line2D([], [], color=line.colour, linewidth=1.4, label=line.name),
        ]
        fig.supxlabel(axis, fontsize=8)
        fig.legend(handles=handles, loc="outside lower left", fontsize=8, frameon=False, ncols=2)
        return to_svg(fig, prefix)


def gib(n: float) -> float:
    return n / GiB
