"""``gpuattr review`` on the command line: flags refused naming themselves, every flag also a GPUATTR_*
variable (the command line winning), a bad variable one line naming it, an unreachable Prometheus named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from attribution.prometheus import PrometheusClient
from attribution.review import cli, main
from gpuattr.cli import main as gpuattr
from tests.peers import free_port


@pytest.fixture(autouse=True)
def _no_gpuattr_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("GPUATTR_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, small_review: dict[str, Any]) -> list[dict[str, Any]]:
    """The review's analysis replaced by one that records what it was asked (Prometheus's URL included) and
    answers ``small_review`` for that window."""
    calls: list[dict[str, Any]] = []

    def run(client: PrometheusClient, **kwargs: Any) -> dict[str, Any]:
        calls.append({"prometheus": client.url, **kwargs})
        return {**small_review, "window": kwargs["window"]}

    monkeypatch.setattr(cli, "run", run)
    return calls


@pytest.mark.slow
def test_an_unreachable_prometheus_is_named_and_the_review_fails_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--prometheus", url, "--window", "7d", "--json", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and f"{url}: no answer to alloc_h" in captured.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--price-per-gpu-hour", "nan"],
        ["--price-per-gpu-hour", "-1"],
        ["--price", "NVIDIA H100 80GB HBM3=inf"],
        ["--price", "NVIDIA H100 80GB HBM3"],
        ["--slo-itl", "inf"],
        ["--window", "7 days"],
        ["--window", "0d"],
        ["--resolution", "5 minutes"],
        ["--format", "md,pdf"],
    ],
)
def test_bad_flags_are_refused_in_one_line_naming_the_flag(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # refused before Prometheus is asked and before anything is written
    assert main(["--prometheus", "http://127.0.0.1:1", "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gpuattr review: {flags[0]}"), err
    assert not (tmp_path / "out").exists()


def test_flags_come_from_the_environment_and_the_command_line_wins(
    monkeypatch: pytest.MonkeyPatch, runs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUATTR_PROMETHEUS", "http://prometheus.example:9090")  # the one required flag
    monkeypatch.setenv("GPUATTR_JSON", "true")
    monkeypatch.setenv("GPUATTR_FORMAT", "md")
    monkeypatch.setenv("GPUATTR_PRICE", "NVIDIA H100 80GB HBM3=3.9,NVIDIA A100-SXM4-80GB=1.5")
    monkeypatch.setenv("GPUATTR_SLO_TTFT", "0.25")
    monkeypatch.setenv("GPUATTR_WINDOW", "not a duration")  # given on the command line too: unused
    assert gpuattr(["review", "--window", "1h", "--out", str(tmp_path)]) == 0
    (call,) = runs
    assert call["prometheus"] == "http://prometheus.example:9090"
    assert (call["window"], call["slo_ttft"]) == ("1h", 0.25)
    assert call["prices"] == {"NVIDIA H100 80GB HBM3": 3.9, "NVIDIA A100-SXM4-80GB": 1.5}
    assert json.loads(capsys.readouterr().out)["window"] == "1h"  # --json from the environment
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_without_the_environment_the_defaults_hold(
    runs: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--prometheus", "http://prometheus.example:9090"]) == 0
    (call,) = runs
    assert (call["window"], call["slo_ttft"], call["prices"]) == ("7d", 0.5, {})
    assert capsys.readouterr().out.startswith("# GPU capacity review, 7d from ")  # Markdown, not JSON


def test_a_bad_environment_value_is_one_line_naming_the_variable_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUATTR_HEADROOM", "lots")
    with pytest.raises(SystemExit) as exit_:
        gpuattr(["review", "--prometheus", "http://127.0.0.1:1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GPUATTR_HEADROOM" in err[0] and "'lots'" in err[0], err
    assert "Traceback" not in err[0]


def test_the_help_names_each_flags_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ("GPUATTR_PROMETHEUS", "GPUATTR_PRICE_PER_GPU_HOUR", "GPUATTR_PUSHGATEWAY", "GPUATTR_SLO_TTFT"):
        assert f"[env {name}]" in out
