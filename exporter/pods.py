"""Pods on this node: which container each GPU process runs in, what each pod was allocated, and its
workload, model, class and team.

Sources: ``/proc/<pid>/cgroup`` (container and pod UID), the pod watch cache (names, owners, labels,
container specs) and the kubelet pod-resources API (allocations). None is asked per scrape; all three
degrade on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric as Family

from common import catalog as c
from common.families import family
from exporter.readings import NodeReading
from exporter.resolve.cmdline import guess_from_argv
from exporter.resolve.procfs import IdentityCache, ProcessIdentity, ProcParseError, ProcReader
from exporter.snapshot import Owner

if TYPE_CHECKING:
    from exporter.resolve.kube import PodCache, PodMeta
    from exporter.resolve.podresources import Allocation, DeviceRef, PodResourcesClient

log = logging.getLogger("gpuattr.pods")

CLASSES = ("inference", "training", "batch", "experimentation")


@dataclass(frozen=True)
class LabelKeys:
    model: str = "gpuattr.io/model"  # pod label or annotation naming the model
    workload_class: str = "gpuattr.io/workload-class"
    team: str = "team"


@dataclass
class _PodSeen:
    """What this sample learned about one GPU pod from its processes."""

    meta: PodMeta
    identities: list[ProcessIdentity] = field(default_factory=list)


class KubeOwnerResolver:
    """Owner = the Kubernetes container of a host PID; command name for everything else."""

    def __init__(
        self,
        reader: ProcReader,
        pods: PodCache | None,
        *,
        nvml_name: Callable[[int], str | None] | None = None,
    ) -> None:
        self.cache = IdentityCache(reader)
        self.reader = reader
        self.pods = pods
        self.nvml_name = nvml_name
        self.host_pids_visible = True
        self.unattributed: dict[str, int] = {}
        self.seen: dict[str, _PodSeen] = {}  # pod uid -> what its GPU processes told this sample
        self._warned_hostpid = False
        self._warned_unreadable: set[int] = set()

    def begin(self, pids: Collection[int]) -> None:
        """Start a sample: check once whether NVML's host PIDs are visible under the proc root."""
        self.unattributed = {}
        self.seen = {}
        visible = self.reader.can_see_host_pids(pids)
        if not visible and not self._warned_hostpid:
            log.warning(
                "none of the %d GPU processes NVML reports exist under %s: the exporter cannot see host PIDs "
                "(run the DaemonSet with hostPID: true and the host's /proc); reporting command names only",
                len(pids),
                self.reader.proc_root,
            )
        if visible and self._warned_hostpid:
            log.info("host PIDs are visible again under %s", self.reader.proc_root)
        self._warned_hostpid = not visible
        self.host_pids_visible = visible

    def _unattributed(self, reason: str, pid: int) -> Owner | None:
        self.unattributed[reason] = self.unattributed.get(reason, 0) + 1
        name = self.nvml_name(pid) if self.nvml_name is not None else None
        return Owner(process=name) if name else None

    def owner(self, pid: int) -> Owner | None:
        if not self.host_pids_visible:
            return self._unattributed("no_host_pid", pid)
        try:
            ident = self.cache.get(pid)
        except (ProcParseError, OSError) as exc:
            if pid not in self._warned_unreadable:
                log.warning("cannot read /proc entries of PID %d: %s", pid, exc)
                self._warned_unreadable.add(pid)
            return self._unattributed("proc_unreadable", pid)
        if ident is None:
            return None  # exited between NVML's answer and now
        ref = ident.container
        if ref is None or ref.pod_uid is None:
            return Owner(process=ident.comm)
        if self.pods is None:
            return Owner(process=ident.comm)  # Kubernetes is off: a command name is all there is to say
        meta = self.pods.get(ref.pod_uid)
        if meta is None:
            self.unattributed["pod_unknown"] = self.unattributed.get("pod_unknown", 0) + 1
            return Owner(process=ident.comm)
        container = meta.container_by_id(ref.container_id) if ref.container_id else None
        self.seen.setdefault(meta.uid, _PodSeen(meta)).identities.append(ident)
        return Owner(meta.namespace, meta.name, container.name if container else "")

    def prune(self, live_pids: Collection[int]) -> None:
        self.cache.prune(live_pids)
        self._warned_unreadable &= set(live_pids)


@dataclass(frozen=True)
class PlacedAllocation:
    """An allocation mapped to the GPU (and MIG instance) NVML knows it as."""

    gpu: int
    gpu_uuid: str
    mig_instance: str
    mig_profile: str
    namespace: str
    pod: str
    container: str
    resource: str
    sharing: str  # exclusive, time-slicing, mps, mig or mig-shared


@dataclass(frozen=True)
class AdvertisedDevice:
    """How many device IDs the kubelet advertises for one GPU or MIG instance under one resource: 1 for a
    device given whole, N for a device the device plugin shares as N replicas (time-slicing, MPS)."""

    gpu: int
    gpu_uuid: str
    mig_instance: str
    mig_profile: str
    resource: str
    sharing: str  # as PlacedAllocation's
    units: int


class _Placer:
    """Where kubelet device IDs lie on the GPUs of one reading."""

    def __init__(self, reading: NodeReading) -> None:
        self.gpus = reading.gpus
        self.by_uuid = {g.uuid: g for g in reading.gpus}
        self.by_mig = {m.uuid: (g, m) for g in reading.gpus for m in g.mig}

    def place(self, dev: DeviceRef) -> tuple[tuple[int, str, str, str], str] | None:
        """(gpu, uuid, MIG instance, profile) and the sharing mode of a device ID; None when no GPU here
        matches it."""
        for key in (dev.mig_uuid, dev.gpu_uuid):
            if key is not None and key in self.by_mig:
                gpu, mig = self.by_mig[key]
                sharing = "mig" if dev.replica is None else "mig-shared"
                return (gpu.index, gpu.uuid, str(mig.gpu_instance), mig.profile), sharing
        whole = self.by_uuid.get(dev.gpu_uuid)
        if whole is None and dev.gke_index is not None and 0 <= dev.gke_index < len(self.gpus):
            whole = self.gpus[dev.gke_index]
        if whole is None:
            return None
        sharing = "exclusive" if dev.replica is None else "mps" if whole.mps else "time-slicing"
        return (whole.index, whole.uuid, "", ""), sharing


class Allocations:
    """The kubelet's device allocations, refreshed once per sample, served as last known when it fails; and
    the devices it advertises (GetAllocatableResources), asked every ``allocatable_every`` refreshes: they
    change only when the device plugin restarts."""

    def __init__(self, client: PodResourcesClient, *, allocatable_every: int = 12) -> None:
        self.client = client
        self.up = False
        self.errors_total = 0
        self.unplaced: set[str] = set()  # device IDs no GPU on this node matches
        self.allocatable_every = max(1, allocatable_every)
        self._last: list[Allocation] = []
        self._allocatable: list[tuple[str, DeviceRef]] = []
        self._allocatable_due = 0  # refreshes until GetAllocatableResources is asked again

    def refresh(self) -> None:
        from exporter.resolve.podresources import PodResourcesError

        try:
            self._last = self.client.list_allocations()
        except PodResourcesError:
            self.errors_total += 1
            self.up = False  # the client logs the state change with the socket path
            self._allocatable_due = 0  # a kubelet back from a restart may advertise another set: ask at once
            return
        self.up = True
        self._allocatable_due -= 1
        if self._allocatable_due > 0:
            return
        try:
            # [] on a kubelet without the method: the client logs that once and sets allocatable_supported
            self._allocatable = self.client.allocatable()
        except PodResourcesError:
            self.errors_total += 1
            return  # asked again at the next refresh; the last answer is served meanwhile
        self._allocatable_due = self.allocatable_every

    def advertised(self, reading: NodeReading) -> list[AdvertisedDevice]:
        """Device IDs advertised per GPU or MIG instance, resource and sharing mode; [] when the kubelet does
        not serve GetAllocatableResources (unknown, not zero)."""
        units: dict[tuple[int, str, str, str, str, str], int] = {}
        placer = _Placer(reading)
        for resource, dev in self._allocatable:
            placed = placer.place(dev)
            if placed is None:
                continue  # a device of another plugin's naming, or of a GPU NVML does not see: not ours to count
            where, sharing = placed
            key = (*where, resource, sharing)
            units[key] = units.get(key, 0) + 1
        return [AdvertisedDevice(*key, n) for key, n in sorted(units.items())]

    def placed(self, reading: NodeReading) -> list[PlacedAllocation]:
        out: list[PlacedAllocation] = []
        unplaced: set[str] = set()
        placer = _Placer(reading)
        for a in self._last:
            placed = placer.place(a.device)
            if placed is None:
                unplaced.add(a.device.raw)
                continue
            where, sharing = placed
            out.append(PlacedAllocation(*where, a.namespace, a.pod, a.container, a.resource, sharing))
        if unplaced - self.unplaced:
            log.warning("kubelet allocations name devices NVML does not know: %s", sorted(unplaced - self.unplaced))
        self.unplaced = unplaced
        return sorted(set(out), key=lambda p: (p.gpu, p.mig_instance, p.namespace, p.pod, p.container))


class PodMetadata:
    """Renders the Kubernetes families of one sample: pod info, allocations and the sources' health."""

    def __init__(
        self,
        resolver: KubeOwnerResolver,
        pods: PodCache | None,
        allocations: Allocations | None,
        labels: LabelKeys,
    ) -> None:
        self.resolver = resolver
        self.pods = pods
        self.allocations = allocations
        self.labels = labels
        self.reading: NodeReading | None = None

    def before_families(self, reading: NodeReading) -> None:
        self.reading = reading
        if self.allocations is not None:
            self.allocations.refresh()

    def families(self) -> Iterable[Family]:
        out: list[Family] = []
        placed = self.allocations.placed(self.reading) if self.allocations and self.reading else []
        alloc = family(c.CONTAINER_ALLOCATED)
        for p in placed:
            alloc.add_metric(
                [
                    str(p.gpu),
                    p.gpu_uuid,
                    p.mig_instance,
                    p.mig_profile,
                    p.namespace,
                    p.pod,
                    p.container,
                    p.resource,
                    p.sharing,
                ],
                1,
            )
        out.append(alloc)
        units = family(c.GPU_ALLOCATABLE)
        if self.allocations is not None and self.reading is not None:
            for d in self.allocations.advertised(self.reading):
                units.add_metric(
                    [str(d.gpu), d.gpu_uuid, d.mig_instance, d.mig_profile, d.resource, d.sharing], d.units
                )
        out.append(units)

        info = family(c.POD_INFO)
        gpu_pods: dict[tuple[str, str], PodMeta | None] = {}
        for seen in self.resolver.seen.values():
            gpu_pods[(seen.meta.namespace, seen.meta.name)] = seen.meta
        if self.pods is not None:
            by_name = {(m.namespace, m.name): m for m in self.pods.pods()}
            for p in placed:
                gpu_pods.setdefault((p.namespace, p.pod), by_name.get((p.namespace, p.pod)))
        for (namespace, name), meta in sorted(gpu_pods.items()):
            if meta is None:
                continue  # allocated to a pod the watch has not delivered yet: no metadata to state
            pod_seen = self.resolver.seen.get(meta.uid)
            identities = pod_seen.identities if pod_seen else []
            info.add_metric(
                [
                    namespace,
                    name,
                    meta.workload_kind,
                    meta.workload,
                    self.model_of(meta, identities),
                    self.class_of(meta, identities),
                    meta.labels.get(self.labels.team, ""),
                ],
                1,
            )
        out.append(info)

        up_k8s = family(c.EXPORTER_KUBERNETES_UP)
        errors = family(c.EXPORTER_KUBERNETES_ERRORS)
        if self.pods is not None:
            up_k8s.add_metric([], 1 if self.pods.up else 0)
            for reason, n in sorted(self.pods.errors_total.items()):
                errors.add_metric([reason], n)
        out += [up_k8s, errors]
        if self.allocations is not None:
            up_kubelet = family(c.EXPORTER_KUBELET_UP)
            up_kubelet.add_metric([], 1 if self.allocations.up else 0)
            out.append(up_kubelet)
        visible = family(c.EXPORTER_HOST_PIDS_VISIBLE)
        visible.add_metric([], 1 if self.resolver.host_pids_visible else 0)
        unattributed = family(c.EXPORTER_UNATTRIBUTED)
        for reason in ("no_host_pid", "pod_unknown", "proc_unreadable"):
            unattributed.add_metric([reason], self.resolver.unattributed.get(reason, 0))
        out += [visible, unattributed]
        return out

    def model_of(self, meta: PodMeta, identities: list[ProcessIdentity]) -> str:
        """Label or annotation, else the pod spec's args and env, else the processes' command lines."""
        named = meta.labels.get(self.labels.model) or meta.annotations.get(self.labels.model)
        if named:
            return named
        for container in meta.containers:
            guess = guess_from_argv(container.args, container.env)
            if guess.model:
                return guess.model
        for ident in identities:
            if ident.model:
                return ident.model
        return ""

    def class_of(self, meta: PodMeta, identities: list[ProcessIdentity]) -> str:
        """Label, else what the command lines say (a server, torchrun, a notebook), else a Job is batch."""
        named = meta.labels.get(self.labels.workload_class, "").lower()
        if named in CLASSES:
            return named
        for container in meta.containers:
            guessed = guess_from_argv(container.args, container.env).workload_class
            if guessed:
                return guessed
        for ident in identities:
            if ident.workload_class:
                return ident.workload_class
        if meta.workload_kind in ("Job", "CronJob"):
            return "batch"
        return ""
