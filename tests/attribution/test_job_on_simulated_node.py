"""The whole chain on the simulated node: fake NVML and simulated vLLM servers → the exporter and vLLM's
/metrics → a real Prometheus → the attribution job, whose split must match the servers' own budgets."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from attribution.job import main
from exporter.app import build
from exporter.settings import ExporterSettings
from tests.conftest import SCENARIOS
from tests.peers import prometheus


def test_the_job_reproduces_each_simulated_servers_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exporter = build(
        ExporterSettings(
            simulate=str(SCENARIOS / "h100-inference-node.yaml"),
            kubernetes=True,
            listen="127.0.0.1:0",
            interval=0.5,
            sim_start=60,
        )
    )
    exporter.start()
    try:
        sim = exporter.simulation
        assert sim is not None and sim.vllm
        logs = tmp_path / "logs"
        logs.mkdir()
        vllm_jobs = []
        for server in sim.vllm:
            with urllib.request.urlopen(server.logs_url, timeout=5) as resp:
                (logs / f"{server.namespace}_{server.pod}.log").write_bytes(resp.read())
            target = server.metrics_url.removeprefix("http://").removesuffix("/metrics")
            vllm_jobs.append(
                {
                    "job_name": f"vllm-{server.pod}",
                    "static_configs": [
                        {"targets": [target], "labels": {"namespace": server.namespace, "pod": server.pod}}
                    ],
                }
            )
        exporter_target = exporter.server.url.removeprefix("http://").removesuffix("/metrics")
        with prometheus(tmp_path, [exporter_target], extra_scrape_configs=vllm_jobs) as prom:
            prom.wait_for("vllm:cache_config_info")
            prom.wait_for('gpuattr_pod_info{model!=""}')
            prom.wait_for("count(count_over_time(vllm:kv_cache_usage_perc[1m])) >= 2")
            assert main(["--prometheus", prom.url, "--window", "1m", "--logs", str(logs), "--json"]) == 0
        budgets = {server.pod: server.budgets[0] for server in sim.vllm}
    finally:
        exporter.stop()
    rows = {r["pod"]: r for r in json.loads(capsys.readouterr().out)["split"]}
    assert set(rows) == set(budgets)
    for pod, budget in budgets.items():
        row = rows[pod]
        assert row["total_bytes"] == budget.nvml_bytes, pod
        assert row["kv_allocated_bytes"] == budget.kv_cache_memory_bytes, pod
        assert row["weights_source"] == "log"
        assert row["weights_bytes"] == pytest.approx(int(budget.spec.weights), rel=1e-3), pod
        assert row["overhead_bytes"] == pytest.approx(budget.overhead_bytes, abs=32 * 2**20), pod
        assert 0 <= row["kv_used_max_bytes"] <= row["kv_allocated_bytes"]
    eight_b = next(p for p in rows if "llama-8b" in p)
    assert rows[eight_b]["kv_idle_bytes"] > rows[eight_b]["kv_used_max_bytes"]  # mostly idle, as simulated
