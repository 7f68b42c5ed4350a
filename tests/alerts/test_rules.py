"""The generated rule file: promtool-clean, unit-tested per alert, documented by a runbook each, current."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.config import AlertConfig, AlertConfigError, load_config
from alerts.rules import RULE_FILE, render, stale, write
from common import catalog as c

ROOT = Path(__file__).resolve().parent.parent.parent
ALERTS_DIR = ROOT / "alerts"
RULES = ALERTS_DIR / RULE_FILE
TESTS_DIR = ALERTS_DIR / "tests"
RUNBOOKS = ROOT / "docs" / "runbooks"
PROMTOOL_TIMEOUT_S = 120
"""Bound on one promtool run, in seconds (the whole unit-test suite takes a few)."""


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package, which provides it")
    return path


def _run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )


def _alert_rules(text: str) -> dict[str, dict[str, Any]]:
    """Alert name -> its rule, from a rule file's text."""
    groups = yaml.safe_load(text)["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def _generated_alerts() -> dict[str, dict[str, Any]]:
    return _alert_rules(RULES.read_text(encoding="utf-8"))


def _test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*.yaml"))


def _expectations() -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
    """Every alert_rule_test of every test file: firing expectations by alert, and alerts expected quiet."""
    firing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    quiet: set[str] = set()
    for path in _test_files():
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in group.get("alert_rule_test") or []:
                expected = case.get("exp_alerts") or []
                if expected:
                    firing[case["alertname"]].extend(expected)
                else:
                    quiet.add(case["alertname"])
    return firing, quiet


def test_promtool_check_rules_accepts_the_generated_file_without_warnings() -> None:
    result = _run_promtool("check", "rules", str(RULES.relative_to(ROOT)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output, output
    assert "warning" not in output.lower(), output


def test_every_promtool_unit_test_passes() -> None:
    files = [str(p.relative_to(ROOT)) for p in _test_files()]
    assert files, f"no promtool unit tests under {TESTS_DIR}"
    result = _run_promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_load_the_generated_rule_file_itself() -> None:
    for path in _test_files():
        rule_files = yaml.safe_load(path.read_text(encoding="utf-8"))["rule_files"]
        assert rule_files == [f"../{RULE_FILE}"], f"{path.name} must test {RULE_FILE}, not a copy"


def test_every_alert_has_a_severity_summary_description_and_runbook() -> None:
    alerts = _generated_alerts()
    assert len(alerts) >= 14
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"docs/runbooks/{name}.md", name
        assert (ROOT / annotations["runbook_url"]).is_file(), f"{name}: {annotations['runbook_url']} is missing"


def test_every_runbook_belongs_to_an_alert() -> None:
    runbooks = {p.stem for p in RUNBOOKS.glob("*.md")}
    orphans = runbooks - set(_generated_alerts())
    assert not orphans, f"runbooks without an alert: {sorted(orphans)}"


def test_runbooks_name_the_config_keys_and_command_that_tune_them() -> None:
    keys = {f.name for f in dataclasses.fields(AlertConfig)} - {"extra"}
    for name in _generated_alerts():
        text = (RUNBOOKS / f"{name}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {name}\n"), name
        assert "gpuattr alerts --config FILE" in text, name
        assert any(f"`{key}`" in text for key in keys), f"{name}: the runbook names no key of AlertConfig"


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_stays_quiet() -> None:
    firing, quiet = _expectations()
    alerts = set(_generated_alerts())
    assert alerts - set(firing) == set(), "alerts no unit test expects to fire"
    assert alerts - quiet == set(), "alerts no unit test expects to stay quiet"
    assert set(firing) | quiet <= alerts, "unit tests name alerts the rule file does not have"


def test_firing_expectations_check_severity_and_every_annotation() -> None:
    firing, _ = _expectations()
    alerts = _generated_alerts()
    for name, expected in firing.items():
        for alert in expected:
            assert alert["exp_labels"]["severity"] == alerts[name]["labels"]["severity"], name
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}, name
            assert alert["exp_annotations"]["summary"] == alerts[name]["annotations"]["summary"], name


def test_the_generated_files_are_current() -> None:
    assert stale(ALERTS_DIR, AlertConfig()) == []


def _external_names() -> set[str]:
    values = [v for k, v in vars(c.External).items() if k.isupper()]
    return {n for v in values for n in ((v,) if isinstance(v, str) else v)} - {c.External.PROMETHEUS_UP}


def test_the_rule_builders_type_no_metric_name_and_take_each_from_the_catalog() -> None:
    """Every metric name (ours, vLLM's, and vLLM's with ":" made "_" inside a recording-rule name) comes from
    ``common.catalog``, so renaming a metric there renames it in the rules."""
    names = {m.name for m in c.all_metrics()} | _external_names()
    names |= {n.replace(":", "_") for n in names}
    assert "gpuattr_container_gpu_memory_bytes" in names and "vllm_inter_token_latency_seconds" in names
    source = (ALERTS_DIR / "rules.py").read_text(encoding="utf-8")
    typed = {n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", source)}
    assert not typed, f"alerts/rules.py types {sorted(typed)}: take them from common.catalog"


def test_a_yaml_override_changes_the_generated_window_and_threshold(tmp_path: Path) -> None:
    config_file = tmp_path / "alerts.yaml"
    config_file.write_text("idle_window: 30m\nmemory_pressure_ratio: 0.9\nunderuse_min_gpus: 4\n", encoding="utf-8")
    config = load_config(config_file)
    alerts = _alert_rules(render(config)[RULE_FILE])
    assert alerts["GpuAllocatedButIdle"]["for"] == "30m"
    assert "for 30m." in alerts["GpuAllocatedButIdle"]["annotations"]["description"]
    assert "> 0.9\n" in alerts["GpuMemoryPressure"]["expr"]
    assert "(alert above 90%)" in alerts["GpuMemoryPressure"]["annotations"]["description"]
    assert ">= 4.0)" in alerts["GpuAllocationUnderusedByTeam"]["expr"]
    assert _generated_alerts()["GpuAllocatedButIdle"]["for"] == "2h", "the defaults stay as they were"


def test_an_overridden_rule_file_still_passes_promtool(tmp_path: Path) -> None:
    config_file = tmp_path / "alerts.yaml"
    config_file.write_text("idle_window: 30m\nkv_used_ratio_threshold: 0.1\nexporter_job: gpu-exporter\n")
    write(tmp_path / "out", load_config(config_file))
    result = _run_promtool("check", "rules", str(tmp_path / "out" / RULE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'up{job="gpu-exporter"} == 0' in (tmp_path / "out" / RULE_FILE).read_text(encoding="utf-8")


def test_an_unknown_key_is_refused_with_the_file_and_the_key(tmp_path: Path) -> None:
    config_file = tmp_path / "alerts.yaml"
    config_file.write_text("idle_windw: 30m\n", encoding="utf-8")
    with pytest.raises(AlertConfigError) as error:
        load_config(config_file)
    assert str(config_file) in str(error.value)
    assert "idle_windw" in str(error.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("idle_sm_threshold: high\n", "idle_sm_threshold"),
        ("idle_window: 30\n", "idle_window"),
        ("idle_memory_bytes: 1.5\n", "idle_memory_bytes"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_with_the_file_and_the_key(tmp_path: Path, line: str, key: str) -> None:
    config_file = tmp_path / "alerts.yaml"
    config_file.write_text(line, encoding="utf-8")
    with pytest.raises(AlertConfigError) as error:
        load_config(config_file)
    assert str(config_file) in str(error.value)
    assert key in str(error.value)
