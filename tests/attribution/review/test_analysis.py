"""`gpuattr review` end to end: a month of a 50-node cluster backfilled into a real Prometheus (promtool tsdb
create-blocks-from openmetrics), the review run against it, every figure checked against how the cluster was
built (simulator/cluster_history.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from attribution.review import main
from simulator.cluster_history import Workload, cluster, write_openmetrics
from tests.peers import Prometheus, free_port, prometheus

pytestmark = pytest.mark.slow

DAY = 86400
MONTH = 30 * DAY
WEEK_HOURS = 7 * 24
PRICE = 2.0  # dollars per GPU-hour
EDGE = 0.02  # share of a window the review may lose or gain at its edges (one resolution step of 336)


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


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    promtool = shutil.which("promtool")
    assert promtool is not None, "make test installs Debian's prometheus package, which provides promtool"
    tmp = tmp_path_factory.mktemp("month")
    end = float(int(time.time()) // 3600 * 3600)
    workloads = cluster()
    history = tmp / "history.om"
    with history.open("w") as out:
        write_openmetrics(out, workloads, end - MONTH, end)
    subprocess.run(
        # 30 days in one pass or three, not 360 two-hour blocks each re-reading the whole file
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=720h",
            str(history),
            str(tmp / "data"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    history.unlink()  # 400 MB; the blocks hold it now
    with prometheus(tmp, [], storage=tmp / "data") as prom:
        yield Cluster(prom, workloads, end)


@pytest.fixture(scope="module")
def review(month: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Review:
    out = tmp_path_factory.mktemp("review")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                "--prometheus",
                month.prom.url,
                "--window",
                "7d",
                "--at",
                str(month.end),
                "--resolution",
                "30m",
                "--json",
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


def _at(prom: Prometheus, expr: str, at: float) -> float:
    """The single value of ``expr`` evaluated at ``at`` (unix seconds)."""
    q = urllib.parse.urlencode({"query": expr, "time": at})
    with urllib.request.urlopen(f"{prom.url}/api/v1/query?{q}", timeout=30) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


def _rows(review: Review, dimension: str) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in review.result["by"][dimension]}


def _gpus(workloads: list[Workload], **match: str) -> int:
    return sum(w.gpus for w in workloads if all(getattr(w, k) == v for k, v in match.items()))


def test_the_backfilled_history_holds_the_cluster_as_built(month: Cluster) -> None:
    prom, end = month.prom, month.end
    assert _at(prom, "count(gpuattr_gpu_info)", end) == 400
    assert _at(prom, "count(count by (gpu_uuid) (gpuattr_gpu_memory_total_bytes))", end) == 400
    assert _at(prom, "sum(gpuattr_container_gpu_allocated)", end) == 160
    used = 'avg_over_time(sum(gpuattr_container_gpu_sm_active_ratio{namespace="research"})[7d:30m])'
    assert _at(prom, used, end) == pytest.approx(20.0, rel=1e-9)
    growth = 'avg_over_time(sum(gpuattr_container_gpu_sm_active_ratio{namespace="data"})[6d:30m])'
    assert _at(prom, growth, end) == pytest.approx(20.0) and _at(prom, growth, end - 8 * DAY) == pytest.approx(10.0)
    fast = (
        'sum(increase(vllm:time_to_first_token_seconds_bucket{pod=~"qwen-.*",le="0.5"}[7d]))'
        ' / sum(increase(vllm:time_to_first_token_seconds_count{pod=~"qwen-.*"}[7d]))'
    )
    assert _at(prom, fast, end) == pytest.approx(0.80, abs=1e-6)


def test_the_review_answers_with_exit_code_zero_and_no_problems(review: Review) -> None:
    assert review.code == 0
    assert review.result["window"] == "7d"
    assert review.result["problems"] == []


def test_research_holds_64_gpus_but_uses_20_gpus_worth_of_sms(review: Review) -> None:
    research = _rows(review, "team")["research"]
    assert research["gpus_allocated"] == pytest.approx(64, abs=0.5)
    assert research["gpus_used_sm"] == pytest.approx(20, abs=0.5)
    assert research["cost"] == pytest.approx(research["gpus_allocated"] * WEEK_HOURS * PRICE, rel=EDGE)
    assert research["idle_gpu_hours"] == pytest.approx(0, abs=1)  # busy at 0.31 all week: never idle


def test_idle_notebooks_are_priced_as_idle_gpu_hours(review: Review) -> None:
    notebooks = _rows(review, "team")["notebooks"]
    assert notebooks["gpus_allocated"] == pytest.approx(24, abs=0.5)
    assert notebooks["gpus_used_sm"] == pytest.approx(0, abs=1e-9)
    assert notebooks["idle_gpu_hours"] == pytest.approx(24 * WEEK_HOURS, rel=EDGE)
    assert notebooks["cost_idle"] == pytest.approx(notebooks["idle_gpu_hours"] * PRICE, rel=1e-6)
    assert notebooks["cost_idle"] == pytest.approx(24 * WEEK_HOURS * PRICE, rel=EDGE)
    assert notebooks["memory_share"] > 0  # idle, yet holding memory


def test_every_workload_class_has_the_gpus_its_pods_hold(review: Review) -> None:
    classes = _rows(review, "workload_class")
    expected = {"inference": 32, "training": 64, "batch": 40, "experimentation": 24}
    assert expected.keys() <= classes.keys()
    for name, gpus in expected.items():
        assert classes[name]["gpus_allocated"] == pytest.approx(gpus, abs=0.5), name


def test_namespace_and_workload_rows_follow_the_pods(review: Review) -> None:
    workloads = cluster()
    namespaces = _rows(review, "namespace")
    for ns in {w.namespace for w in workloads}:
        assert namespaces[ns]["gpus_allocated"] == pytest.approx(_gpus(workloads, namespace=ns), abs=0.5), ns
    by_workload = review.result["by"]["workload"]
    llama = [r for r in by_workload if "llama-70b" in r["name"]]
    assert len(llama) == 1 and llama[0]["gpus_allocated"] == pytest.approx(24, abs=0.5)


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


def test_the_growing_team_trends_up_and_the_steady_one_stays_flat(review: Review) -> None:
    teams = {t["name"]: t for t in review.result["trends"] if t["dimension"] == "team"}
    data, research = teams["data"], teams["research"]
    assert data["gpus_used"] == pytest.approx(20, abs=0.5)
    assert data["gpus_used_previous"] == pytest.approx(10, abs=0.5)
    assert data["change"] > 0
    assert research["gpus_used"] == pytest.approx(research["gpus_used_previous"], abs=0.05)
    assert research["change"] == pytest.approx(0, abs=0.05)


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


def test_the_review_is_written_in_every_format(review: Review) -> None:
    out = review.out
    assert "<table" in (out / "report.html").read_text()
    assert "research" in (out / "report.md").read_text()
    by_team = pd.read_csv(out / "by_team.csv")
    assert "research" in set(by_team["name"])
    parquet = pd.read_parquet(out / "by_team.parquet").set_index("name")
    assert parquet.loc["research", "gpus_allocated"] == pytest.approx(64, abs=0.5)
    written = json.loads((out / "review.json").read_text())
    assert written["by"]["team"] == review.result["by"]["team"]


def test_an_unreachable_prometheus_is_named_and_the_review_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--prometheus", url, "--window", "7d", "--json", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["problems"], result
    assert url in json.dumps(result["problems"])


def test_each_gpu_model_is_priced_at_its_own_rate_and_headlines_are_pushed(month: Cluster) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prometheus_client.parser import text_string_to_metric_families

    pushed: list[bytes] = []

    class Gateway(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_PUT(self) -> None:
            pushed.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    gateway = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            code = main(
                [
                    "--prometheus",
                    month.prom.url,
                    "--window",
                    "7d",
                    "--at",
                    str(month.end),
                    "--resolution",
                    "30m",
                    "--json",
                    "--price-per-gpu-hour",
                    "1",
                    "--price",
                    "NVIDIA H100 80GB HBM3=4",
                    "--pushgateway",
                    f"127.0.0.1:{gateway.server_address[1]}",
                ]
            )
    finally:
        gateway.shutdown()
        gateway.server_close()
    assert code == 0
    research = {r["name"]: r for r in json.loads(stdout.getvalue())["by"]["team"]}["research"]
    assert research["cost"] == pytest.approx(research["gpus_allocated"] * 168 * 4, rel=1e-6)  # H100s at 4, not 1
    (body,) = pushed
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    allocated = {
        (s.labels["dimension"], s.labels["name"]): s.value for s in fams["gpuattr_review_gpus_allocated"].samples
    }
    assert allocated[("team", "research")] == pytest.approx(64, abs=0.5)
    assert fams["gpuattr_review_gpus_freeable"].samples[0].value > 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--price-per-gpu-hour", "nan"],
        ["--price-per-gpu-hour", "-1"],
        ["--price", "NVIDIA H100 80GB HBM3=inf"],
        ["--slo-itl", "inf"],
    ],
)
def test_prices_and_targets_that_are_not_finite_or_negative_are_refused_naming_the_flag(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--prometheus", "http://127.0.0.1:1", *flags]) == 2  # refused before Prometheus is asked
    assert flags[0] in capsys.readouterr().err
