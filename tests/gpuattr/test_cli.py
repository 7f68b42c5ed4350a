"""The command line end to end: the demo shows per-container use; the docs are current."""

from __future__ import annotations

from pathlib import Path

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


def test_the_generators_take_their_flags_from_gpuattr_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GPUATTR_ALERTS_OUT_DIR", str(tmp_path / "rules"))
    monkeypatch.setenv("GPUATTR_DASHBOARDS_OUT_DIR", str(tmp_path / "dash"))
    monkeypatch.setenv("GPUATTR_DOCS_OUTPUT", str(tmp_path / "metrics.md"))
    assert main(["alerts"]) == 0
    assert main(["dashboards"]) == 0
    assert main(["docs"]) == 0
    assert (tmp_path / "rules" / "gpuattr-rules.yaml").is_file()
    assert sorted(p.suffix for p in (tmp_path / "dash").iterdir()) and all(
        p.suffix == ".json" for p in (tmp_path / "dash").iterdir()
    )
    assert (tmp_path / "metrics.md").read_text(encoding="utf-8") == render_metrics_doc()
    monkeypatch.setenv("GPUATTR_CHECK", "true")  # check mode from the environment: now current, so 0
    assert main(["docs"]) == 0
    (tmp_path / "metrics.md").write_text("stale\n", encoding="utf-8")
    assert main(["docs"]) == 1
    assert main(["docs", "--output", str(ROOT / "docs" / "metrics.md")]) == 0  # the flag wins over the variable


def test_a_bad_gpuattr_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUATTR_CHECK", "maybe")
    with pytest.raises(SystemExit) as exited:
        main(["alerts"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "GPUATTR_CHECK: expected true or false, got 'maybe'" in err
    assert "Traceback" not in err


def test_the_simulator_missing_from_the_agent_image_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.chdir(ROOT)
    for name in [m for m in sys.modules if m == "simulator" or m.startswith("simulator.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "simulator", None)  # as in the agent's image: not installed
    assert main(["exporter", "--simulate", "scenarios/h100-inference-node.yaml", "--run-for", "0"]) == 2
    err = capsys.readouterr().err
    assert "--simulate: the simulator is not installed here" in err
    assert "Traceback" not in err


def test_the_demo_shows_mps_clients_as_unknown_and_the_launch_bound_pod_as_busy_but_idle(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    args = ["demo", "--simulate", "scenarios/h200-mps-node.yaml", "--listen", "127.0.0.1:0", "--interval", "0.3"]
    assert main([*args, "--run-for", "0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line[:2] in ("0 ", "1 ", "2 ")}
    for client in ("search/embed-encoder-6f8b9c7d5-q2w7x/encoder", "notebooks/jupyter-carol-0/notebook"):
        assert "activity unknown: one of several MPS clients" in rows[client]
        assert "0.0%" not in rows[client]  # unknown, never shown as idle
    assert "busy but its SMs are nearly idle" in rows["risk/fraud-scorer-7d5f6c8b9-lm3tz/scorer"]
    assert "2 clients" in out  # the MPS server's own line, not a workload row
    assert not [r for r in rows if "mps-control-daemon" in r]
