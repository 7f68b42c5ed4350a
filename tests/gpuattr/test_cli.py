"""The command line end to end: the demo shows per-container use; the docs are current."""

from __future__ import annotations

import pytest

from gpuattr.cli import main
from gpuattr.docs import render_metrics_doc
from tests.conftest import ROOT


def test_the_demo_shows_each_pods_memory_activity_model_and_the_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["demo", "--listen", "127.0.0.1:0", "--interval", "0.3", "--run-for", "0"]) == 0
    out = capsys.readouterr().out
    usage = {tuple(line.split()[:2]): line for line in out.splitlines() if line[:2] in ("0 ", "2 ", "3 ")}
    assert "73.1 GiB" in usage[("0", "llm/vllm-llama-8b-6d9f7c5b8-x2k4p/vllm")]  # the vLLM server's reservation
    assert " 0.0%" in usage[("2", "notebooks/jupyter-alice-0/notebook")]  # the idle notebook
    assert ("3", "llm/tgi-phi3-mini-5f6d7c8b9-q9wrt/tgi") in usage  # both time-sliced pods on GPU 3
    assert ("3", "llm/vllm-qwen-1-5b-7b8c9d6f5-m7qzt/vllm") in usage
    pods = {line.split()[0]: line for line in out.splitlines() if "/" in line.split(" ", 1)[0]}
    assert "Deployment/vllm-llama-8b" in pods["llm/vllm-llama-8b-6d9f7c5b8-x2k4p"]
    assert "meta-llama/Llama-3.1-8B-Instruct" in pods["llm/vllm-llama-8b-6d9f7c5b8-x2k4p"]
    assert "experimentation" in pods["notebooks/jupyter-alice-0"]
    assert "curl -s http://127.0.0.1:" in out


def test_a_broken_scenario_exits_2_naming_the_file(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["exporter", "--simulate", "/nonexistent/scenario.yaml", "--run-for", "0"]) == 2
    assert "/nonexistent/scenario.yaml: cannot read" in capsys.readouterr().err


def test_the_committed_metric_reference_is_current() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == render_metrics_doc(), "docs/metrics.md is stale: run `gpuattr docs`"
