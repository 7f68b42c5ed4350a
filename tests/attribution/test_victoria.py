"""The VictoriaMetrics peer of the tests: missing, it skips a test outside CI and fails it in CI (where
make system-deps installs it). And the review's timeline on VictoriaMetrics and on Prometheus, over a day of
one node where a team holds GPUs only in the second half: the same steps, the same figures."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attribution.review import main as review_main
from simulator.cluster_history import Workload, write_openmetrics
from tests.attribution import victoria
from tests.attribution.victoria import load_openmetrics, victoria_metrics
from tests.peers import backfill, prometheus

HOUR = 3600
DAY = 24 * HOUR
LATE_GPUS, LATE_SM = 2, 0.25


def test_a_missing_binary_skips_outside_ci_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make system-deps"):
        victoria.binary()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="make system-deps"):
        victoria.binary()


def _workloads() -> list[Workload]:
    """On 8 GPUs: a 4-GPU training job all day, a 2-GPU batch job (team ``late``), and two MIG instances of
    one GPU (3/7 and 4/7 of it)."""

    def pod(namespace: str, name: str, team: str, workload_class: str, gpus: int, sm: float, **kw: Any) -> Workload:
        return Workload(
            namespace=namespace,
            pod=name,
            container="main",
            team=team,
            workload_class=workload_class,
            workload_kind="Job",
            workload=name.rsplit("-", 1)[0],
            model="",
            gpus=gpus,
            sm=sm,
            memory_fraction=0.5,
            **kw,
        )

    return [
        pod("research", "train-0", "research", "training", 4, 0.5),
        pod("data", "late-0", "late", "batch", LATE_GPUS, LATE_SM),
        *(
            pod("lab", f"mig-{p[0]}", "mig", "experimentation", 1, 0.3, sharing="mig", gpu_group="g", mig_profile=p)
            for p in ("3g.40gb", "4g.40gb")
        ),
    ]


@pytest.fixture(scope="module")
def late_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A day sampled every 30 minutes in OpenMetrics, the ``late`` team's series only from the middle of the
    day on: the file and the history's end (a whole hour)."""
    tmp = tmp_path_factory.mktemp("timeline")
    end = float(int(time.time()) // HOUR * HOUR - HOUR)
    whole = io.StringIO()
    write_openmetrics(whole, _workloads(), end - DAY, end, 1800.0, nodes=1, gpus_per_node=8, itl=False)
    middle = end - DAY / 2
    with (tmp / "history.om").open("w") as out:
        for line in whole.getvalue().splitlines(keepends=True):
            if 'pod="late-0"' in line and float(line.rsplit(" ", 1)[1]) < middle:
                continue
            out.write(line)
    return tmp / "history.om", end


def _review(url: str, end: float) -> dict[str, Any]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert review_main(["--prometheus", url, "--window", "1d", "--at", str(end), "--json"]) == 0
    result: dict[str, Any] = json.loads(stdout.getvalue())
    return result


@pytest.fixture(scope="module")
def on_prometheus(late_history: tuple[Path, float]) -> dict[str, Any]:
    path, end = late_history
    with prometheus(path.parent, [], storage=backfill(path, path.parent / "data")) as prom:
        return _review(prom.url, end)


@pytest.fixture(scope="module")
def on_victoria(late_history: tuple[Path, float]) -> Iterator[dict[str, Any]]:
    path, end = late_history
    with victoria_metrics(path.parent) as url:
        load_openmetrics(url, path)
        yield _review(url, end)


def _teams(review: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in review["by"]["team"]}


@pytest.mark.slow
def test_a_team_that_came_in_the_second_half_has_no_allocation_before_and_its_gpus_after(
    on_prometheus: dict[str, Any], late_history: tuple[Path, float]
) -> None:
    _, end = late_history
    middle = end - DAY / 2
    assert on_prometheus["timeline_step_s"] == HOUR  # a day: hourly steps
    late = on_prometheus["timeline"]["late"]
    assert [t for t, _, _ in late] == [end - DAY + i * HOUR for i in range(24)]
    before = [step for step in late if step[0] < middle - HOUR]
    after = [step for step in late if step[0] >= middle]
    assert len(before) == 11 and len(after) == 12
    assert all(a in (None, 0) and u in (None, 0) for _, a, u in before), before
    for _, allocated, used in after:
        assert allocated == pytest.approx(LATE_GPUS, rel=1e-6)
        assert used == pytest.approx(LATE_GPUS * LATE_SM, rel=1e-6)
    # the team held its GPUs half the day: the table's average, the timeline's integral
    for name, steps in on_prometheus["timeline"].items():
        row = _teams(on_prometheus)[name]
        hours = sum(a or 0.0 for _, a, _ in steps) * HOUR / 3600
        used = sum(u or 0.0 for _, _, u in steps) * HOUR / 3600
        assert hours == pytest.approx(row["gpus_allocated"] * 24, rel=0.01), name
        assert used == pytest.approx(row["gpus_used_sm"] * 24, rel=0.01), name
    assert _teams(on_prometheus)["late"]["gpus_allocated"] == pytest.approx(LATE_GPUS / 2, rel=0.02)
    # MIG instances count as their share of the GPU, step by step as in the table
    mig = on_prometheus["timeline"]["mig"]
    assert len(mig) == 24 and all(a == pytest.approx(1.0) for _, a, _ in mig), mig


@pytest.mark.slow
def test_the_timeline_is_the_same_on_victoriametrics_as_on_prometheus(
    on_prometheus: dict[str, Any], on_victoria: dict[str, Any]
) -> None:
    assert on_victoria["timeline_step_s"] == on_prometheus["timeline_step_s"]
    assert sorted(on_victoria["timeline"]) == sorted(on_prometheus["timeline"]) == ["late", "mig", "research"]
    for team, steps in on_prometheus["timeline"].items():
        # the same steps: asked to start at the window's first step, not moved onto multiples of the step
        other = {t: (a, u) for t, a, u in on_victoria["timeline"][team]}
        assert sorted(other) == [t for t, _, _ in steps], team
        for t, allocated, used in steps:
            for mine, theirs in ((allocated, other[t][0]), (used, other[t][1])):
                # a gap on one store may be a zero on the other, never a figure
                assert (theirs or 0.0) == pytest.approx(mine or 0.0, rel=1e-3, abs=1e-6), (team, t, mine, theirs)
