"""The capacity review's figures, from a month of a 50-node cluster in a real Prometheus, each checked against
how the cluster was built (simulator/cluster_history.py); and SLO attainment from a histogram by hand."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from attribution.review import Inputs, slo
from simulator.cluster_history import Workload, cluster
from tests.attribution.review.conftest import PRICE, WEEK_HOURS, Review

EDGE = 0.02  # share of a window the review may lose or gain at its edges (one resolution step of 336)


def _rows(review: Review, dimension: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in review.result["by"][dimension]}


def _gpus(workloads: list[Workload], **match: str) -> int:
    return sum(w.gpus for w in workloads if all(getattr(w, k) == v for k, v in match.items()))


@pytest.mark.slow
def test_the_review_answers_with_exit_code_zero_and_no_problems(review: Review) -> None:
    assert review.code == 0
    assert review.result["window"] == "7d"
    assert review.result["problems"] == []


@pytest.mark.slow
def test_research_holds_64_gpus_but_uses_20_gpus_worth_of_sms(review: Review) -> None:
    research = _rows(review, "team")["research"]
    assert research["gpus_allocated"] == pytest.approx(64, abs=0.5)
    assert research["gpus_used_sm"] == pytest.approx(20, abs=0.5)
    assert research["cost"] == pytest.approx(research["gpus_allocated"] * WEEK_HOURS * PRICE, rel=EDGE)
    assert research["idle_gpu_hours"] == pytest.approx(0, abs=1)  # busy at 0.31 all week: never idle


@pytest.mark.slow
def test_idle_notebooks_are_priced_as_idle_gpu_hours(review: Review) -> None:
    notebooks = _rows(review, "team")["notebooks"]
    assert notebooks["gpus_allocated"] == pytest.approx(24, abs=0.5)
    assert notebooks["gpus_used_sm"] == pytest.approx(0, abs=1e-9)
    assert notebooks["idle_gpu_hours"] == pytest.approx(24 * WEEK_HOURS, rel=EDGE)
    assert notebooks["cost_idle"] == pytest.approx(notebooks["idle_gpu_hours"] * PRICE, rel=1e-6)
    assert notebooks["cost_idle"] == pytest.approx(24 * WEEK_HOURS * PRICE, rel=EDGE)
    assert notebooks["memory_share"] > 0  # idle, yet holding memory


@pytest.mark.slow
def test_every_workload_class_has_the_gpus_its_pods_hold(review: Review) -> None:
    classes = _rows(review, "workload_class")
    expected = {"inference": 32, "training": 64, "batch": 40, "experimentation": 24}
    assert expected.keys() <= classes.keys()
    for name, gpus in expected.items():
        assert classes[name]["gpus_allocated"] == pytest.approx(gpus, abs=0.5), name


@pytest.mark.slow
def test_namespace_and_workload_rows_follow_the_pods(review: Review) -> None:
    workloads = cluster()
    namespaces = _rows(review, "namespace")
    for ns in {w.namespace for w in workloads}:
        assert namespaces[ns]["gpus_allocated"] == pytest.approx(_gpus(workloads, namespace=ns), abs=0.5), ns
    by_workload = review.result["by"]["workload"]
    llama = [r for r in by_workload if "llama-70b" in r["name"]]
    assert len(llama) == 1 and llama[0]["gpus_allocated"] == pytest.approx(24, abs=0.5)


@pytest.mark.slow
def test_model_traffic_and_gpu_shares_are_the_served_truths(review: Review) -> None:
    workloads = cluster()
    served = {w.model for w in workloads if w.model}
    models = {m["model"]: m for m in review.result["models"]}
    assert set(models) == served
    assert sum(m["traffic_share"] for m in models.values()) == pytest.approx(1.0, abs=1e-6)
    held = sum(w.gpus for w in workloads if w.model)
    tokens = {model: sum(w.tokens_per_s for w in workloads if w.model == model) for model in served}
    for model in served:
        assert models[model]["gpu_share"] == pytest.approx(_gpus(workloads, model=model) / held, abs=0.01), model
        assert models[model]["traffic_share"] == pytest.approx(tokens[model] / sum(tokens.values()), abs=0.01), model
    llama = models["meta-llama/Llama-3.3-70B-Instruct"]
    assert (llama["traffic_share"], llama["gpu_share"]) == (pytest.approx(0.6, abs=0.01), pytest.approx(0.75, abs=0.01))
    total = sum(m["tokens"] for m in models.values())
    assert llama["tokens"] / total == pytest.approx(llama["traffic_share"], rel=1e-6)


@pytest.mark.slow
def test_ttft_slo_attainment_matches_the_share_of_fast_first_tokens(review: Review) -> None:
    slo = {r["model"]: r for r in review.result["slo"] if r["metric"] == "ttft"}
    for w in cluster():
        if w.ttft_fast_share is not None:
            assert slo[w.model]["target_s"] == 0.5
            assert slo[w.model]["attainment"] == pytest.approx(w.ttft_fast_share, abs=0.01), w.model
    assert {r["model"]: round(r["attainment"], 2) for r in slo.values()} == {
        "meta-llama/Llama-3.3-70B-Instruct": 0.95,
        "Qwen/Qwen2.5-7B-Instruct": 0.80,
    }


@pytest.mark.slow
def test_the_growing_team_trends_up_and_the_steady_one_stays_flat(review: Review) -> None:
    teams = {t["name"]: t for t in review.result["trends"] if t["dimension"] == "team"}
    data, research = teams["data"], teams["research"]
    assert data["gpus_used"] == pytest.approx(20, abs=0.5)
    assert data["gpus_used_previous"] == pytest.approx(10, abs=0.5)
    assert data["change"] > 0
    assert research["gpus_used"] == pytest.approx(research["gpus_used_previous"], abs=0.05)
    assert research["change"] == pytest.approx(0, abs=0.05)


@pytest.mark.slow
def test_consolidation_frees_gpus_but_leaves_training_where_it_is(review: Review) -> None:
    plan = review.result["consolidation"]
    assert plan["gpus_today"] == pytest.approx(160, abs=0.5)  # every allocated GPU
    assert plan["gpus_freed"] > 0
    assert plan["gpus_needed"] == pytest.approx(plan["gpus_today"] - plan["gpus_freed"], abs=1e-6)
    refused = plan["refused"]
    for w in cluster():
        if w.workload_class == "training":
            reasons = [reason for name, reason in refused.items() if w.pod in name or w.workload in name]
            assert reasons and all(reasons), f"{w.pod} is not among the refused: {sorted(refused)}"
    assert isinstance(plan["assumptions"], list) and plan["assumptions"]
    # vLLM replicas are packed at their right-sized footprint, not at the ~90 % of a GPU vLLM reserves
    assert [name for name in refused if name.startswith("llm/")] == [], refused


def test_slo_attainment_interpolates_inside_the_bucket_and_covers_both_latencies() -> None:
    pods = pd.DataFrame([{"namespace": "llm", "pod": "a", "model": "m"}])
    histogram = {0.1: 50.0, 0.5: 90.0, float("inf"): 100.0}  # cumulative counts per le
    inputs = Inputs(pods, pods, {}, {"ttft": {("llm", "a"): histogram}, "itl": {("llm", "a"): histogram}})
    out = slo(inputs, {"ttft": 0.3, "itl": 0.5}).set_index("metric")
    assert out.loc["ttft", "attainment"] == pytest.approx(0.70)  # halfway between 50 at 0.1 s and 90 at 0.5 s
    assert out.loc["itl", "attainment"] == pytest.approx(0.90)
    assert set(out["model"]) == {"m"}


@pytest.mark.slow
def test_the_timeline_has_a_point_per_six_hours_and_adds_up_to_the_tables_gpu_hours(review: Review) -> None:
    result = review.result
    step_h = 6
    assert result["timeline_step_s"] == step_h * 3600  # a week at 6-hour steps: 28 points
    teams = _rows(review, "team")
    assert set(result["timeline"]) == set(teams)
    for name, steps in result["timeline"].items():
        starts = [t for t, _, _ in steps]
        assert len(steps) == WEEK_HOURS // step_h, name
        assert starts == [result["start"] + i * step_h * 3600 for i in range(len(steps))], name
        allocated = sum(a for _, a, _ in steps if a is not None) * step_h
        used = sum(u for _, _, u in steps if u is not None) * step_h
        assert allocated == pytest.approx(teams[name]["gpus_allocated"] * WEEK_HOURS, rel=EDGE, abs=1e-6), name
        assert used == pytest.approx(teams[name]["gpus_used_sm"] * WEEK_HOURS, rel=EDGE, abs=1e-6), name
    # research holds 64 GPUs at every step; search's daily wave averages out over each day, not each step
    assert all(a == pytest.approx(64) and u == pytest.approx(20) for _, a, u in result["timeline"]["research"])
    search = [u for _, _, u in result["timeline"]["search"]]
    assert max(search) - min(search) > 1 and sum(search) / len(search) == pytest.approx(0.7 * 32, rel=EDGE)
