"""``gpuattr review``: the capacity review. Allocation against use per team, namespace, workload, model and
workload class; idle-but-allocated GPU-hours and their cost; traffic share against GPU share; SLO
attainment; a consolidation plan for every GPU workload; and week-over-week trends.

It reuses the attribution job's inputs (Prometheus or VictoriaMetrics, aggregation in PromQL), packing and
outputs. GPU-hours are integrated with subqueries at ``--resolution``, so a pod that held GPUs for part of
the window counts for that part, and silence (no activity series) counts as zero use. Samples sparser than
the store's look-back are measured and looked for as far back as they lie; a MIG instance or a shared
replica counts as its share of a GPU (:mod:`attribution.sharing`). Per team, GPUs allocated and used are
also read over time (one range query of the same expressions, a mean per step), for a chart and the JSON.

- :mod:`.data`: the PromQL and what it returns (:class:`Inputs`, :func:`gather`);
- :mod:`.analysis`: the figures (:func:`run` and its parts);
- :mod:`.render`: Markdown and HTML from one list of sections, and the files;
- :mod:`.publish`: the headline figures as catalog series, pushed to a Pushgateway;
- :mod:`.cli`: ``main``.
"""

from __future__ import annotations

from attribution.review.analysis import by_dimension, consolidation, priced, run, slo, timeline
from attribution.review.cli import build_parser, main
from attribution.review.data import DIMENSIONS, Inputs, gather
from attribution.review.publish import families, push
from attribution.review.render import html, markdown, sections, write

__all__ = [
    "DIMENSIONS",
    "Inputs",
    "build_parser",
    "by_dimension",
    "consolidation",
    "families",
    "gather",
    "html",
    "main",
    "markdown",
    "priced",
    "push",
    "run",
    "sections",
    "slo",
    "timeline",
    "write",
]
