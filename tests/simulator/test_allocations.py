"""The scenario's device allocations, as the kubelet's pod-resources API reports them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.resolve.podresources import PodResourcesClient
from exporter.resolve.proto import generate
from simulator.allocations import allocatable, device_ids, sim_pods
from simulator.kubelet import PodResourcesServer
from simulator.scenario import Scenario, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inference() -> Scenario:
    return load_scenario(ROOT / "scenarios" / "h100-inference-node.yaml")


@pytest.fixture(scope="module")
def mig_node() -> Scenario:
    return load_scenario(ROOT / "scenarios" / "h100-8gpu-mig-node.yaml")


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A short socket path under /tmp: AF_UNIX paths hold at most 107 bytes."""
    generate.ensure_generated()
    directory = tempfile.mkdtemp(prefix="simnode-", dir="/tmp")
    try:
        yield str(Path(directory) / "kubelet.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def devices_by_pod(scenario: Scenario) -> dict[str, list[tuple[str, list[str]]]]:
    return {f"{p.namespace}/{p.name}/{c.name}": c.devices for p in sim_pods(scenario) for c in p.containers}


def with_devices(*devices: str) -> Scenario:
    return parse_scenario(
        {
            "name": "bad",
            "gpus": [{"index": 0}, {"index": 1, "mig": [{"gi": 2, "profile": "3g.40gb"}]}],
            "pods": [
                {"namespace": "team", "name": "app-0", "containers": [{"name": "main", "devices": list(devices)}]}
            ],
        }
    )


def test_time_sliced_pods_get_replicas_of_one_gpu(inference: Scenario) -> None:
    devices = devices_by_pod(inference)
    gpu3 = inference.gpu_uuid(3)

    assert devices["llm/vllm-qwen-1-5b-7b8c9d6f5-m7qzt/vllm"] == [("nvidia.com/gpu", [f"{gpu3}::0"])]
    assert devices["llm/tgi-phi3-mini-5f6d7c8b9-q9wrt/tgi"] == [("nvidia.com/gpu", [f"{gpu3}::1"])]
    assert devices["llm/vllm-llama-8b-6d9f7c5b8-x2k4p/vllm"] == [("nvidia.com/gpu", [inference.gpu_uuid(0)])]


def test_mig_devices_map_to_mig_uuids_under_their_profile_resources(mig_node: Scenario) -> None:
    devices = devices_by_pod(mig_node)

    assert devices["llm/vllm-qwen-7b-mig-0/vllm"] == [("nvidia.com/mig-3g.40gb", [mig_node.mig_uuid(7, 1)])]
    assert devices["search/embedder-6b7d8f9c4-p2v5n/server"] == [("nvidia.com/mig-2g.20gb", [mig_node.mig_uuid(7, 5)])]
    assert devices["ml-training/pretrain-llama-1b-master-0/pytorch"] == [
        ("nvidia.com/gpu", [mig_node.gpu_uuid(i) for i in range(4)])
    ]


def test_uuids_pass_through_unchanged() -> None:
    scenario = with_devices("GPU-abc::2", "MIG-def")

    assert device_ids(scenario, scenario.pods[0].containers[0]) == ["GPU-abc::2", "MIG-def"]


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("gpu0", "expected a GPU index"),
        ("5", "GPU 5 is not defined"),
        ("mig:1:9", "no MIG GPU instance 9"),
        ("1", "MIG-enabled"),
        ("0::x", "expected a GPU index"),
    ],
)
def test_bad_device_spec_is_rejected_naming_pod_container_and_value(spec: str, why: str) -> None:
    scenario = with_devices("0", spec)

    with pytest.raises(ValueError, match=rf"team/app-0/main.*'{spec}'.*{why}"):
        sim_pods(scenario)


def test_allocatable_lists_replicas_whole_gpus_and_every_mig_instance(inference: Scenario, mig_node: Scenario) -> None:
    gpu3 = inference.gpu_uuid(3)
    assert allocatable(inference) == [
        ("nvidia.com/gpu", [*(inference.gpu_uuid(i) for i in range(3)), f"{gpu3}::0", f"{gpu3}::1"])
    ]

    mig = dict(allocatable(mig_node))
    assert mig["nvidia.com/gpu"] == [mig_node.gpu_uuid(i) for i in range(7)]
    # GI 14 is allocated to nobody: listed under its profile's resource.
    assert mig["nvidia.com/mig-1g.10gb"] == [mig_node.mig_uuid(7, 13), mig_node.mig_uuid(7, 14)]
    assert mig["nvidia.com/mig-3g.40gb"] == [mig_node.mig_uuid(7, 1)]


@pytest.mark.parametrize("name", ["inference", "mig_node"])
def test_allocations_served_by_the_simulated_kubelet_read_back_the_same(
    socket_path: str, request: pytest.FixtureRequest, name: str
) -> None:
    scenario: Scenario = request.getfixturevalue(name)
    expected: set[tuple[Any, ...]] = {
        (p.namespace, p.name, c.name, resource, device)
        for p in sim_pods(scenario)
        for c in p.containers
        for resource, ids in c.devices
        for device in ids
    }
    server = PodResourcesServer(socket_path, lambda: sim_pods(scenario), lambda: allocatable(scenario))
    server.start()
    try:
        with PodResourcesClient(socket_path, timeout_s=5.0) as client:
            got = {(a.namespace, a.pod, a.container, a.resource, a.device.raw) for a in client.list_allocations()}
            free = client.allocatable()
    finally:
        server.stop()

    assert got == expected
    assert {(resource, ref.raw) for resource, ref in free} == {
        (resource, device) for resource, ids in allocatable(scenario) for device in ids
    }


def test_time_sliced_replicas_decode_to_the_shared_gpu(socket_path: str, inference: Scenario) -> None:
    server = PodResourcesServer(socket_path, lambda: sim_pods(inference))
    server.start()
    try:
        with PodResourcesClient(socket_path, timeout_s=5.0) as client:
            shared = [a.device for a in client.list_allocations() if a.device.replica is not None]
    finally:
        server.stop()

    assert sorted((d.gpu_uuid, d.replica) for d in shared) == [(inference.gpu_uuid(3), 0), (inference.gpu_uuid(3), 1)]


def test_a_gpu_shared_as_four_replicas_is_advertised_as_four_whoever_holds_them() -> None:
    def node(gpu: dict[str, Any], devices: list[str]) -> Scenario:
        pod = {"namespace": "t", "name": "p", "containers": [{"name": "c", "devices": devices}]}
        return parse_scenario({"name": "replicas", "gpus": [{"index": 0, **gpu}], "pods": [pod]})

    one = node({"replicas": 4}, ["0::1"])
    uuid = one.gpu_uuid(0)
    assert allocatable(one) == [("nvidia.com/gpu", [f"{uuid}::{n}" for n in range(4)])]
    # without 'replicas', as many as the highest replica held implies (the shipped scenarios' behaviour)
    assert allocatable(node({}, ["0::1"])) == [("nvidia.com/gpu", [f"{uuid}::0", f"{uuid}::1"])]
    # replicas configured, none held: still advertised
    assert allocatable(node({"replicas": 2}, [])) == [("nvidia.com/gpu", [f"{uuid}::0", f"{uuid}::1"])]
    with pytest.raises(ValueError, match=r"GPU 0 has 4 replicas.*holds replica 4"):
        allocatable(node({"replicas": 4}, ["0::4"]))
    with pytest.raises(ValueError, match="'replicas' shares a whole GPU"):
        node({"replicas": 4, "mig": [{"gi": 1, "profile": "3g.40gb"}]}, [])
