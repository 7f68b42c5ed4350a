"""The attribution job end to end: a week of exporter and vLLM series backfilled into a real Prometheus
(promtool tsdb create-blocks-from openmetrics), the job run against it, its split checked against the truth."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from attribution.job import main
from attribution.prometheus import PrometheusClient
from common.units import GiB
from simulator.vllm_history import SyntheticServer, fleet, write_openmetrics
from tests.peers import Prometheus, backfill, prometheus

WEEK = 7 * 86400


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, list[SyntheticServer], float]]:
    tmp = tmp_path_factory.mktemp("week")
    end = float(int(time.time()) // 3600 * 3600 - 3600)
    start = end - WEEK
    servers = fleet(6)
    with (tmp / "history.om").open("w") as out:
        write_openmetrics(out, servers, start, end, step=300.0)
    with prometheus(tmp, [], storage=backfill(tmp / "history.om", tmp / "data")) as prom:
        yield prom, servers, end


def test_the_split_from_a_week_in_prometheus_matches_what_the_servers_were_built_with(
    week: tuple[Prometheus, list[SyntheticServer], float], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prom, servers, end = week
    code = main(
        [
            "--prometheus",
            prom.url,
            "--window",
            "7d",
            "--at",
            str(end),
            "--json",
            "--out",
            str(tmp_path),
            "--format",
            "csv,parquet,json,html",
            "--price-per-gpu-hour",
            "2",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["pod"]: r for r in result["split"]}
    assert set(rows) == {s.pod for s in servers}
    for s in servers:
        row = rows[s.pod]
        assert row["total_bytes"] == s.total_bytes
        assert row["kv_allocated_bytes"] == s.kv_bytes
        assert row["kv_used_max_bytes"] == pytest.approx(s.kv_bytes * s.kv_peak, rel=1e-4)
        assert row["kv_idle_bytes"] == pytest.approx(s.kv_bytes * (1 - s.kv_peak), rel=1e-4)
        assert row["weights_bytes"] is None  # no logs or configs given: named as missing, not invented
        assert "no weights figure" in row["assumptions"]
    recs = {r["pod"]: r for r in result["recommendations"]}
    low = min(servers, key=lambda s: s.kv_peak)
    assert recs[low.pod]["reclaimable_bytes"] == pytest.approx(
        low.kv_bytes - low.kv_bytes * low.kv_peak * 1.2, rel=1e-3
    )
    assert result["gpus_today"] == 6
    for name in ("split.csv", "split.parquet", "recommendations.json", "costs.csv", "costs_by_team.csv", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert "<svg" in (tmp_path / "report.html").read_text()


def test_logs_give_weights_and_the_overhead_follows(
    week: tuple[Prometheus, list[SyntheticServer], float], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prom, servers, end = week
    s = servers[0]
    (tmp_path / f"{s.namespace}_{s.pod}.log").write_text(
        "INFO 11-21 10:00:01 [gpu_model_runner.py:2000] "
        f"Model loading took {s.weights_bytes / GiB:.4f} GiB memory and 12.5 seconds\n"
    )
    assert main(["--prometheus", prom.url, "--window", "7d", "--at", str(end), "--json", "--logs", str(tmp_path)]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out)["split"] if r["pod"] == s.pod)
    assert row["weights_source"] == "log"
    assert row["weights_bytes"] == pytest.approx(s.weights_bytes, rel=1e-4)
    assert row["overhead_bytes"] == pytest.approx(s.overhead_bytes, abs=2**20)


def test_aggregation_runs_in_prometheus_with_a_fixed_number_of_queries(
    week: tuple[Prometheus, list[SyntheticServer], float],
) -> None:
    from attribution.collect import from_prometheus

    prom, servers, end = week
    client = PrometheusClient(prom.url)
    collected = from_prometheus(client, "7d", end)
    assert len(collected.servers) == len(servers)
    assert client.queries == 9  # one per input, whatever the number of servers or samples


def test_an_unreachable_prometheus_is_named_and_the_job_fails_without_a_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.peers import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--prometheus", url, "--window", "1d", "--timeout", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and f"{url}: no answer to memory" in captured.err
