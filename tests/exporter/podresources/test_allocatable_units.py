"""What the kubelet advertises per GPU (GetAllocatableResources), published as gpuattr_gpu_allocatable_units:
the simulated kubelet serves the replicas a scenario's sharing config implies; an old kubelet leaves the
series absent, logged once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from common import catalog as c
from exporter.pods import Allocations, KubeOwnerResolver, LabelKeys, PodMetadata
from exporter.readings import NodeReading
from exporter.resolve.podresources import PodResourcesClient
from exporter.resolve.procfs import ProcReader
from simulator.allocations import allocatable, sim_pods
from simulator.kubelet import PodResourcesServer
from simulator.scenario import Scenario, parse_scenario
from tests.conftest import Sim


def _scenario() -> Scenario:
    """GPU 0 time-sliced as 4 replicas of which one pod holds one; GPU 1 whole; GPU 2 two MIG instances."""
    return parse_scenario(
        {
            "name": "advertised",
            "gpus": [
                {"index": 0, "replicas": 4},
                {"index": 1},
                {"index": 2, "mig": [{"gi": 1, "profile": "3g.40gb"}, {"gi": 2, "profile": "4g.40gb"}]},
            ],
            "pods": [
                {
                    "namespace": "llm",
                    "name": "solo-0",
                    "containers": [{"name": "main", "devices": ["0::2"]}],
                },
                {
                    "namespace": "llm",
                    "name": "whole-0",
                    "containers": [{"name": "main", "devices": ["1"]}],
                },
            ],
        }
    )


@contextmanager
def _kubelet(scenario: Scenario, socket_path: str, *, unimplemented: tuple[str, ...] = ()) -> Iterator[Allocations]:
    server = PodResourcesServer(
        socket_path, lambda: sim_pods(scenario), lambda: allocatable(scenario), unimplemented=unimplemented
    )
    server.start()
    client = PodResourcesClient(socket_path, timeout_s=5.0)
    try:
        yield Allocations(client, allocatable_every=12)
    finally:
        client.close()
        server.stop()


def _units(allocations: Allocations, reading: NodeReading, tmp_path: Any) -> dict[tuple[str, ...], float]:
    """The published series, by (gpu, mig_instance, resource, sharing)."""
    metadata = PodMetadata(KubeOwnerResolver(ProcReader(tmp_path), None), None, allocations, LabelKeys())
    metadata.before_families(reading)
    (units,) = [f for f in metadata.families() if f.name == c.GPU_ALLOCATABLE.family]
    return {
        (s.labels["gpu"], s.labels["mig_instance"], s.labels["resource"], s.labels["sharing"]): s.value
        for s in units.samples
    }


def test_the_agent_publishes_the_replicas_the_kubelet_advertises_held_or_not(
    simulate: Callable[..., Sim], socket_path: str, tmp_path: Any
) -> None:
    scenario = _scenario()
    assert dict(allocatable(scenario))["nvidia.com/gpu"][:4] == [f"{scenario.gpu_uuid(0)}::{n}" for n in range(4)]
    reading = simulate(scenario).reader.read()
    with _kubelet(scenario, socket_path) as allocations:
        units = _units(allocations, reading, tmp_path)
    assert units == {
        ("0", "", "nvidia.com/gpu", "time-slicing"): 4,  # one pod holds one of four: a quarter of the GPU
        ("1", "", "nvidia.com/gpu", "exclusive"): 1,
        ("2", "1", "nvidia.com/mig-3g.40gb", "mig"): 1,
        ("2", "2", "nvidia.com/mig-4g.40gb", "mig"): 1,
    }


def test_the_advertised_set_is_asked_on_a_slower_cadence_than_the_allocations(
    simulate: Callable[..., Sim], socket_path: str
) -> None:
    scenario = _scenario()
    reading = simulate(scenario).reader.read()
    server = PodResourcesServer(socket_path, lambda: sim_pods(scenario), lambda: allocatable(scenario))
    server.start()
    try:
        with PodResourcesClient(socket_path, timeout_s=5.0) as client:
            allocations = Allocations(client, allocatable_every=12)
            for _ in range(25):
                allocations.refresh()
            assert allocations.advertised(reading)  # served from the last answer between the asks
    finally:
        server.stop()
    assert server.calls["List"] == 25
    assert server.calls["GetAllocatableResources"] == 3  # the first refresh, the 13th and the 25th


def test_the_advertised_set_is_asked_again_as_soon_as_the_kubelet_is_back(socket_path: str) -> None:
    scenario = _scenario()
    server = PodResourcesServer(socket_path, lambda: sim_pods(scenario), lambda: allocatable(scenario))
    server.start()
    try:
        with PodResourcesClient(socket_path, timeout_s=5.0) as client:
            allocations = Allocations(client, allocatable_every=12)
            allocations.refresh()
            server.stop()  # the kubelet restarts (with it, perhaps, a device plugin with other replicas)
            allocations.refresh()
            assert not allocations.up
            server.start()
            allocations.refresh()
            assert allocations.up
    finally:
        server.stop()
    assert server.calls["GetAllocatableResources"] == 2  # the first refresh and the first after the outage


def test_a_kubelet_without_get_allocatable_resources_leaves_the_series_absent_and_says_so_once(
    simulate: Callable[..., Sim], socket_path: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    scenario = _scenario()
    reading = simulate(scenario).reader.read()
    caplog.set_level(logging.INFO, logger="gpuattr.podresources")
    with _kubelet(scenario, socket_path, unimplemented=("GetAllocatableResources",)) as allocations:
        allocations.allocatable_every = 1  # asked at every sample: still logged once
        for _ in range(3):
            units = _units(allocations, reading, tmp_path)
            assert units == {}  # absent, never 0
        assert allocations.client.allocatable_supported is False
        assert allocations.up and allocations.placed(reading)  # the allocations themselves are served
    said = [r for r in caplog.records if "GetAllocatableResources unsupported" in r.getMessage()]
    assert len(said) == 1
