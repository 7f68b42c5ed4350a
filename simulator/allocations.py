"""The kubelet's device allocations of a scenario, as the NVIDIA device plugin names the devices.

Scenario device specs are short (``"0"``, ``"3::1"``, ``"mig:7:1"``); the kubelet reports what the device
plugin advertised: GPU UUIDs, ``<GPU uuid>::<replica>`` for time-sliced replicas, MIG UUIDs (mixed
strategy, one resource per MIG profile).
"""

from __future__ import annotations

import re

from simulator.kubelet import SimContainer, SimPod
from simulator.scenario import ContainerSpec, PodSpec, Scenario

__all__ = ["allocatable", "device_ids", "sim_pods"]

GPU_RESOURCE = "nvidia.com/gpu"
_INDEX = re.compile(r"[0-9]{1,9}")
_REPLICA = re.compile(r"([0-9]{1,9})::([0-9]{1,9})")
_MIG = re.compile(r"mig:([0-9]{1,9}):([0-9]{1,9})")
_UUID_REPLICA = re.compile(r"(GPU-[^:]+)::([0-9]{1,9})")


def _pod_of(scenario: Scenario, container: ContainerSpec) -> PodSpec | None:
    for pod in scenario.pods:
        if any(c is container for c in pod.containers):
            return pod
    for pod in scenario.pods:
        if container in pod.containers:
            return pod
    return None


def _device_id(scenario: Scenario, spec: str, where: str) -> str:
    def bad(why: str) -> ValueError:
        return ValueError(f"container {where}: device {spec!r}: {why}")

    def gpu(index_text: str) -> int:
        index = int(index_text)
        if index >= len(scenario.gpus):
            raise bad(f"GPU {index} is not defined (the scenario has GPUs 0..{len(scenario.gpus) - 1})")
        return index

    if spec.startswith(("GPU-", "MIG-")):
        return spec
    if _INDEX.fullmatch(spec):
        index = gpu(spec)
        if scenario.gpus[index].mig:
            raise bad(f"GPU {index} is MIG-enabled; allocate one of its instances as 'mig:{index}:<gi>'")
        return scenario.gpu_uuid(index)
    if m := _REPLICA.fullmatch(spec):
        index = gpu(m.group(1))
        if scenario.gpus[index].mig:
            raise bad(f"GPU {index} is MIG-enabled; allocate one of its instances as 'mig:{index}:<gi>'")
        return f"{scenario.gpu_uuid(index)}::{int(m.group(2))}"
    if m := _MIG.fullmatch(spec):
        index, gi = gpu(m.group(1)), int(m.group(2))
        if scenario.gpus[index].mig_instance(gi) is None:
            raise bad(f"GPU {index} has no MIG GPU instance {gi}")
        return scenario.mig_uuid(index, gi)
    raise bad("expected a GPU index ('0'), '<index>::<replica>', 'mig:<index>:<gi>', or a GPU-/MIG- UUID")


def device_ids(scenario: Scenario, container: ContainerSpec, *, pod: PodSpec | None = None) -> list[str]:
    """The device plugin's IDs of ``container``'s devices; ValueError naming pod, container and value.

    ``pod``: the container's pod, for error messages; looked up in the scenario when None.
    """
    owner = pod if pod is not None else _pod_of(scenario, container)
    where = f"{owner.namespace}/{owner.name}/{container.name}" if owner is not None else container.name
    return [_device_id(scenario, spec, where) for spec in container.devices]


def sim_pods(scenario: Scenario, at: float | None = None) -> list[SimPod]:
    """The scenario's pods for :class:`simulator.kubelet.PodResourcesServer`, with each container's
    (resource, device IDs); a container without devices has none. ``at``: only pods alive at that scenario
    second; every pod when None."""
    return [
        SimPod(
            namespace=pod.namespace,
            name=pod.name,
            containers=[
                SimContainer(
                    name=container.name,
                    devices=(
                        [(container.resource, device_ids(scenario, container, pod=pod))] if container.devices else []
                    ),
                )
                for container in pod.containers
            ],
        )
        for pod in scenario.pods
        if at is None or pod.alive(at)
    ]


def allocatable(scenario: Scenario) -> list[tuple[str, list[str]]]:
    """``(resource, device IDs)`` the node can allocate, used or not.

    Each GPU without MIG under ``nvidia.com/gpu``: its UUID, or, on a GPU shared by time-slicing or MPS, its
    replicas ``<uuid>::0`` to ``<uuid>::N-1`` (the device plugin advertises replicas instead of the GPU when
    sharing is on), N the GPU's ``replicas`` or else one more than the highest replica a container holds,
    under the resource of the first container holding one (``nvidia.com/gpu.shared`` when the plugin renames
    shared GPUs). Each MIG instance under the resource of the container allocated it, else under
    ``nvidia.com/mig-<profile>``. ValueError when a container holds a replica beyond the GPU's ``replicas``.
    """
    replicas: dict[str, int] = {}  # GPU uuid → highest replica index allocated
    replica_resource: dict[str, str] = {}  # GPU uuid → resource of the first container holding a replica
    mig_resource: dict[str, str] = {}  # MIG uuid → resource of the container holding it
    for pod in scenario.pods:
        for container in pod.containers:
            for device in device_ids(scenario, container, pod=pod):
                if m := _UUID_REPLICA.fullmatch(device):
                    replicas[m.group(1)] = max(replicas.get(m.group(1), 0), int(m.group(2)))
                    replica_resource.setdefault(m.group(1), container.resource)
                elif device.startswith("MIG-"):
                    mig_resource.setdefault(device, container.resource)
    gpus: list[str] = []
    by_resource: dict[str, list[str]] = {}
    for gpu in scenario.gpus:
        if gpu.mig:
            for inst in gpu.mig:
                mig = scenario.mig_uuid(gpu.index, inst.gi)
                resource = mig_resource.get(mig, f"nvidia.com/mig-{inst.profile}")
                by_resource.setdefault(resource, []).append(mig)
            continue
        uuid = scenario.gpu_uuid(gpu.index)
        if gpu.replicas is not None and replicas.get(uuid, -1) >= gpu.replicas:
            raise ValueError(
                f"GPU {gpu.index} has {gpu.replicas} replicas (<uuid>::0 to ::{gpu.replicas - 1}); a container "
                f"holds replica {replicas[uuid]}"
            )
        if uuid in replicas or gpu.replicas is not None:
            count = gpu.replicas if gpu.replicas is not None else replicas[uuid] + 1
            shared = [f"{uuid}::{n}" for n in range(count)]
            resource = replica_resource.get(uuid, GPU_RESOURCE)
            (gpus if resource == GPU_RESOURCE else by_resource.setdefault(resource, [])).extend(shared)
        else:
            gpus.append(uuid)
    result: list[tuple[str, list[str]]] = [(GPU_RESOURCE, gpus)] if gpus else []
    result.extend(sorted(by_resource.items()))
    return result
