"""The review's headline figures as catalog series, for the cluster-efficiency dashboard: GPUs allocated,
GPUs' worth used and idle GPU-hours per dimension and name, and the GPUs the consolidation plan frees."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.metrics_core import Metric as Family

from common import catalog as c
from common.families import Families, family, one
from common.fetch import push_handler

JOB = "gpuattr-review"
HEALTH_JOB = "gpuattr-review-health"
"""The Pushgateway group of the review's health series: a failed review pushes there, never to ``JOB``."""
HEADLINES = (
    (c.REVIEW_GPUS_ALLOCATED, "gpus_allocated"),
    (c.REVIEW_GPUS_USED, "gpus_used_sm"),
    (c.REVIEW_IDLE_GPU_HOURS, "idle_gpu_hours"),
)


def families(review: dict[str, Any]) -> list[Family]:
    """One family per headline metric, one sample per dimension and name; labels as the catalog says."""
    window = str(review["window"])
    out: list[Family] = []
    for metric, column in HEADLINES:
        fam = family(metric)
        for dimension, rows in review["by"].items():
            for row in rows:
                fam.add_metric([dimension, str(row["name"]), window], float(row[column]))
        out.append(fam)
    out.append(one(c.REVIEW_GPUS_FREEABLE, float(review["consolidation"]["gpus_freed"]), [window]))
    return out


def push(review: dict[str, Any], gateway: str, timeout_s: float) -> None:
    """Replace the review's group on a Pushgateway with these figures (one bounded request)."""
    registry = CollectorRegistry()
    registry.register(Families(families(review)))
    push_to_gateway(gateway, job=JOB, registry=registry, handler=push_handler(timeout_s))
