"""The scenario's /proc tree, read back by the exporter's own ProcReader."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.resolve.procfs import ProcReader
from simulator.clock import SimClock
from simulator.proc_tree import FakeProcTree
from simulator.scenario import Scenario, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["h100-inference-node.yaml", "h100-8gpu-mig-node.yaml"]

# Models the command lines (or the parent's, for a vLLM worker) tell; processes not listed tell none.
EXPECTED_MODELS = {
    41021: "meta-llama/Llama-3.1-8B-Instruct",
    71502: "Qwen/Qwen2.5-1.5B-Instruct",
    71988: "microsoft/Phi-3-mini-4k-instruct",
    40200: "llama-70b",
    40233: "llama-70b",  # VllmWorkerProc: from its parent, the vllm server in the same container
    50501: "Qwen/Qwen2.5-7B-Instruct",
}


def small_scenario(*processes: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> Scenario:
    procs = [{"name": "python", "gpus": [0], "memory": "1GiB", **p} for p in processes]
    return parse_scenario({"name": "small", "gpus": [{"index": 0}], "pods": pods or [], "processes": procs})


def pod(name: str, *, qos: str = "burstable", runtime: str = "containerd", **container: Any) -> dict[str, Any]:
    return {
        "namespace": "ns",
        "name": name,
        "qos": qos,
        "containers": [{"name": "main", "runtime": runtime, **container}],
    }


@pytest.fixture
def trees() -> Iterator[list[FakeProcTree]]:
    made: list[FakeProcTree] = []
    yield made
    for tree in made:
        tree.close()


def tree_for(trees: list[FakeProcTree], scenario: Scenario, clock: SimClock) -> FakeProcTree:
    tree = FakeProcTree(scenario, clock)
    trees.append(tree)
    tree.sync()
    return tree


@pytest.mark.parametrize("filename", SHIPPED)
def test_every_shipped_process_resolves_to_its_container_pod_and_model(
    trees: list[FakeProcTree], filename: str
) -> None:
    scenario = load_scenario(ROOT / "scenarios" / filename)
    tree = tree_for(trees, scenario, SimClock(manual=True))
    reader = ProcReader(tree.root)
    pods = {f"{p.namespace}/{p.name}/{c.name}": (p, c) for p in scenario.pods for c in p.containers}

    for proc in scenario.processes:
        identity = reader.identity(proc.pid)
        assert identity is not None, f"pid {proc.pid} is missing"
        assert proc.container is not None
        spec_pod, spec_container = pods[proc.container]
        assert identity.container is not None
        assert identity.container.container_id == scenario.container_id(spec_pod, spec_container)
        assert identity.container.pod_uid == scenario.pod_uid(spec_pod)
        assert identity.container.qos == spec_pod.qos
        assert identity.container.runtime == spec_container.runtime
        assert identity.model == EXPECTED_MODELS.get(proc.pid), f"pid {proc.pid}"


def test_process_outside_kubernetes_has_no_container(trees: list[FakeProcTree]) -> None:
    scenario = small_scenario({"pid": 900, "name": "ollama", "cmdline": ["ollama", "serve"]})
    tree = tree_for(trees, scenario, SimClock(manual=True))

    identity = ProcReader(tree.root).identity(900)

    assert identity is not None
    assert identity.container is None
    assert identity.comm == "ollama"
    assert (tree.root / "900" / "cgroup").read_text() == "0::/system.slice/ollama.service\n"


BURSTABLE = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"
BESTEFFORT = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"
GUARANTEED = "kubepods.slice/kubepods-pod{uid}.slice"  # guaranteed pods have no QoS level


@pytest.mark.parametrize(
    ("qos", "runtime", "scope"),
    [
        ("guaranteed", "cri-o", GUARANTEED + "/crio-{id}.scope"),
        ("besteffort", "docker", BESTEFFORT + "/docker-{id}.scope"),
        ("burstable", "containerd", BURSTABLE + "/cri-containerd-{id}.scope"),
    ],
)
def test_qos_and_runtime_shape_the_systemd_cgroup_path(
    trees: list[FakeProcTree], qos: str, runtime: str, scope: str
) -> None:
    scenario = small_scenario({"pid": 10, "container": "ns/p/main"}, pods=[pod("p", qos=qos, runtime=runtime)])
    tree = tree_for(trees, scenario, SimClock(manual=True))
    spec_pod = scenario.pods[0]
    container_id = scenario.container_id(spec_pod, spec_pod.containers[0])

    identity = ProcReader(tree.root).identity(10)

    uid = scenario.pod_uid(spec_pod).replace("-", "_")
    assert (tree.root / "10" / "cgroup").read_text() == "0::/" + scope.format(uid=uid, id=container_id) + "\n"
    assert identity is not None
    assert identity.container is not None
    assert (identity.container.qos, identity.container.runtime) == (qos, runtime)
    assert identity.container.container_id == container_id


def test_stat_has_the_kernels_52_fields_and_start_time_from_the_scenario(trees: list[FakeProcTree]) -> None:
    scenario = small_scenario({"pid": 77, "name": "text-generation-launcher", "start": 2.5})
    clock = SimClock(manual=True, offset=3.0)
    tree = tree_for(trees, scenario, clock)

    stat = (tree.root / "77" / "stat").read_text()
    fields = stat.split()

    assert len(fields) == 52
    assert fields[1] == "(text-generation)"  # comm keeps 15 bytes, as the kernel does
    assert fields[21] == "1250"  # 2.5 s × 100 ticks + 1000
    assert ProcReader(tree.root).start_time_ticks(77) == 1250
    assert (tree.root / "77" / "cmdline").read_bytes() == b"text-generation-launcher\0"  # argv: the full name


def test_process_whose_stop_has_passed_disappears_after_sync(trees: list[FakeProcTree]) -> None:
    scenario = small_scenario({"pid": 11, "stop": 10.0}, {"pid": 12})
    clock = SimClock(manual=True)
    tree = tree_for(trees, scenario, clock)
    reader = ProcReader(tree.root)
    assert reader.identity(11) is not None

    clock.advance(10.0)
    assert reader.identity(11) is not None  # nothing changes until the next sync
    tree.sync()

    assert reader.identity(11) is None
    assert not (tree.root / "11").exists()
    assert reader.identity(12) is not None


def test_process_starting_later_appears_only_once_the_clock_reaches_it(trees: list[FakeProcTree]) -> None:
    scenario = small_scenario({"pid": 21, "start": 30.0, "cmdline": ["vllm", "serve", "org/model"]})
    clock = SimClock(manual=True)
    tree = tree_for(trees, scenario, clock)
    reader = ProcReader(tree.root)
    assert reader.identity(21) is None

    clock.advance(29.9)
    tree.sync()
    assert reader.identity(21) is None

    clock.advance(0.1)
    tree.sync()
    identity = reader.identity(21)
    assert identity is not None
    assert identity.model == "org/model"
    assert identity.start_time_ticks == 4000


def test_worker_is_reparented_to_init_when_its_server_exits(trees: list[FakeProcTree]) -> None:
    scenario = small_scenario(
        {"pid": 31, "name": "vllm", "cmdline": ["vllm", "serve", "org/model"], "stop": 5.0, "container": "ns/p/main"},
        {"pid": 32, "name": "VllmWorkerProc", "cmdline": ["python3", "-c", "spawn"], "container": "ns/p/main"},
        pods=[pod("p")],
    )
    clock = SimClock(manual=True)
    tree = tree_for(trees, scenario, clock)
    reader = ProcReader(tree.root)
    assert (tree.root / "32" / "stat").read_text().split()[3] == "31"
    first = reader.identity(32)
    assert first is not None
    assert first.model == "org/model"

    clock.advance(5.0)
    tree.sync()

    assert (tree.root / "32" / "stat").read_text().split()[3] == "1"
    later = reader.identity(32)
    assert later is not None
    assert later.model is None
    assert later.start_time_ticks == first.start_time_ticks


def test_container_id_no_cgroup_path_can_hold_is_rejected_naming_the_container(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = small_scenario({"pid": 41, "container": "ns/p/main"}, pods=[pod("p", id="not-hex")])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    with pytest.raises(ValueError, match=r"ns/p/main.*'not-hex'"):
        FakeProcTree(scenario, SimClock(manual=True))
    assert list(tmp_path.iterdir()) == []  # no temporary root left behind


def test_close_removes_a_temporary_root_but_not_a_given_one(tmp_path: Path) -> None:
    scenario = small_scenario({"pid": 51})
    temporary = FakeProcTree(scenario, SimClock(manual=True))
    temporary.sync()
    given = FakeProcTree(scenario, SimClock(manual=True), root=tmp_path / "proc")
    given.sync()

    temporary.close()
    given.close()

    assert temporary.root.name.startswith("gpuattr-proc-")
    assert not temporary.root.exists()
    assert (tmp_path / "proc" / "51" / "stat").exists()


def test_sync_into_a_root_with_a_stale_process_directory_replaces_it(tmp_path: Path) -> None:
    stale = tmp_path / "61"
    stale.mkdir()
    (stale / "stat").write_text("61 (old) S 1 0 0\n")
    tree = FakeProcTree(small_scenario({"pid": 61}), SimClock(manual=True), root=tmp_path)

    tree.sync()

    assert (stale / "stat").read_text().startswith("61 (python) S 1 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["61"]  # no staging directories left behind
