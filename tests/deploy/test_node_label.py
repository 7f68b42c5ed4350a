"""The dashboards' node variable lists node names under both deployments of deploy/: the plain scrape job and
the prometheus-operator ServiceMonitor relabel a discovered exporter pod to the same node label, and that is
the label the dashboards read and filter on."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from dashboards.promql import NODE, NODE_LABEL
from tests.conftest import ROOT
from tests.deploy.conftest import DEPLOY, only, render

NODE_NAME = "gpu-node-7"
POD_ADDRESS = "10.42.3.17:9835"


def _discovered() -> dict[str, str]:
    """What Kubernetes discovery gives one exporter pod's metrics port (the labels the rules read)."""
    return {
        "__address__": POD_ADDRESS,
        "__meta_kubernetes_pod_node_name": NODE_NAME,
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "gpuattr-exporter",
        "__meta_kubernetes_pod_container_port_name": "metrics",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_name": "gpuattr-exporter-x7k2p",
        "__meta_kubernetes_namespace": "gpuattr",
    }


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabelling (replace, keep, drop, labeldrop, labelkeep), then its defaults: ``instance``
    from ``__address__`` when no rule set it, and no ``__`` labels. None: the target is dropped."""
    labels = dict(labels)
    for rule in rules:

        def get(snake: str, camel: str, default: Any, rule: dict[str, Any] = rule) -> Any:
            return rule.get(snake, rule.get(camel, default))

        action = get("action", "action", "replace")
        regex = re.compile(get("regex", "regex", "(.*)"))
        if action in ("labeldrop", "labelkeep"):
            labels = {k: v for k, v in labels.items() if bool(regex.fullmatch(k)) == (action == "labelkeep")}
            continue
        value = get("separator", "separator", ";").join(
            labels.get(s, "") for s in get("source_labels", "sourceLabels", [])
        )
        match = regex.fullmatch(value)
        if (action == "keep" and not match) or (action == "drop" and match):
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", get("replacement", "replacement", "$1"))
            target = get("target_label", "targetLabel", None)
            result = match.expand(replacement)
            if result:
                labels[target] = result
            else:
                labels.pop(target, None)
        elif action not in ("replace", "keep", "drop"):
            raise AssertionError(f"relabel action {action} not simulated here")
    labels.setdefault("instance", labels["__address__"])
    return {k: v for k, v in labels.items() if not k.startswith("__")}


def _scrape_job() -> dict[str, str] | None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    return relabel(_discovered(), job["relabel_configs"])


def _service_monitor() -> dict[str, str] | None:
    monitor = only(render(DEPLOY / "overlays" / "prometheus-operator"), "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    # what prometheus-operator's own rules set before the endpoint's (role endpoints)
    operator = {"namespace": "gpuattr", "pod": "gpuattr-exporter-x7k2p", "service": "gpuattr-exporter"}
    return relabel({**_discovered(), **operator}, endpoint["relabelings"])


def test_the_simulated_relabelling_keeps_the_address_without_a_rule() -> None:
    assert relabel(_discovered(), []) == {"instance": POD_ADDRESS}  # what the ServiceMonitor gave before


@pytest.mark.parametrize("target", [_scrape_job, _service_monitor], ids=["scrape-config", "service-monitor"])
def test_both_deployments_name_the_node_in_the_dashboards_node_label(target: Any) -> None:
    labels = target()
    assert labels is not None, "the exporter pod is not scraped"
    assert labels[NODE_LABEL] == NODE_NAME
    assert labels["node"] == NODE_NAME  # what the GpuNodeWithoutExporter alert joins on
    assert labels.keys() & {"namespace", "pod", "container"} == set()  # those name the workload, from the exporter


def test_the_two_deployments_agree_on_every_target_label() -> None:
    job, monitor = _scrape_job(), _service_monitor()
    assert job is not None and monitor is not None
    assert job == monitor


@pytest.mark.parametrize("name", ["gpuattr-node-gpu.json", "gpuattr-workload-model.json"])
def test_the_node_variable_lists_and_filters_on_that_label(name: str) -> None:
    board = json.loads((ROOT / "dashboards" / "generated" / name).read_text(encoding="utf-8"))
    (node,) = [v for v in board["templating"]["list"] if v["name"] == "node"]
    assert re.fullmatch(rf"label_values\(\w+,\s*{NODE_LABEL}\)", node["query"]), node["query"]
    assert NODE.startswith(f"{NODE_LABEL}=~")
    assert NODE in json.dumps(board).replace('\\"', '"')  # the panels filter on the same label
