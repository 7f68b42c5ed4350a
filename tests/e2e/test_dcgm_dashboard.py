"""--dcgm-compat against a real Prometheus: NVIDIA's official dcgm-exporter Grafana dashboard and the per-pod
queries people run on dcgm-exporter's Kubernetes mode (KEDA scalers, cost reports) answer from this agent.

The panel queries below are those of grafana/dcgm-exporter-dashboard.json in NVIDIA/dcgm-exporter (facts:
the query strings; the dashboard itself is not copied). ``$instance`` and ``$gpu`` are filled as Grafana
fills them for one node and "All" GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from common import catalog as c
from exporter.app import Exporter, build
from exporter.settings import ExporterSettings
from tests.conftest import SCENARIOS
from tests.peers import Prometheus, prometheus

# H100 80GB: 81559 MiB of framebuffer; no card in the scenarios has more
CARD_MIB = 81559


@dataclass(frozen=True)
class Panel:
    title: str
    expr: str
    plausible: Callable[[float], bool]
    unit: str


PANELS = (
    Panel(
        "GPU Temperature", 'DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"}', lambda v: 20 <= v <= 100, "°C"
    ),
    Panel(
        "GPU Avg. Temp", 'avg(DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"})', lambda v: 20 <= v <= 100, "°C"
    ),
    Panel(
        "GPU Power Usage", 'DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"}', lambda v: 0 < v <= 1000, "W"
    ),
    Panel(
        "GPU Power Total",
        'sum(DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"})',
        lambda v: 0 < v <= 8 * 1000,
        "W",
    ),
    Panel(
        "GPU SM Clocks",
        'DCGM_FI_DEV_SM_CLOCK{instance=~"$instance", gpu=~"$gpu"} * 1000000',
        lambda v: 100e6 <= v <= 3500e6,  # MHz × 10^6: hundreds to thousands of MHz, in Hz
        "Hz",
    ),
    Panel("GPU Utilization", 'DCGM_FI_DEV_GPU_UTIL{instance=~"$instance", gpu=~"$gpu"}', lambda v: 0 <= v <= 100, "%"),
    Panel(
        "GPU Framebuffer Mem Used",
        'DCGM_FI_DEV_FB_USED{instance=~"$instance", gpu=~"$gpu"}',
        lambda v: 0 <= v < CARD_MIB,
        "MiB",
    ),
    Panel(
        "Tensor Core Utilization",
        'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{instance=~"$instance", gpu=~"$gpu"}',
        lambda v: 0 <= v <= 1,
        "ratio",
    ),
)
SIMULATOR_LACKS = {
    "GPU SM Clocks": "the simulated driver gives no clocks yet (the dcgm-health branch adds them); "
    "the field's type and unit are tested in tests/exporter/test_dcgm_compat.py",
}


@dataclass
class Node:
    exporter: Exporter
    prom: Prometheus
    instance: str


@pytest.fixture(scope="module", params=["h100-inference-node.yaml", "h100-8gpu-mig-node.yaml"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = ExporterSettings(
        simulate=str(SCENARIOS / request.param),
        kubernetes=True,
        listen="127.0.0.1:0",
        interval=0.5,
        sim_start=60,
        dcgm_compat=True,
    )
    exporter = build(settings)
    exporter.start()
    try:
        instance = exporter.server.url.removeprefix("http://").removesuffix("/metrics")
        with prometheus(tmp_path_factory.mktemp("prom"), [instance]) as prom:
            assert prom.wait_for("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), prom.log_tail()
            yield Node(exporter, prom, instance)
    finally:
        exporter.stop()


def _query(node: Node, expr: str) -> list[tuple[dict[str, str], float]]:
    expr = expr.replace("$instance", node.instance).replace("$gpu", ".*")
    return [(r["metric"], float(r["value"][1])) for r in node.prom.query(expr)]


@pytest.mark.parametrize("panel", PANELS, ids=[p.title for p in PANELS])
def test_every_panel_of_nvidias_dashboard_shows_data_in_its_unit(node: Node, panel: Panel) -> None:
    rows = _query(node, panel.expr)
    if not rows and panel.title in SIMULATOR_LACKS:
        pytest.skip(SIMULATOR_LACKS[panel.title])
    assert rows, f"{panel.title}: no data for {panel.expr}"
    bad = [(labels.get("gpu"), value) for labels, value in rows if not panel.plausible(value)]
    assert not bad, f"{panel.title}: implausible values in {panel.unit}: {bad}"
    if panel.expr.startswith("DCGM_"):  # a per-GPU panel: one line per GPU (or MIG instance) of the node
        gpus = {labels["gpu"] for labels, _ in rows}
        all_gpus = {labels["gpu"] for labels, _ in _query(node, 'DCGM_FI_DEV_GPU_TEMP{instance=~"$instance"}')}
        if "UTIL" not in panel.expr:  # utilisation is N/A on a MIG GPU, as with dcgm-exporter
            assert gpus == all_gpus, panel.title
    if panel.title == "GPU Utilization":
        assert any(v > 1 for _, v in rows), "percent, not a ratio"
    if panel.title == "GPU Framebuffer Mem Used":
        assert any(v > 1024 for _, v in rows), "MiB, not GiB"


def _allocated_pods(node: Node, selector: str = "") -> set[tuple[str, str]]:
    rows = _query(node, f"{c.CONTAINER_ALLOCATED.name}{{{selector}}}")
    return {(labels["namespace"], labels["pod"]) for labels, _ in rows}


def test_a_per_pod_utilisation_query_finds_every_pod_holding_a_whole_gpu(node: Node) -> None:
    rows = _query(node, "sum by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL)")
    pods = {(labels.get("namespace", ""), labels.get("pod", "")) for labels, _ in rows}
    whole = _allocated_pods(node, 'mig_instance=""')
    assert whole, "the scenario allocates whole GPUs"
    assert whole <= pods
    assert all(0 <= value <= 100 * 8 for _, value in rows)


def test_a_keda_style_query_per_namespace_finds_each_pod_there(node: Node) -> None:
    namespaces = {ns for ns, _ in _allocated_pods(node)}
    assert namespaces
    for namespace in sorted(namespaces):
        rows = _query(node, f'avg by (pod) (DCGM_FI_PROF_SM_ACTIVE{{namespace="{namespace}"}})')
        pods = {labels["pod"] for labels, _ in rows}
        assert pods == {pod for ns, pod in _allocated_pods(node, f'namespace="{namespace}"')}, namespace
        assert all(0 <= value <= 1 for _, value in rows)
