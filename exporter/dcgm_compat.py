"""``--dcgm-compat``: the device series under dcgm-exporter's names, types, units and labels.

What people built on NVIDIA's dcgm-exporter (dashboards, alerts, autoscalers) keeps working against this
agent. The fields, their conversions and the generations are one table, ``common.catalog.DCGM_FIELDS``;
this module only fills it from the readings. A field whose reading is unknown is absent, never 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client.metrics_core import Metric as Family

from common import catalog as c
from exporter.readings import GpmReading, GpuReading, MigReading
from exporter.snapshot import Snapshot


class UnsuffixedCounter(Family):
    """A counter whose samples carry the family's own name, without ``_total``, as dcgm-exporter writes its
    counters (``# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter``). prometheus-client's writers would add
    ``_total`` to the TYPE line only; the exporter's renderer writes these itself (OpenMetrics requires
    ``_total`` on counter samples, so there the family is typed ``unknown``)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, "counter")
        self._labelnames = tuple(labels)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.add_sample(self.name, dict(zip(self._labelnames, labels, strict=True)), value)


class PodOnDevice(Protocol):
    """A kubelet allocation placed on a GPU (``exporter.pods.PlacedAllocation`` is one)."""

    @property
    def gpu_uuid(self) -> str: ...
    @property
    def mig_instance(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def pod(self) -> str: ...
    @property
    def container(self) -> str: ...


def _gpm(attr: str) -> Callable[[GpmReading | None], float | None]:
    return lambda gpm: None if gpm is None else getattr(gpm, attr)


def _flag(value: bool | None) -> float | None:
    return None if value is None else (1 if value else 0)


_DEVICE: dict[c.Metric, Callable[[GpuReading], float | None]] = {
    c.DCGM_SM_CLOCK: lambda g: g.sm_clock_mhz,
    c.DCGM_MEM_CLOCK: lambda g: g.memory_clock_mhz,
    c.DCGM_MEMORY_TEMP: lambda g: g.memory_temperature_celsius,
    c.DCGM_GPU_TEMP: lambda g: g.temperature_celsius,
    c.DCGM_POWER_USAGE: lambda g: g.power_watts,
    c.DCGM_TOTAL_ENERGY: lambda g: g.energy_joules,
    c.DCGM_PCIE_TX: lambda g: g.pcie_tx_bytes_per_second,
    c.DCGM_PCIE_RX: lambda g: g.pcie_rx_bytes_per_second,
    c.DCGM_PCIE_REPLAY: lambda g: g.pcie_replays_total,
    c.DCGM_GPU_UTIL: lambda g: g.utilization_ratio,
    c.DCGM_MEM_COPY_UTIL: lambda g: g.memory_controller_ratio,
    c.DCGM_ENC_UTIL: lambda g: g.encoder_ratio,
    c.DCGM_DEC_UTIL: lambda g: g.decoder_ratio,
    c.DCGM_XID_ERRORS: lambda g: g.last_xid,
    # On a MIG GPU dcgm-exporter serves the memory of each instance, not the parent's as well: summing
    # DCGM_FI_DEV_FB_USED over a node must count each byte once.
    c.DCGM_FB_FREE: lambda g: None if g.mig else _free(g.memory_total_bytes, g.memory_used_bytes),
    c.DCGM_FB_USED: lambda g: None if g.mig or g.memory_total_bytes is None else g.memory_used_bytes,
    c.DCGM_FB_RESERVED: lambda g: g.memory_reserved_bytes,
    c.DCGM_UNCORRECTABLE_REMAPPED_ROWS: lambda g: g.remapped_rows_uncorrectable,
    c.DCGM_CORRECTABLE_REMAPPED_ROWS: lambda g: g.remapped_rows_correctable,
    c.DCGM_ROW_REMAP_FAILURE: lambda g: _flag(g.row_remap_failed),
    c.DCGM_GR_ENGINE_ACTIVE: lambda g: _gpm("graphics_active")(g.gpm),
    c.DCGM_SM_ACTIVE: lambda g: _gpm("sm_active")(g.gpm),
    c.DCGM_SM_OCCUPANCY: lambda g: _gpm("sm_occupancy")(g.gpm),
    c.DCGM_TENSOR_ACTIVE: lambda g: _gpm("tensor_active")(g.gpm),
    c.DCGM_DRAM_ACTIVE: lambda g: _gpm("dram_bandwidth")(g.gpm),
}
"""Each field's reading for a whole GPU, in our unit (the catalog's ``scale`` converts it)."""

_INSTANCE: dict[c.Metric, Callable[[MigReading], float | None]] = {
    c.DCGM_FB_FREE: lambda m: _free(m.memory_total_bytes, m.memory_used_bytes),
    c.DCGM_FB_USED: lambda m: None if m.memory_total_bytes is None else m.memory_used_bytes,
    c.DCGM_GR_ENGINE_ACTIVE: lambda m: _gpm("graphics_active")(m.gpm),
    c.DCGM_SM_ACTIVE: lambda m: _gpm("sm_active")(m.gpm),
    c.DCGM_SM_OCCUPANCY: lambda m: _gpm("sm_occupancy")(m.gpm),
    c.DCGM_TENSOR_ACTIVE: lambda m: _gpm("tensor_active")(m.gpm),
    c.DCGM_DRAM_ACTIVE: lambda m: _gpm("dram_bandwidth")(m.gpm),
}
"""The fields served per MIG instance (``DcgmField.per_instance``), from the instance's own reading."""


def _free(total: int | None, used: int | None) -> int | None:
    return None if total is None or used is None else total - used


def generation_of(setting: bool | str | None) -> c.DcgmGeneration | None:
    """The generation a ``--dcgm-compat`` value selects: None when off; True means the default generation.

    ValueError names the allowed values when ``setting`` is none of them.
    """
    if setting is None or setting is False or setting == "":
        return None
    if setting is True:
        return c.dcgm_generation(c.DCGM_DEFAULT_GENERATION)
    try:
        return c.dcgm_generation(setting)
    except KeyError:
        allowed = ", ".join(g.name for g in c.DCGM_GENERATIONS)
        raise ValueError(f"unknown dcgm-exporter generation {setting!r}; use one of {allowed}") from None


def dcgm_families(
    snap: Snapshot,
    hostname: str,
    generation: c.DcgmGeneration | None = None,
    pods: Sequence[PodOnDevice] | None = None,
) -> list[Family]:
    """Device series under dcgm-exporter's names, units and labels, so its dashboards keep working.

    ``pods`` (Kubernetes mode, from the kubelet's pod-resources) adds ``namespace``, ``pod`` and ``container``
    to the series of each GPU or MIG instance allocated to a pod: one copy of the series per container
    holding it (as dcgm-exporter does with ``--kubernetes-virtual-gpus`` for shared GPUs). A GPU or instance
    no pod holds keeps one series with those labels empty. The whole-GPU series of a MIG GPU carry no pod.
    None: not in Kubernetes mode, no such labels.
    """
    gen = generation or c.dcgm_generation(c.DCGM_DEFAULT_GENERATION)
    r = snap.reading
    labelnames = [gen.host_label if n == "Hostname" else n for n in c.DCGM_LABELS]
    if pods is not None:
        labelnames += list(c.DCGM_POD_LABELS)
    holders: dict[tuple[str, str], list[list[str]]] = {}
    for p in pods or ():
        holders.setdefault((p.gpu_uuid, p.mig_instance), []).append([p.namespace, p.pod, p.container])
    fams: dict[c.Metric, Family] = {}
    for f in c.DCGM_FIELDS:
        kind, doc = f.variant(gen.name)
        m = f.metric
        fams[m] = UnsuffixedCounter(m.name, doc, labelnames) if kind is c.Kind.COUNTER else Family(m.name, doc, "gauge")

    def put(field: c.DcgmField, labels: list[str], key: tuple[str, str], value: float | None, mig: bool) -> None:
        if value is None:
            return
        if field.scale != 1.0:
            value = value * field.scale
        if field.integer:
            value = round(value)
        fam = fams[field.metric]
        if pods is None:
            copies = [labels]
        elif mig and not key[1]:
            copies = [[*labels, "", "", ""]]  # the parent of MIG instances: its pods hold instances, not it
        else:
            copies = [[*labels, *who] for who in holders.get(key, [["", "", ""]])]
        for values in copies:
            fam.add_sample(fam.name, dict(zip(labelnames, values, strict=True)), value)

    for g in r.gpus:
        if not g.up:
            continue
        base = [str(g.index), g.uuid, f"nvidia{g.index}", g.name, hostname]
        whole = [*base, "", "", r.driver_version]
        for f in c.DCGM_FIELDS:
            put(f, whole, (g.uuid, ""), _DEVICE[f.metric](g), bool(g.mig))
        for inst in g.mig:
            labels = [*base, inst.profile, str(inst.gpu_instance), r.driver_version]
            for f in c.DCGM_FIELDS:
                if f.per_instance:
                    put(f, labels, (g.uuid, str(inst.gpu_instance)), _INSTANCE[f.metric](inst), True)
    return [fam for fam in fams.values() if fam.samples]  # like dcgm-exporter, no HELP for a field without values
