"""The background sampler: read NVML, attribute, render, every interval; scrapes read the result."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric as Family

from exporter.dcgm import DcgmSource
from exporter.dcgm_compat import PodOnDevice
from exporter.nvml.reader import NvmlReader
from exporter.readings import NodeReading
from exporter.render import Exposition, Renderer, families
from exporter.snapshot import MpsServer, OwnerResolver, Snapshot, attribute

log = logging.getLogger("gpuattr.sampler")

Listener = Callable[[Snapshot, list[Family]], object]


@dataclass
class SamplerOptions:
    interval_s: float = 5.0
    hostname: str = ""
    dcgm_compat: bool | str = False
    """A dcgm-exporter generation to also serve its series under (True: the default one); off when False."""
    dcgm_pods: Callable[[NodeReading], Sequence[PodOnDevice]] | None = None
    """The kubelet's allocations placed on this sample's GPUs, for the pod labels of --dcgm-compat series."""
    version: str = ""
    mode: str = "nvml"  # "nvml" or "simulated", shown in the build-info series
    max_usages: int = 4096
    """Cardinality cap: most usage rows (GPU or MIG instance × owner) per sample."""
    before_sample: list[Callable[[], None]] = field(default_factory=list)
    """Called first in each sample (the simulated node updates its /proc tree here)."""
    before_families: list[Callable[[NodeReading], None]] = field(default_factory=list)
    """Called with the reading once processes are attributed (allocations are refreshed here)."""
    dcgm: DcgmSource | None = None
    """dcgm-exporter, read once per sample when configured."""
    extra_families: list[Callable[[], Iterable[Family]]] = field(default_factory=list)
    """Other parts (Kubernetes metadata, allocations) add their families here; called once per sample."""


class Sampler:
    def __init__(self, reader: NvmlReader, resolver: OwnerResolver, options: SamplerOptions) -> None:
        self.reader = reader
        self.resolver = resolver
        self.options = options
        self.listeners: list[Listener] = []
        self.samples_total = 0
        self.cpu_seconds_total = 0.0
        self.vanished_total = 0
        self.usages_dropped_total = 0
        self.last_duration_s = 0.0
        self._exposition: Exposition | None = None
        self._renderer = Renderer()
        self._snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def exposition(self) -> Exposition | None:
        return self._exposition

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def _dcgm_pods(self, reading: NodeReading) -> Sequence[PodOnDevice] | None:
        if self.options.dcgm_pods is None or not self.options.dcgm_compat:
            return None
        return self.options.dcgm_pods(reading)

    def sample_once(self) -> Snapshot:
        """Take one sample and publish it; never raises for a GPU or driver fault."""
        with self._lock:
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            workers0 = self.reader.worker_cpu_seconds_total
            for hook in self.options.before_sample:
                hook()
            reading = self.reader.read()
            dcgm = self.options.dcgm.read() if self.options.dcgm is not None else None
            dcgm_values = dcgm.values if dcgm is not None else {}
            mps: list[MpsServer] = []
            usages, vanished = attribute(reading, self.resolver, dcgm_values, mps)
            if len(usages) > self.options.max_usages:
                # keep the biggest holders: a runaway of tiny processes must not drown the ones that matter
                kept = sorted(usages, key=lambda u: u.memory_bytes, reverse=True)[: self.options.max_usages]
                self.usages_dropped_total += len(usages) - len(kept)
                usages = sorted(kept, key=lambda u: (u.gpu, u.mig_instance, u.owner))
            for before in self.options.before_families:
                before(reading)
            self.vanished_total += vanished
            self.samples_total += 1
            snap = Snapshot(reading, usages, self.vanished_total, dcgm=dcgm_values, mps=mps)
            snap.stats = {
                "samples_total": self.samples_total,
                "sample_duration_seconds": self.last_duration_s,
                "sample_cpu_seconds_total": self.cpu_seconds_total,
                "usages_dropped_total": self.usages_dropped_total,
                "mode": self.options.mode,  # type: ignore[dict-item]
            }
            fams = families(
                snap,
                hostname=self.options.hostname,
                dcgm_compat=self.options.dcgm_compat,
                version=self.options.version,
                dcgm_pods=self._dcgm_pods(reading),
            )
            for extra in self.options.extra_families:
                try:
                    fams.extend(extra())
                except Exception:
                    log.exception("a metadata source failed; its series are left out of this sample")
            self._exposition = self._renderer.render(fams, reading.timestamp)
            self._snapshot = snap
            self.last_duration_s = time.perf_counter() - wall0
            # NVML is read on one thread per GPU: their CPU time belongs to the sample too
            workers = self.reader.worker_cpu_seconds_total - workers0
            self.cpu_seconds_total += time.thread_time() - cpu0 + workers
        for listener in self.listeners:
            try:
                listener(snap, fams)
            except Exception:
                log.exception("a snapshot listener failed")
        return snap

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpuattr-sampler", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        interval = self.options.interval_s
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:
                log.exception("sample failed; serving the previous one")
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # fell behind: skip missed ticks instead of bursting
                next_at = now + interval - ((now - next_at) % interval)
            self._stop.wait(next_at - now)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
