"""The command line end to end: the demo shows per-container use; the docs are current."""

from __future__ import annotations

import pytest

from exporter.docs import render_metrics_doc
from gpuattr.cli import main
from tests.conftest import ROOT


def test_the_demo_shows_each_workloads_memory_activity_and_the_url(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["demo", "--listen", "127.0.0.1:0", "--interval", "0.3", "--run-for", "0"]) == 0
    out = capsys.readouterr().out
    assert "text-generation-launcher" in out and "(process) vllm" in out
    rows = {line.split()[0] + " " + line.split()[2]: line for line in out.splitlines() if line.startswith(("0 ", "2 ")) and "(process)" in line}
    assert "72.3 GiB" in rows["0 vllm"]  # the vLLM server's reservation
    assert " 0.0%" in rows["2 python"]  # the idle notebook
    assert "curl -s http://127.0.0.1:" in out


def test_a_broken_scenario_exits_2_naming_the_file(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    assert main(["exporter", "--simulate", "/nonexistent/scenario.yaml", "--run-for", "0"]) == 2
    assert "/nonexistent/scenario.yaml: cannot read" in capsys.readouterr().err


def test_the_committed_metric_reference_is_current() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == render_metrics_doc(), "docs/metrics.md is stale: run `gpuattr docs`"
