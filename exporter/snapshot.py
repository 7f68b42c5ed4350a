"""From a node reading to usage per container: who holds which GPU, how much, how busy.

Processes are never exported one by one (no PID label): their memory and activity are summed per
(GPU or MIG instance, owner), where the owner is a Kubernetes container or, outside Kubernetes, a
command name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from exporter.readings import DcgmKey, GpuReading, NodeReading, ProcessReading


@dataclass(frozen=True, order=True)
class Owner:
    """Who a GPU process belongs to. Kubernetes fields are empty outside Kubernetes."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    process: str = ""  # command name, only for processes outside Kubernetes


class OwnerResolver(Protocol):
    def begin(self, pids: Collection[int]) -> None:
        """A sample starts; these are the PIDs NVML listed."""
        ...

    def owner(self, pid: int) -> Owner | None:
        """The owner of a host PID; None when the process is gone."""
        ...

    def prune(self, live_pids: Collection[int]) -> None:
        """Forget state kept for PIDs that no longer hold a GPU."""
        ...


class CommandNameResolver:
    """Owner = the command name, from ``<proc_root>/<pid>/comm`` or else NVML's process name."""

    def __init__(
        self,
        proc_root: str | os.PathLike[str] = "/proc",
        nvml_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self.proc_root = Path(proc_root)
        self.nvml_name = nvml_name
        self._names: dict[int, str] = {}

    def begin(self, pids: Collection[int]) -> None:
        pass

    def owner(self, pid: int) -> Owner | None:
        name = self._read_comm(pid)
        if name is None and self.nvml_name is not None:
            name = self.nvml_name(pid)
        if name is None:
            return None
        return Owner(process=name)

    def _read_comm(self, pid: int) -> str | None:
        try:
            return (self.proc_root / str(pid) / "comm").read_text(encoding="utf-8", errors="replace").strip() or None
        except OSError:
            return None

    def prune(self, live_pids: Collection[int]) -> None:
        for pid in set(self._names) - set(live_pids):
            del self._names[pid]


@dataclass
class Usage:
    """One container's (or command's) use of one GPU or MIG instance over the last interval."""

    gpu: int
    gpu_uuid: str
    mig_instance: str  # GPU-instance id as text; "" without MIG
    mig_profile: str
    owner: Owner
    memory_bytes: int = 0
    memory_known: bool = False
    processes: int = 0
    kernel_ratio: float | None = None
    """Share of the interval in which a kernel of the owner ran (time, not SMs): NVML per-process smUtil
    (``nvml``), or, for the only client of an MPS server, the server's smUtil (``mps``)."""
    kernel_source: str = "nvml"
    sm_ratio: float | None = None
    """Share of the GPU's SMs busy for the owner: the device's GPM SM activity split by kernel-time share
    (a MIG instance's own GPM for its only owner). None where the GPU has no GPM."""
    sm_source: str = "gpm"
    engine_ratio: float | None = None
    """Share of the time the graphics/compute engine was active for the owner: the device's GPM GRAPHICS_UTIL
    split by kernel-time share as ``sm_ratio`` is (a MIG instance's own for its only owner); None without GPM."""
    bandwidth_ratio: float | None = None
    bandwidth_source: str = "nvml"
    dcgm: dict[str, float] = field(default_factory=dict)
    """dcgm-exporter's profiling fields (``exporter.dcgm.FIELDS`` keys) attributed to this owner, 0..1."""
    activity_unknown: str = ""
    """Why the owner's activity is not measured this interval (all activity values then None): ``mps_shared``
    (one of several MPS clients: the driver credits all their work to the server), ``mig_shared`` (one of
    several owners of a MIG instance), ``driver`` (no per-process samples this interval); "" when measured."""

    @property
    def key(self) -> tuple[int, str, Owner]:
        return (self.gpu, self.mig_instance, self.owner)


@dataclass(frozen=True)
class MpsServer:
    """An MPS server on one GPU: not a workload, the channel its clients' kernels run through."""

    gpu: int
    gpu_uuid: str
    memory_bytes: int | None  # the server process's own usedGpuMemory
    kernel_ratio: float | None  # the server's smUtil: the share of time any client's kernel ran; None if unknown
    memory_ratio: float | None  # the server's memUtil, all clients together
    clients: int  # client processes


@dataclass
class Snapshot:
    reading: NodeReading
    usages: list[Usage]
    vanished_total: int
    stats: dict[str, float] = field(default_factory=dict)
    dcgm: Mapping[DcgmKey, dict[str, float]] = field(default_factory=dict)
    """This sample's dcgm-exporter values by GPU and MIG instance; empty when off or down."""
    mps: list[MpsServer] = field(default_factory=list)


def _add(usage: Usage, proc: ProcessReading) -> None:
    usage.processes += 1
    if proc.memory_bytes is not None:
        usage.memory_bytes += proc.memory_bytes
        usage.memory_known = True


# Which NVML per-process activity each DCGM field is split by.
DCGM_SPLIT_BY = {
    "sm_active": "sm",
    "sm_occupancy": "sm",
    "tensor_active": "sm",
    "engine_active": "sm",
    "dram_active": "mem",
}


def _shares(primary: dict[Owner, float], fallback: dict[Owner, float]) -> dict[Owner, float]:
    """Each owner's share of a device value: by ``primary`` activity, by ``fallback`` when no owner shows
    primary activity, all zero when nothing ran (the device value then stays unattributed)."""
    weights = primary if sum(primary.values()) > 0 else fallback
    total = sum(weights.values())
    return {who: (w / total if total > 0 else 0.0) for who, w in weights.items()}


def attribute(
    reading: NodeReading,
    resolver: OwnerResolver,
    dcgm: Mapping[DcgmKey, dict[str, float]] | None = None,
    mps: list[MpsServer] | None = None,
) -> tuple[list[Usage], int]:
    """Sum processes per (GPU or MIG instance, owner); returns the usages and PIDs that vanished.

    ``dcgm`` holds dcgm-exporter's device-level fields; each is split across owners by their NVML activity.
    MPS servers found on the way are appended to ``mps``: they are not owners.
    """
    dcgm = dcgm or {}
    usages: dict[tuple[int, str, Owner], Usage] = {}
    vanished = 0
    live: set[int] = set()
    owners: dict[int, Owner | None] = {}

    resolver.begin(
        {p.pid for g in reading.gpus if g.up for p in g.processes if p.role != "mps_server"}
        | {p.pid for g in reading.gpus if g.up for m in g.mig for p in m.processes}
    )

    def owner_of(pid: int) -> Owner | None:
        if pid not in owners:
            owners[pid] = resolver.owner(pid)
        return owners[pid]

    for gpu in reading.gpus:
        if not gpu.up:
            continue
        if gpu.mig_mode:
            for inst in gpu.mig:
                members: list[Usage] = []
                for proc in inst.processes:
                    live.add(proc.pid)
                    who = owner_of(proc.pid)
                    if who is None:
                        vanished += 1
                        continue
                    key = (gpu.index, str(inst.gpu_instance), who)
                    usage = usages.get(key)
                    if usage is None:
                        usage = usages[key] = Usage(gpu.index, gpu.uuid, str(inst.gpu_instance), inst.profile, who)
                        members.append(usage)
                    _add(usage, proc)
                # NVML has no per-process activity under MIG; GPM measures the instance. With one owner in
                # the instance that is exactly the owner's activity; with several it cannot be split.
                if len(members) == 1:
                    only = members[0]
                    if inst.gpm is not None:
                        only.sm_ratio, only.sm_source = inst.gpm.sm_active, "gpm"
                        only.engine_ratio = inst.gpm.graphics_active
                        only.bandwidth_ratio, only.bandwidth_source = inst.gpm.dram_bandwidth, "gpm"
                    only.dcgm = dict(dcgm.get(DcgmKey(gpu.uuid, str(inst.gpu_instance)), {}))
                elif len(members) > 1:
                    for usage in members:
                        usage.activity_unknown = "mig_shared"
            continue
        server = _attribute_full_gpu(gpu, usages, owner_of, live, dcgm.get(DcgmKey(gpu.uuid, ""), {}))
        if server is not None and mps is not None:
            mps.append(server)
        vanished += sum(1 for p in gpu.processes if p.role != "mps_server" and owners.get(p.pid, Owner()) is None)
    resolver.prune(live)
    return sorted(usages.values(), key=lambda u: (u.gpu, u.mig_instance, u.owner)), vanished


def _attribute_full_gpu(
    gpu: GpuReading,
    usages: dict[tuple[int, str, Owner], Usage],
    owner_of: Callable[[int], Owner | None],
    live: set[int],
    dcgm: dict[str, float],
) -> MpsServer | None:
    """Usage per owner on a whole GPU; the GPU's MPS server, if one runs there (it is not an owner)."""
    mine: dict[Owner, Usage] = {}
    sm: dict[Owner, float] = {}
    mem: dict[Owner, float] = {}
    clients: set[Owner] = set()
    servers = [p for p in gpu.processes if p.role == "mps_server"]
    for proc in gpu.processes:
        live.add(proc.pid)
        if proc.role == "mps_server":
            continue
        who = owner_of(proc.pid)
        if who is None:
            continue
        usage = mine.get(who)
        if usage is None:
            usage = mine[who] = usages[(gpu.index, "", who)] = Usage(gpu.index, gpu.uuid, "", "", who)
        _add(usage, proc)
        if proc.role == "mps_client":
            clients.add(who)
        sm[who] = sm.get(who, 0.0) + (proc.sm_ratio or 0.0)
        mem[who] = mem.get(who, 0.0) + (proc.mem_ratio or 0.0)
    server = _mps_server(gpu, servers, len([p for p in gpu.processes if p.role == "mps_client"]))
    if not gpu.process_activity_known:
        for usage in mine.values():
            usage.activity_unknown = "driver"
        return server  # activity unknown this interval: report none rather than a wrong zero
    kernel_source = dict.fromkeys(mine, "nvml")
    if server is not None:
        # Under MPS the driver gives every sample to the server. With one client owner, the server's time is
        # exactly that owner's; with several, nothing says how it splits: their activity is unknown.
        if len(clients) == 1:
            (only,) = clients
            sm[only] = server.kernel_ratio or 0.0
            mem[only] = server.memory_ratio or 0.0
            kernel_source[only] = "mps"
        else:
            for who in clients:
                mine[who].activity_unknown = "mps_shared"
                del sm[who], mem[who]
    device_sm = gpu.gpm.sm_active if gpu.gpm is not None else None
    device_engine = gpu.gpm.graphics_active if gpu.gpm is not None else None
    dram = gpu.gpm.dram_bandwidth if gpu.gpm is not None else None
    # Device-level measures are split by each owner's NVML activity: SM-side fields by smUtil, DRAM by
    # memUtil (each falling back to the other when no owner shows that kind of activity). An owner whose
    # activity is unknown takes no share, so when one is present the device values cannot be split.
    splittable = not any(u.activity_unknown for u in mine.values())
    by = {"sm": _shares(sm, mem), "mem": _shares(mem, sm)}
    for who, usage in mine.items():
        if usage.activity_unknown:
            continue
        usage.kernel_ratio, usage.kernel_source = min(1.0, sm[who]), kernel_source[who]
        if device_sm is not None and splittable:
            usage.sm_ratio, usage.sm_source = device_sm * by["sm"][who], "gpm"
        if device_engine is not None and splittable:
            usage.engine_ratio = device_engine * by["sm"][who]
        if dram is None:
            usage.bandwidth_ratio, usage.bandwidth_source = min(1.0, mem[who]), kernel_source[who]
        elif splittable:
            usage.bandwidth_ratio, usage.bandwidth_source = dram * by["mem"][who], "gpm"
        if splittable:
            usage.dcgm = {name: value * by[DCGM_SPLIT_BY[name]][who] for name, value in dcgm.items()}
    return server


def _mps_server(gpu: GpuReading, servers: list[ProcessReading], clients: int) -> MpsServer | None:
    if not servers:
        return None
    known = [p.memory_bytes for p in servers if p.memory_bytes is not None]
    kernel = [p.sm_ratio for p in servers if p.sm_ratio is not None]
    memory = [p.mem_ratio for p in servers if p.mem_ratio is not None]
    return MpsServer(
        gpu.index,
        gpu.uuid,
        sum(known) if known else None,
        min(1.0, sum(kernel)) if gpu.process_activity_known and kernel else None,
        min(1.0, sum(memory)) if gpu.process_activity_known and memory else None,
        clients,
    )
