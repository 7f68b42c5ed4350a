"""The example Alertmanager configuration (``deploy/alertmanager/alertmanager.yaml``): valid for Debian's
amtool, routing each severity and team to its receiver, and naming only alerts the rules generate."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
from typing import Any

import pytest
import yaml

from alerts.config import AlertConfig
from alerts.rules import alerts
from tests.deploy.conftest import DEPLOY

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yaml"
ALERT_NAMES = {alert.name for alert in alerts(AlertConfig())}
ALERTNAME_MATCHER = re.compile(r'^\s*alertname\s*(=~|!~|=|!=)\s*"([^"]*)"\s*$')


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is missing: `make test` installs Debian's prometheus-alertmanager package")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30, check=False)


def _receivers_for(**labels: str) -> list[str]:
    """The receivers amtool routes an alert with ``labels`` to."""
    result = _amtool("config", "routes", "test", f"--config.file={CONFIG}", *(f"{k}={v}" for k, v in labels.items()))
    assert result.returncode == 0, f"amtool config routes test {labels}: {result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"amtool printed no receiver for {labels}: {result.stderr}"
    return [name.strip() for name in lines[-1].split(",")]


def _config() -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    return raw


def test_amtool_accepts_the_configuration() -> None:
    result = _amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"alertname": "GpuLost", "severity": "critical"}, ["gpu-oncall-pager"]),
        ({"alertname": "GpuMemoryPressure", "severity": "critical", "team": "search"}, ["gpu-oncall-pager"]),
        ({"alertname": "GpuAllocatedButIdle", "severity": "warning", "team": "search"}, ["team-search-channel"]),
        (
            {"alertname": "GpuSharedAndSaturated", "severity": "warning", "team": "support-bot"},
            ["team-support-bot-channel"],
        ),
        ({"alertname": "GpuAllocatedButIdle", "severity": "warning", "team": "research"}, ["gpu-platform-channel"]),
        ({"alertname": "GpuAttrExporterDown", "severity": "warning"}, ["gpu-platform-channel"]),
        ({"alertname": "VllmKvCacheOversized", "severity": "info", "team": "search"}, ["gpu-weekly-digest"]),
    ],
)
def test_an_alert_is_routed_by_severity_then_team(labels: dict[str, str], receivers: list[str]) -> None:
    assert _receivers_for(**labels) == receivers


def test_every_generated_alert_reaches_the_receiver_of_its_severity() -> None:
    by_severity = {"critical": "gpu-oncall-pager", "warning": "gpu-platform-channel", "info": "gpu-weekly-digest"}
    routed = {
        alert.name: _receivers_for(alertname=alert.name, severity=alert.severity) for alert in alerts(AlertConfig())
    }
    assert routed == {alert.name: [by_severity[alert.severity]] for alert in alerts(AlertConfig())}


def test_inhibit_rules_name_only_alerts_the_rules_generate() -> None:
    named: set[str] = set()
    for rule in _config()["inhibit_rules"]:
        for matcher in rule.get("source_matchers", []) + rule.get("target_matchers", []):
            match = ALERTNAME_MATCHER.match(matcher)
            if match:
                named.update(match.group(2).split("|"))
        assert rule.get("equal"), f"an inhibit rule without `equal` silences alerts everywhere: {rule}"
    assert named, "no inhibit rule names an alert"
    assert named <= ALERT_NAMES, f"unknown alert names: {sorted(named - ALERT_NAMES)}"


def test_every_receiver_is_a_placeholder_on_example_invalid() -> None:
    for receiver in _config()["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            host = urllib.parse.urlsplit(webhook["url"]).hostname or ""
            assert host.endswith(".example.invalid"), f"{receiver['name']}: {webhook['url']}"
