"""The figures of the job and the review against a real Prometheus, on two days of a small cluster sampled
every 30 minutes: GPUs shared by time-slicing and MIG, eight vLLM replicas whose reservation is most of
their GPU but whose KV cache is mostly empty, and no inter-token latency histograms.

Each truth is how the history was built (simulator/cluster_history.py)."""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attribution import job
from attribution.review import main as review_main
from attribution.review import markdown
from common.units import GiB
from simulator.cluster_history import Workload, write_openmetrics
from tests.attribution.victoria import load_openmetrics, victoria_metrics
from tests.peers import backfill, prometheus

DAY = 86400
STEP_S = 1800.0  # a sample every 30 minutes
NODES, GPUS_PER_NODE = 2, 8
KV_BYTES = 50 * GiB
KV_PEAK = 0.25


def workloads() -> list[Workload]:
    """A 4-GPU training job, 8 one-GPU vLLM replicas, two pods time-slicing one GPU, two MIG instances of
    another (3g.40gb and 4g.40gb: 3/7 and 4/7 of it), one pod holding one of 4 replicas of a third."""

    def vllm(pod: str, **kw: Any) -> Workload:
        fields: dict[str, Any] = {
            "namespace": "llm",
            "pod": pod,
            "container": "vllm",
            "team": "search",
            "workload_class": "inference",
            "workload_kind": "Deployment",
            "workload": pod.rsplit("-", 1)[0],
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "gpus": 1,
            "sm": 0.2,
            "memory_fraction": 0.9,
            "tokens_per_s": 100.0,
            "ttft_fast_share": 0.9,
            "kv_cache_bytes": KV_BYTES,
            "kv_peak": KV_PEAK,
        }
        return Workload(**{**fields, **kw})

    out = [
        Workload(
            namespace="research",
            pod="train-0",
            container="trainer",
            team="research",
            workload_class="training",
            workload_kind="Job",
            workload="train",
            model="",
            gpus=4,
            sm=0.5,
            memory_fraction=0.9,
        )
    ]
    out += [vllm(f"qwen-{i}") for i in range(8)]
    out += [
        vllm(f"shared-{i}", team="sliced", sharing="time-slicing", gpu_group="ts", memory_fraction=0.3)
        for i in range(2)
    ]
    out += [
        vllm(f"mig-{p[0]}", team="mig", sharing="mig", gpu_group="mig", mig_profile=p, memory_fraction=0.45)
        for p in ("3g.40gb", "4g.40gb")
    ]
    # one pod on one of the 4 replicas its node advertises for a time-sliced GPU: a quarter of it, alone or not
    out += [vllm("quarter-0", team="quarter", sharing="time-slicing", gpu_group="ts4", advertised=4)]
    return out


HELD = {"research": 4.0, "search": 8.0, "sliced": 1.0, "mig": 1.0, "quarter": 0.25}
"""GPUs each team holds: the two time-sliced pods half a GPU each (their node advertises no replicas: counted
by holders), the MIG instances 3/7 and 4/7 of one, the pod alone on one of 4 advertised replicas a quarter."""


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Two days sampled every 30 minutes, in OpenMetrics: the file and the history's end."""
    tmp = tmp_path_factory.mktemp("figures")
    end = float(int(time.time()) // 3600 * 3600 - 3600)
    with (tmp / "history.om").open("w") as out:
        write_openmetrics(
            out, workloads(), end - 2 * DAY, end, STEP_S, nodes=NODES, gpus_per_node=GPUS_PER_NODE, itl=False
        )
    return tmp / "history.om", end


@pytest.fixture(scope="module")
def history(history_file: tuple[Path, float]) -> Iterator[tuple[str, float]]:
    """The history backfilled into a real Prometheus: its URL and the history's end."""
    path, end = history_file
    with prometheus(path.parent, [], storage=backfill(path, path.parent / "data")) as prom:
        yield prom.url, end


@pytest.fixture(scope="module")
def victoria(history_file: tuple[Path, float]) -> Iterator[tuple[str, float]]:
    """The same history imported into VictoriaMetrics: its URL and the history's end."""
    path, end = history_file
    with victoria_metrics(path.parent) as url:
        load_openmetrics(url, path)
        yield url, end


def run_review(url: str, end: float, *flags: str) -> dict[str, Any]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = review_main(["--prometheus", url, "--window", "1d", "--at", str(end), "--json", *flags])
    assert code == 0
    result: dict[str, Any] = json.loads(stdout.getvalue())
    return result


def run_job(url: str, end: float, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert job.main(["--prometheus", url, "--window", "1d", "--at", str(end), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


@pytest.fixture(scope="module")
def review(history: tuple[str, float]) -> dict[str, Any]:
    """The review at its default resolution (5m), over samples 30 minutes apart."""
    return run_review(*history)


def _teams(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in result["by"]["team"]}


@pytest.mark.slow
def test_samples_sparser_than_the_resolution_are_integrated_in_full_and_the_review_says_how(
    review: dict[str, Any],
) -> None:
    research = _teams(review)["research"]
    assert research["gpus_allocated"] == pytest.approx(4, rel=0.01)
    assert research["gpus_used_sm"] == pytest.approx(2, rel=0.01)
    sampling = review["sampling"]
    assert sampling["spacing_s"] == pytest.approx(STEP_S, rel=0.01)
    assert "30m" in sampling["note"]
    assert f"- {sampling['note']}" in markdown(review).splitlines()  # and the report says it


def test_dense_samples_keep_todays_queries() -> None:
    from attribution.review.data import queries

    # 30 s scrapes need no look-back of their own: the queries are those of a review that does not ask
    assert queries("1d", "5m", 0.05, spacing_s=30.0) == queries("1d", "5m", 0.05)
    assert queries("1d", "5m", 0.05, spacing_s=1800.0) != queries("1d", "5m", 0.05)


@pytest.mark.slow
def test_30s_scrapes_are_read_as_they_are(tmp_path: Path) -> None:
    """Eight hours scraped every 30 s, a review of the last three: the figures are the truth, and the
    report says the samples were read without a look-back of the review's own."""
    end = float(int(time.time()) // 3600 * 3600 - 3600)
    with (tmp_path / "dense.om").open("w") as out:
        write_openmetrics(out, workloads(), end - 8 * 3600, end, 30.0, nodes=NODES, gpus_per_node=GPUS_PER_NODE)
    with prometheus(tmp_path, [], storage=backfill(tmp_path / "dense.om", tmp_path / "data")) as prom:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            assert review_main(["--prometheus", prom.url, "--window", "3h", "--at", str(end), "--json"]) == 0
    result = json.loads(stdout.getvalue())
    assert result["sampling"]["spacing_s"] == 30.0
    assert result["sampling"]["note"] == "samples every 30s; integrated at 5m"
    for team, gpus in HELD.items():
        assert _teams(result)[team]["gpus_allocated"] == pytest.approx(gpus, rel=0.01), team


@pytest.mark.slow
def test_shared_and_mig_gpus_are_costed_at_the_fraction_held(review: dict[str, Any]) -> None:
    teams = _teams(review)
    for team, gpus in HELD.items():
        assert teams[team]["gpus_allocated"] == pytest.approx(gpus, rel=0.01), team
    pods = {row["name"]: row for row in review["by"]["workload"]}
    assert pods["Deployment/mig"]["gpus_allocated"] == pytest.approx(1.0, rel=0.01)
    assert any("3/7" in line for line in review["sharing"])
    assert any("the N replicas the node advertises" in line for line in review["sharing"])
    # the time-sliced pair's node advertises no replicas: counted by holders, and the review says so
    (fallback,) = [p for p in review["problems"] if "gpuattr_gpu_allocatable_units absent" in p]
    assert "for 1 shared GPU(s)" in fallback
    assert review["consolidation"]["gpus_today"] == pytest.approx(sum(HELD.values()), abs=0.01)


@pytest.mark.slow
def test_the_job_costs_a_mig_instance_and_a_time_sliced_replica_at_their_share(
    history: tuple[str, float], capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_job(*history, capsys)
    held = {row["pod"]: row["gpus_held"] for row in result["costs"]}
    assert held["qwen-0"] == pytest.approx(1.0)
    assert held["shared-0"] == pytest.approx(0.5)
    assert held["mig-3"] == pytest.approx(3 / 7)
    assert held["mig-4"] == pytest.approx(4 / 7)
    assert held["quarter-0"] == pytest.approx(0.25)  # one of the 4 replicas advertised, though it is alone
    costs = {row["pod"]: row["cost_held"] for row in result["costs"]}
    assert costs["mig-3"] == pytest.approx(costs["qwen-0"] * 3 / 7)
    # the plan counts whole GPUs: 8 replicas and the two time-sliced ones; MIG instances stay where they are
    assert result["gpus_today"] == 10
    assert {"llm/mig-3", "llm/mig-4"} <= set(result["refused"])
    # the pair's node advertises no replicas: counted by holders, and the report says for how many devices
    (fallback,) = [p for p in result["problems"] if "gpuattr_gpu_allocatable_units absent" in p]
    assert "for 1 shared GPU(s)" in fallback
    url, end = history
    assert job.main(["--prometheus", url, "--window", "1d", "--at", str(end)]) == 0
    out = capsys.readouterr().out
    assert "GPUs held: a MIG instance counts as its compute slices" in out  # and it says so
    assert "1/N of it for the N replicas the node advertises" in out


@pytest.mark.slow
def test_vllm_replicas_are_packed_at_their_right_sized_footprint_not_their_reservation(
    review: dict[str, Any],
) -> None:
    plan = review["consolidation"]
    refused = [name for name in plan["refused"] if name.startswith("llm/")]
    assert refused == []
    # each replica: 0.9 × 80 GiB reserved, of which 50 GiB KV at 25 % peak use; right-sized ≈ 37 GiB, and
    # two fit an 80 GiB GPU, as their SM (0.4 at peak) allows
    assert plan["gpus_needed"] < plan["gpus_today"]
    assert any("vLLM" in line for line in plan["assumptions"])


@pytest.mark.slow
def test_missing_inter_token_latency_histograms_are_a_named_problem(review: dict[str, Any]) -> None:
    problems = [p for p in review["problems"] if "inter_token_latency" in p]
    assert len(problems) == 1 and "ITL SLO not judged" in problems[0]
    assert not [r for r in review["slo"] if r["metric"] == "itl"]


def _close(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON answers differ beyond rounding (numbers within 0.1 %, or 1e-6 of zero)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return [] if b == pytest.approx(a, rel=1e-3, abs=1e-6) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.slow
def test_the_review_gives_the_same_figures_on_victoriametrics_as_on_prometheus(
    review: dict[str, Any], victoria: tuple[str, float]
) -> None:
    other = run_review(*victoria)
    assert _teams(other)["research"]["gpus_allocated"] == pytest.approx(4, rel=0.01)  # not empty on both
    review = {**review, "problems": [p for p in review["problems"] if "127.0.0.1" not in p]}
    assert _close(review, other) == []


@pytest.mark.slow
def test_the_job_gives_the_same_figures_on_victoriametrics_as_on_prometheus(
    history: tuple[str, float], victoria: tuple[str, float], capsys: pytest.CaptureFixture[str]
) -> None:
    on_prometheus, on_victoria = run_job(*history, capsys), run_job(*victoria, capsys)
    assert len(on_victoria["split"]) == len(workloads()) - 1  # every vLLM server, on both
    assert on_victoria["costs"] and on_victoria["recommendations"]
    assert _close(on_prometheus, on_victoria) == []
