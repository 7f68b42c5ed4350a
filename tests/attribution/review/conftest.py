"""Fixtures of the capacity review's tests: a month of a 50-node cluster backfilled into a real Prometheus
(promtool tsdb create-blocks-from openmetrics) and the review run against it once, shared by the modules
here; and a small review written by hand, with names that Markdown and HTML must quote."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from attribution.review import main
from simulator.cluster_history import Workload, cluster, write_openmetrics
from tests.peers import Prometheus, backfill, prometheus

DAY = 86400
MONTH = 30 * DAY
WEEK_HOURS = 7 * 24
PRICE = 2.0  # dollars per GPU-hour


@dataclass
class Cluster:
    prom: Prometheus
    workloads: list[Workload]
    end: float  # unix seconds: the last sample of the history and the end of the reviewed window


@dataclass
class Review:
    result: dict[str, Any]
    out: Path
    code: int


def review_flags(month: Cluster) -> list[str]:
    """The flags of a review of the last week of ``month`` at a 30-minute resolution, printed as JSON."""
    return ["--prometheus", month.prom.url, "--window", "7d", "--at", str(month.end), "--resolution", "30m", "--json"]


@pytest.fixture(scope="package")
def month(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("month")
    end = float(int(time.time()) // 3600 * 3600)
    workloads = cluster()
    history = tmp / "history.om"
    with history.open("w") as out:
        write_openmetrics(out, workloads, end - MONTH, end)
    # 30 days in one pass or three, not 360 two-hour blocks each re-reading the whole file
    backfill(history, tmp / "data", max_block_hours=720)
    history.unlink()  # 400 MB; the blocks hold it now
    with prometheus(tmp, [], storage=tmp / "data") as prom:
        yield Cluster(prom, workloads, end)


@pytest.fixture(scope="package")
def review(month: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Review:
    out = tmp_path_factory.mktemp("review")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                *review_flags(month),
                "--price-per-gpu-hour",
                str(PRICE),
                "--slo-ttft",
                "0.5",
                "--out",
                str(out),
                "--format",
                "html,md,csv,parquet,json",
            ]
        )
    return Review(json.loads(stdout.getvalue()), out, code)


HOSTILE_TEAM = "<b>&x"
PIPED_TEAM = "a|b"


@pytest.fixture
def small_review() -> dict[str, Any]:
    """A review as :func:`attribution.review.run` returns it, for two teams whose names need quoting."""

    def row(name: str, allocated: float, used: float, share: float | None) -> dict[str, Any]:
        return {
            "name": name,
            "gpus_allocated": allocated,
            "gpus_used_sm": used,
            "memory_share": share,
            "idle_gpu_hours": (allocated - used) * 24,
            "cost": allocated * 24 * PRICE,
            "cost_idle": (allocated - used) * 24 * PRICE,
        }

    teams = [row(HOSTILE_TEAM, 4, 1.5, 0.5), row(PIPED_TEAM, 2, 2, None), row("", 1, 0, 0.1)]
    return {
        "window": "1d",
        "by": {"team": teams, "namespace": [row("ns<1>", 7, 3.5, 0.4)], "model": []},
        "models": [],
        "slo": [
            {"model": "m&m", "metric": "ttft", "target_s": 0.5, "attainment": 0.9},
            {"model": "m&m", "metric": "itl", "target_s": 0.1, "attainment": 0.75},
        ],
        "consolidation": {
            "gpus_today": 7,
            "gpus_needed": 5,
            "gpus_freed": 2,
            "refused": {"ns<1>/train-0": "training keeps its GPUs"},
            "assumptions": [],
        },
        "trends": [
            {"dimension": "team", "name": HOSTILE_TEAM, "gpus_used": 1.5, "gpus_used_previous": 1.0, "change": 0.5}
        ],
        "problems": ["http://prometheus:9090: <timeout>"],
    }
