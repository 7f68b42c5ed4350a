"""What the review asks Prometheus: the backfilled month holds the cluster as built, and GPU-hours are
integrated over exactly the window, one point per resolution step."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from attribution.review.data import queries
from tests.attribution.review.conftest import DAY, Cluster
from tests.peers import Prometheus


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
