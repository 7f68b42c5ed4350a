"""PodResourcesClient against a real gRPC server on a real unix socket (simulator.kubelet)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import pytest

from exporter.resolve.podresources import Allocation, DeviceRef, PodResourcesClient, PodResourcesError
from simulator.kubelet import PodResourcesServer, SimContainer, SimPod

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-11111111-2222-3333-4444-555555555555"
GPU2 = "GPU-22222222-3333-4444-5555-666666666666"
MIG_A = "MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG_B = "MIG-bbbbbbbb-cccc-dddd-eeee-ffffffffffff"

NODE_PODS = [
    # Two pods share GPU0 through time-slicing replicas.
    SimPod("ml", "trainer-0", [SimContainer("main", [("nvidia.com/gpu", [f"{GPU0}::0"])])]),
    SimPod(
        "ml",
        "trainer-1",
        [
            SimContainer(
                "main",
                [("nvidia.com/gpu", [f"{GPU0}::3"]), ("example.com/foo", ["foo-1"])],
                cpu_ids=[2, 3],
                memory=[("memory", 4 * 1024**3), ("hugepages-2Mi", 2 * 1024**2)],
            ),
            SimContainer("sidecar", [("example.com/foo", ["foo-2"])], cpu_ids=[4]),
        ],
    ),
    # Two whole GPUs in one container, nothing in the init-like helper.
    SimPod(
        "serving",
        "llm-0",
        [SimContainer("vllm", [("nvidia.com/gpu", [GPU1, GPU2])]), SimContainer("proxy", [])],
    ),
    # MIG slices of two profiles.
    SimPod(
        "team-a",
        "notebook",
        [
            SimContainer("jupyter", [("nvidia.com/mig-1g.10gb", [MIG_A])]),
            SimContainer("worker", [("nvidia.com/mig-3g.40gb", [f"{MIG_B}::7"])]),
        ],
    ),
    # A pod with no devices at all.
    SimPod("kube-system", "coredns", [SimContainer("coredns", [], cpu_ids=[0])]),
]

ALLOCATABLE = [
    ("nvidia.com/gpu", [f"{GPU0}::{n}" for n in range(4)] + [GPU1, GPU2]),
    ("nvidia.com/mig-1g.10gb", [MIG_A]),
    ("example.com/foo", ["foo-1", "foo-2"]),
]


class Node:
    """What the simulated kubelet reports; tests change it between calls."""

    def __init__(self) -> None:
        self.pods: list[SimPod] = list(NODE_PODS)

    def list_pods(self) -> Sequence[SimPod]:
        return self.pods


@pytest.fixture
def node() -> Node:
    return Node()


@pytest.fixture
def server(socket_path: str, node: Node) -> Iterator[PodResourcesServer]:
    with PodResourcesServer(socket_path, node.list_pods, lambda: ALLOCATABLE) as srv:
        yield srv


@pytest.fixture
def client(socket_path: str) -> Iterator[PodResourcesClient]:
    with PodResourcesClient(socket_path, timeout_s=5.0) as c:
        yield c


def _alloc(namespace: str, pod: str, container: str, resource: str, device_id: str) -> Allocation:
    from exporter.resolve.podresources import parse_device_id

    return Allocation(namespace, pod, container, resource, parse_device_id(device_id))


@pytest.mark.usefixtures("server")
def test_list_allocations_maps_each_containers_gpus_and_drops_other_resources(
    client: PodResourcesClient,
) -> None:
    allocations = client.list_allocations()

    assert allocations == [
        _alloc("ml", "trainer-0", "main", "nvidia.com/gpu", f"{GPU0}::0"),
        _alloc("ml", "trainer-1", "main", "nvidia.com/gpu", f"{GPU0}::3"),
        _alloc("serving", "llm-0", "vllm", "nvidia.com/gpu", GPU1),
        _alloc("serving", "llm-0", "vllm", "nvidia.com/gpu", GPU2),
        _alloc("team-a", "notebook", "jupyter", "nvidia.com/mig-1g.10gb", MIG_A),
        _alloc("team-a", "notebook", "worker", "nvidia.com/mig-3g.40gb", f"{MIG_B}::7"),
    ]


@pytest.mark.usefixtures("server")
def test_time_sliced_replicas_of_one_gpu_resolve_to_that_gpu_for_both_pods(
    client: PodResourcesClient,
) -> None:
    on_gpu0 = {(a.pod, a.device.replica) for a in client.list_allocations() if a.device.gpu_uuid == GPU0}
    assert on_gpu0 == {("trainer-0", 0), ("trainer-1", 3)}


@pytest.mark.usefixtures("server")
def test_mig_devices_carry_their_mig_uuid_and_sharing_replica(client: PodResourcesClient) -> None:
    devices = {a.container: a.device for a in client.list_allocations() if a.pod == "notebook"}
    assert devices == {
        "jupyter": DeviceRef(MIG_A, MIG_A, None, MIG_A),
        "worker": DeviceRef(MIG_B, MIG_B, 7, f"{MIG_B}::7"),
    }


@pytest.mark.usefixtures("server")
def test_resource_prefixes_select_which_resources_are_reported(socket_path: str) -> None:
    with PodResourcesClient(socket_path, resource_prefixes=("nvidia.com/mig-", "example.com/")) as c:
        resources = sorted({(a.pod, a.resource) for a in c.list_allocations()})
    assert resources == [
        ("notebook", "nvidia.com/mig-1g.10gb"),
        ("notebook", "nvidia.com/mig-3g.40gb"),
        ("trainer-1", "example.com/foo"),
    ]


def test_list_reflects_the_kubelets_current_answer(
    server: PodResourcesServer, client: PodResourcesClient, node: Node
) -> None:
    assert len(client.list_allocations()) == 6
    node.pods = [p for p in node.pods if p.name != "llm-0"]
    assert {a.pod for a in client.list_allocations()} == {"trainer-0", "trainer-1", "notebook"}
    assert server.calls["List"] == 2


def test_get_returns_the_devices_of_one_pod(server: PodResourcesServer, client: PodResourcesClient) -> None:
    allocations = client.get_pod_allocations("serving", "llm-0")

    assert [a.device.gpu_uuid for a in allocations] == [GPU1, GPU2]
    assert {(a.namespace, a.pod, a.container) for a in allocations} == {("serving", "llm-0", "vllm")}
    assert client.get_supported is True
    assert server.calls == {"List": 0, "Get": 1, "GetAllocatableResources": 0}


@pytest.mark.usefixtures("server")
def test_get_for_a_pod_the_kubelet_does_not_run_is_empty(client: PodResourcesClient) -> None:
    assert client.get_pod_allocations("serving", "gone") == []
    assert client.get_pod_allocations("ml", "llm-0") == []  # right name, wrong namespace


def test_get_falls_back_to_list_on_a_kubelet_without_get(socket_path: str) -> None:
    with (
        PodResourcesServer(socket_path, lambda: NODE_PODS, unimplemented={"Get"}) as srv,
        PodResourcesClient(socket_path) as c,
    ):
        first = c.get_pod_allocations("ml", "trainer-1")
        second = c.get_pod_allocations("ml", "trainer-1")

    assert first == second == [_alloc("ml", "trainer-1", "main", "nvidia.com/gpu", f"{GPU0}::3")]
    assert c.get_supported is False
    assert srv.calls["List"] == 2  # asked Get once, then only List


@pytest.mark.usefixtures("server")
def test_allocatable_lists_every_gpu_device_of_the_node(client: PodResourcesClient) -> None:
    allocatable = client.allocatable()

    assert [(resource, ref.raw) for resource, ref in allocatable] == [
        ("nvidia.com/gpu", f"{GPU0}::0"),
        ("nvidia.com/gpu", f"{GPU0}::1"),
        ("nvidia.com/gpu", f"{GPU0}::2"),
        ("nvidia.com/gpu", f"{GPU0}::3"),
        ("nvidia.com/gpu", GPU1),
        ("nvidia.com/gpu", GPU2),
        ("nvidia.com/mig-1g.10gb", MIG_A),
    ]
    assert {ref.gpu_uuid for _, ref in allocatable} == {GPU0, GPU1, GPU2, MIG_A}
    assert client.allocatable_supported is True


def test_allocatable_on_an_old_kubelet_is_empty_and_flagged(socket_path: str) -> None:
    with (
        PodResourcesServer(
            socket_path, lambda: NODE_PODS, lambda: ALLOCATABLE, unimplemented={"GetAllocatableResources"}
        ),
        PodResourcesClient(socket_path) as c,
    ):
        assert c.allocatable_supported is None
        assert c.allocatable() == []
        assert c.allocatable_supported is False
        assert len(c.list_allocations()) == 6  # the rest still works


def test_a_missing_socket_raises_an_error_naming_the_path_then_recovers_once_served(socket_path: str) -> None:
    with PodResourcesClient(socket_path) as c:
        with pytest.raises(PodResourcesError) as excinfo:
            c.list_allocations()
        assert socket_path in str(excinfo.value)
        assert excinfo.value.socket_path == socket_path
        assert excinfo.value.code == "UNAVAILABLE"

        with PodResourcesServer(socket_path, lambda: NODE_PODS):
            assert len(c.list_allocations()) == 6


def test_a_stopped_kubelet_raises_and_a_restarted_one_on_the_same_path_is_reached_again(
    socket_path: str, node: Node
) -> None:
    srv = PodResourcesServer(socket_path, node.list_pods)
    srv.start()
    with PodResourcesClient(socket_path) as c:
        try:
            assert len(c.list_allocations()) == 6
            srv.stop()
            assert not os.path.exists(socket_path)
            with pytest.raises(PodResourcesError, match=socket_path):
                c.list_allocations()

            node.pods = node.pods[:1]
            srv.start()
            assert [a.pod for a in c.list_allocations()] == ["trainer-0"]
        finally:
            srv.stop()


def test_a_dead_socket_left_behind_raises_unavailable_and_recovers_on_restart(socket_path: str) -> None:
    srv = PodResourcesServer(socket_path, lambda: NODE_PODS)
    srv.start()
    with PodResourcesClient(socket_path) as c:
        try:
            assert len(c.list_allocations()) == 6
            srv.stop(leave_dead_socket=True)
            assert os.path.exists(socket_path)
            with pytest.raises(PodResourcesError) as excinfo:
                c.list_allocations()
            assert excinfo.value.code == "UNAVAILABLE"
            assert socket_path in str(excinfo.value)

            srv.start()
            assert len(c.list_allocations()) == 6
        finally:
            srv.stop()


def test_a_path_that_is_not_a_socket_raises_an_error_naming_it(socket_path: str) -> None:
    with open(socket_path, "w") as f:
        f.write("not a socket")
    with (
        PodResourcesClient(socket_path) as c,
        pytest.raises(PodResourcesError, match="not a unix socket") as excinfo,
    ):
        c.list_allocations()
    assert excinfo.value.socket_path == socket_path


def test_a_failing_kubelet_answer_raises_and_the_next_good_one_is_read(socket_path: str) -> None:
    answers: list[Sequence[SimPod] | Exception] = [RuntimeError("pod cache not synced"), NODE_PODS]

    def pods() -> Sequence[SimPod]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with PodResourcesServer(socket_path, pods), PodResourcesClient(socket_path) as c:
        with pytest.raises(PodResourcesError) as excinfo:
            c.list_allocations()
        assert excinfo.value.method == "List"
        assert excinfo.value.code != "OK"
        assert len(c.list_allocations()) == 6


def test_the_simulated_kubelet_refuses_a_socket_path_too_long_for_af_unix() -> None:
    with pytest.raises(ValueError, match="107 bytes"):
        PodResourcesServer("/tmp/" + "x" * 200 + "/kubelet.sock", lambda: ())


def test_unreachable_and_reachable_are_logged_once_per_change(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gpuattr.podresources")
    with PodResourcesClient(socket_path) as c:
        for _ in range(3):
            with pytest.raises(PodResourcesError):
                c.list_allocations()
        with PodResourcesServer(socket_path, lambda: NODE_PODS):
            for _ in range(3):
                c.list_allocations()

    messages = [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records]
    assert messages == [
        ("WARNING", "kubelet pod-resources API unreachable"),
        ("INFO", "kubelet pod-resources API reachable on unix"),
    ]
