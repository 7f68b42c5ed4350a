"""What the review asks Prometheus: the backfilled month holds the cluster as built, and GPU-hours are
integrated over exactly the window, one point per resolution step."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from attribution.prometheus import PrometheusClient, PrometheusError, Series
from attribution.review.analysis import timeline
from attribution.review.data import TIMELINE, gather, queries, timeline_query, timeline_step, timeline_times
from tests.attribution.review.conftest import DAY, Cluster
from tests.peers import Prometheus, free_port


def _at(prom: Prometheus, expr: str, at: float) -> float:
    """The single value of ``expr`` evaluated at ``at`` (unix seconds)."""
    q = urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(f"{prom.url}/api/v1/query?{q}", timeout=30) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


@pytest.mark.slow
def test_the_backfilled_history_holds_the_cluster_as_built(month: Cluster) -> None:
    prom, end = month.prom, month.end
    assert _at(prom, "count(gpuattr_gpu_info)", end) == 400
    assert _at(prom, "count(count by (gpu_uuid) (gpuattr_gpu_memory_total_bytes))", end) == 400
    assert _at(prom, "sum(gpuattr_container_gpu_allocated)", end) == 160
    used = 'avg_over_time(sum(gpuattr_container_gpu_kernel_active_ratio{namespace="research"})[7d:30m])'
    assert _at(prom, used, end) == pytest.approx(20.0, rel=1e-9)
    growth = 'avg_over_time(sum(gpuattr_container_gpu_kernel_active_ratio{namespace="data"})[6d:30m])'
    assert _at(prom, growth, end) == pytest.approx(20.0) and _at(prom, growth, end - 8 * DAY) == pytest.approx(10.0)
    fast = (
        'sum(increase(vllm:time_to_first_token_seconds_bucket{pod=~"qwen-.*",le="0.5"}[7d]))'
        ' / sum(increase(vllm:time_to_first_token_seconds_count{pod=~"qwen-.*"}[7d]))'
    )
    assert _at(prom, fast, end) == pytest.approx(0.80, abs=1e-6)


@pytest.mark.parametrize(("window", "resolution", "seconds"), [("7d", "30m", 7 * DAY), ("1h30m", "5m", 5400)])
def test_gpu_hours_take_one_point_per_step_of_the_window(window: str, resolution: str, seconds: int) -> None:
    step = {"30m": 1800, "5m": 300}[resolution]
    span = f"[{(seconds - step // 2) * 1000}ms:{resolution}]"
    for name in ("alloc_h", "used_h", "mem_h", "idle_h"):
        expr = queries(window, resolution, 0.05)[name]
        # a range half a step short of the window: window / step points whether the store includes its first
        # end (Prometheus 2) or not (VictoriaMetrics), each standing for the window over their number
        assert f"{span}) * {seconds / 3600} / scalar(count_over_time(vector(1){span}))" in expr, expr


def test_a_resolution_that_is_not_a_duration_is_named() -> None:
    with pytest.raises(ValueError, match=r"^--resolution: .*'5 minutes'"):
        queries("7d", "5 minutes", 0.05)


@pytest.mark.slow
def test_a_window_that_starts_before_the_history_has_gaps_there_and_the_gpus_after(month: Cluster) -> None:
    client = PrometheusClient(month.prom.url)
    first = month.end - 30 * DAY  # the history's first sample
    inputs = gather(client, "2d", first + DAY, "30m", 0.05)
    assert inputs.failed == {} and inputs.timeline_step_s == 3600
    research = timeline(inputs)["research"]
    assert [t for t, _, _ in research] == [first - DAY + h * 3600 for h in range(48)]
    # nothing before the history (a gap, not zero); the last step before it sees its first sample at its end
    assert all(a is None and u is None for _, a, u in research[:23]), research[:23]
    assert all(a == pytest.approx(64) and u == pytest.approx(20) for _, a, u in research[24:]), research[24:]


def test_the_timeline_step_follows_the_window_the_resolution_and_the_spacing() -> None:
    assert timeline_step("2d", "5m", None) == 3600
    assert timeline_step("7d", "30m", 1800.0) == 6 * 3600
    assert timeline_step("30d", "5m", 30.0) == DAY
    assert timeline_step("1d", "5m", 7200.0) == 7200  # never finer than the samples
    assert timeline_step("1d", "45m", None) == 2 * 2700  # a whole number of resolution steps
    assert len(timeline_times("365d", 0.0, timeline_step("365d", "5m", None))) <= 200
    assert timeline_step("30m", "5m", None) == 1800  # one step: the window


def test_a_timeline_query_asks_each_step_the_mean_of_the_window_figures_expressions() -> None:
    expr = timeline_query("30m", 6 * 3600, 1800.0)
    alloc, used = queries("7d", "30m", 0.05, 1800.0)["alloc_h"], queries("7d", "30m", 0.05, 1800.0)["used_h"]
    for figure, total in (("allocated", alloc), ("used", used)):
        inner = total[len("sum_over_time((") : total.index(")[")]
        assert f"label_replace(sum_over_time(({inner})[{6 * 3600 - 900}000ms:30m]) / " in expr
        assert f'"figure", "{figure}", "", "")' in expr


def test_a_dead_prometheus_is_asked_for_the_timeline_once_and_named() -> None:
    client = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_s=2, retries=0)
    with pytest.raises(PrometheusError, match="no answer to 'up' after 1 tries"):
        client.query_range("up", 0.0, 3600.0, 60.0)
    asked = client.queries
    with pytest.raises(PrometheusError, match="not asked"):
        client.query_range("up", 0.0, 3600.0, 60.0)
    assert client.queries == asked
    inputs = gather(client, "1d", 86400.0, "5m", 0.05)
    assert TIMELINE in inputs.failed and inputs.timeline_step_s is None and timeline(inputs) == {}


def test_an_answer_that_is_not_a_range_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    client = PrometheusClient("http://prometheus:9090")
    vector = {"status": "success", "data": {"resultType": "vector", "result": []}}
    monkeypatch.setattr(client, "_get", lambda path, params, expr: vector)
    with pytest.raises(PrometheusError, match="expected a range vector"):
        client.query_range("up", 0.0, 60.0, 60.0)
    matrix = {"data": {"resultType": "matrix", "result": [{"metric": {"a": "b"}, "values": [[60, "1.5"]]}]}}
    monkeypatch.setattr(client, "_get", lambda path, params, expr: matrix)
    assert client.query_range("up", 0.0, 60.0, 60.0) == [Series({"a": "b"}, [(60.0, 1.5)])]
