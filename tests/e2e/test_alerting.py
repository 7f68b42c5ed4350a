"""End to end alert delivery: simulated node → exporter → Prometheus evaluating the generated rules (short
windows) → Alertmanager → a webhook receiver in this test, for an idle notebook that later gets to work."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.config import AlertConfig
from alerts.rules import RULE_FILE, render
from exporter.app import build
from exporter.settings import ExporterSettings
from tests.conftest import SCENARIOS
from tests.peers import Alertmanager, Prometheus, alertmanager, prometheus

NOTEBOOK = ("notebooks", "jupyter-alice-0", "notebook")  # namespace, pod, container (GPU 2 in the scenario)
NOTEBOOK_PID = 60877
SIM_START_S = 60.0  # scenario second the exporter starts at: every memory ramp has settled
SIM_SPEED = 2.0  # scenario seconds per real second
ACTIVE_AFTER_S = 30.0  # real seconds after the exporter starts at which the notebook starts computing
ACTIVE_AT_S = SIM_START_S + ACTIVE_AFTER_S * SIM_SPEED  # the same instant in scenario seconds
RESOLVE_WITHIN_S = 20.0  # real seconds after that by which the resolved notification must have arrived
SLOW_UNDERUSE = ("GpuAllocationUnderusedByNamespace", "GpuAllocationUnderusedByTeam")  # `for: 1h`, not configurable
RUNBOOKS = "https://runbooks.example.invalid/gpuattr"

# Every window short, so that a rule that misfires on this node would fire within the test too.
CONFIG = AlertConfig(
    runbook_base_url=RUNBOOKS,
    exporter_job="gpuattr",  # the job tests.peers.prometheus scrapes: else GpuAttrExporterMissing sees no exporter
    idle_window="6s",
    idle_memory_bytes=2**30,
    kv_bloat_for="6s",
    interference_for="6s",
    memory_pressure_for="6s",
    exporter_for="6s",
    rule_interval="1s",
)


class Webhook:
    """An Alertmanager webhook receiver on loopback that keeps every payload POSTed to it."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.payloads.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def received(self) -> list[dict[str, Any]]:
        """Every alert of every payload so far, in arrival order."""
        with self.lock:
            return [alert for payload in self.payloads for alert in payload["alerts"]]


@contextmanager
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        thread.join(10)


def _scenario(tmp_path: Path) -> Path:
    """The inference node, whose notebook idles on GPU 2 until ``ACTIVE_AT_S`` and then computes."""
    raw = yaml.safe_load((SCENARIOS / "h100-inference-node.yaml").read_text())
    (notebook,) = [proc for proc in raw["processes"] if proc["pid"] == NOTEBOOK_PID]
    assert notebook["container"] == "/".join(NOTEBOOK)
    notebook["sm"] = {"points": [[0, 0], [ACTIVE_AT_S, 0], [ACTIVE_AT_S + 0.001, 0.6]]}
    path = tmp_path / "notebook-wakes-up.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _alertmanager_config(receiver_url: str) -> dict[str, Any]:
    return {
        "global": {"resolve_timeout": "10s"},
        "route": {
            "receiver": "test-webhook",
            "group_by": ["alertname", "namespace", "pod"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test-webhook", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}],
    }


def _is_notebook_idle(alert: dict[str, Any]) -> bool:
    labels = alert["labels"]
    return (
        labels.get("alertname") == "GpuAllocatedButIdle"
        and (
            labels.get("namespace"),
            labels.get("pod"),
            labels.get("container"),
        )
        == NOTEBOOK
    )


def _await(
    what: str, deadline: float, found: Callable[[], dict[str, Any] | None], report: Callable[[], str]
) -> dict[str, Any]:
    """Poll ``found`` until it returns an alert; past ``deadline`` (monotonic) fail with ``report()``."""
    while True:
        alert = found()
        if alert is not None:
            return alert
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{report()}")
        time.sleep(0.25)


def _report(prom: Prometheus, am: Alertmanager, hook: Webhook) -> Callable[[], str]:
    def report() -> str:
        try:
            alerts = json.dumps(prom.alerts(), indent=1)
        except Exception as exc:  # diagnostics must not hide the failure they describe
            alerts = f"(cannot read: {exc})"
        return (
            f"Prometheus /api/v1/alerts:\n{alerts}\n"
            f"webhook received:\n{json.dumps(hook.received(), indent=1)}\n"
            f"Alertmanager log (tail):\n{am.log_tail()}\n"
            f"Prometheus log (tail):\n{prom.log_tail()[-1500:]}"
        )

    return report


@pytest.mark.slow
def test_an_idle_notebook_alerts_through_alertmanager_and_resolves_when_it_starts_computing(tmp_path: Path) -> None:
    rules = tmp_path / RULE_FILE
    rules.write_text(render(CONFIG)[RULE_FILE])
    with webhook() as hook, alertmanager(tmp_path, _alertmanager_config(hook.url)) as am:
        started = time.monotonic()  # the simulated clock starts inside build(): scenario second SIM_START_S
        exporter = build(
            ExporterSettings(
                simulate=str(_scenario(tmp_path)),
                kubernetes=True,
                listen="127.0.0.1:0",
                interval=0.5,
                sim_start=SIM_START_S,
                sim_speed=SIM_SPEED,
            )
        )
        try:
            exporter.start()
            target = exporter.server.url.removeprefix("http://").removesuffix("/metrics")
            with prometheus(
                tmp_path, [target], scrape_interval="1s", rule_files=[rules], alertmanagers=[am.target]
            ) as prom:
                report = _report(prom, am, hook)

                def notebook(status: str) -> Callable[[], dict[str, Any] | None]:
                    return lambda: next(
                        (a for a in hook.received() if _is_notebook_idle(a) and a["status"] == status), None
                    )

                firing = _await("the firing notification", started + ACTIVE_AFTER_S, notebook("firing"), report)
                assert not notebook("resolved")(), "resolved before the notebook started computing\n" + report()

                labels, annotations = firing["labels"], firing["annotations"]
                assert labels["gpu"] == "2"
                assert labels["gpu_uuid"].startswith("GPU-")
                assert labels["severity"] == "warning"
                assert annotations["summary"] == "A container holds a GPU it does not use."
                description = annotations["description"]
                assert "notebooks/jupyter-alice-0" in description
                assert "container notebook" in description
                assert f"GPU 2 ({labels['gpu_uuid']})" in description
                assert "22GiB" in description  # the memory it holds, humanized
                assert annotations["runbook_url"] == f"{RUNBOOKS}/GpuAllocatedButIdle.md"

                resolved = _await(
                    "the resolved notification after the notebook started computing",
                    started + ACTIVE_AFTER_S + RESOLVE_WITHIN_S,
                    notebook("resolved"),
                    report,
                )
                assert time.monotonic() - started >= ACTIVE_AFTER_S, "resolved before the notebook computed"
                assert resolved["labels"] == labels
                assert resolved["endsAt"] >= resolved["startsAt"]

                # Only the notebook alerted: every other pod of the node computes, nothing else is wrong.
                sent = {(a["labels"]["alertname"], a["labels"].get("pod")) for a in hook.received()}
                assert sent == {("GpuAllocatedButIdle", "jupyter-alice-0")}, report()
                # Under-use may be pending (its `for` is a fixed hour); nothing else even is.
                still = {(a["labels"]["alertname"], a["state"]) for a in prom.alerts()}
                assert still <= {(name, "pending") for name in SLOW_UNDERUSE}, report()
        finally:
            exporter.stop()
