"""Snapshot → metric families (prometheus-client) → the bytes a scrape serves.

Rendering happens once per sample, in the sampler thread; scrapes only copy bytes.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import exposition as text_format
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.utils import floatToGoString

from common import catalog as c
from common.families import Families, Family, family, one
from exporter.dcgm_compat import PodOnDevice, UnsuffixedCounter, dcgm_families, generation_of
from exporter.readings import DcgmKey, GpmReading, GpuReading, NodeReading
from exporter.snapshot import Snapshot

FamilySource = Callable[[], Iterable[Family]]


def families(
    snap: Snapshot,
    *,
    hostname: str = "",
    dcgm_compat: bool | str = False,
    version: str = "",
    dcgm_pods: Sequence[PodOnDevice] | None = None,
) -> list[Family]:
    """Every family the exporter serves for one snapshot.

    ``dcgm_compat``: a dcgm-exporter generation (``True``: the default one) to also serve its series;
    ``dcgm_pods``: the kubelet's allocations when it is read (Kubernetes mode), for their pod labels.
    """
    r = snap.reading
    out: list[Family] = []

    info, up = family(c.GPU_INFO), family(c.GPU_UP)
    mem_total, mem_used = family(c.GPU_MEMORY_TOTAL), family(c.GPU_MEMORY_USED)
    util, mctl = family(c.GPU_UTILIZATION), family(c.GPU_MEMORY_CONTROLLER)
    sm, occ, tensor, engine, bw = (
        family(c.GPU_SM_ACTIVE),
        family(c.GPU_SM_OCCUPANCY),
        family(c.GPU_TENSOR_ACTIVE),
        family(c.GPU_ENGINE_ACTIVE),
        family(c.GPU_MEMORY_BANDWIDTH),
    )
    fams_by_name = {f.name: f for f in (sm, occ, tensor, engine, bw)}
    power, energy, temp = family(c.GPU_POWER), family(c.GPU_ENERGY), family(c.GPU_TEMPERATURE)
    for g in r.gpus:
        ids = [str(g.index), g.uuid]
        info.add_metric([*ids, g.name, r.driver_version, "enabled" if g.mig_mode else "disabled"], 1)
        up.add_metric(ids, 1 if g.up else 0)
        if not g.up:
            continue
        if g.memory_total_bytes is not None:
            mem_total.add_metric([*ids, "", ""], g.memory_total_bytes)
        if g.memory_used_bytes is not None:
            mem_used.add_metric([*ids, "", ""], g.memory_used_bytes)
        if g.utilization_ratio is not None:
            util.add_metric(ids, g.utilization_ratio)
        if g.memory_controller_ratio is not None:
            mctl.add_metric(ids, g.memory_controller_ratio)
        _activity(fams_by_name, [*ids, "", ""], g.gpm, snap.dcgm.get(DcgmKey(g.uuid, ""), {}), g)
        if g.power_watts is not None:
            power.add_metric(ids, g.power_watts)
        if g.energy_joules is not None:
            energy.add_metric(ids, g.energy_joules)
        if g.temperature_celsius is not None:
            temp.add_metric(ids, g.temperature_celsius)
        for m in g.mig:
            mig_ids = [*ids, str(m.gpu_instance), m.profile]
            if m.memory_total_bytes is not None:
                mem_total.add_metric(mig_ids, m.memory_total_bytes)
            if m.memory_used_bytes is not None:
                mem_used.add_metric(mig_ids, m.memory_used_bytes)
            _activity(fams_by_name, mig_ids, m.gpm, snap.dcgm.get(DcgmKey(g.uuid, str(m.gpu_instance)), {}), None)
    out += [info, up, mem_total, mem_used, util, mctl, sm, occ, tensor, engine, bw, power, energy, temp]
    out += _health_families(r)
    mps_kernel, mps_clients, mps_memory = (
        family(c.GPU_MPS_KERNEL_ACTIVE),
        family(c.GPU_MPS_CLIENTS),
        family(c.GPU_MPS_SERVER_MEMORY),
    )
    for server in snap.mps:
        ids = [str(server.gpu), server.gpu_uuid]
        mps_clients.add_metric(ids, server.clients)
        if server.kernel_ratio is not None:
            mps_kernel.add_metric(ids, server.kernel_ratio)
        if server.memory_bytes is not None:
            mps_memory.add_metric(ids, server.memory_bytes)
    out += [mps_kernel, mps_clients, mps_memory]

    cmem, cproc = family(c.CONTAINER_MEMORY), family(c.CONTAINER_PROCESSES)
    ckernel, cunknown = family(c.CONTAINER_KERNEL_ACTIVE), family(c.CONTAINER_ACTIVITY_UNKNOWN)
    csm, cbw = family(c.CONTAINER_SM_ACTIVE), family(c.CONTAINER_MEMORY_BANDWIDTH)
    cocc, ctensor, cengine = (
        family(c.CONTAINER_SM_OCCUPANCY),
        family(c.CONTAINER_TENSOR_ACTIVE),
        family(c.CONTAINER_ENGINE_ACTIVE),
    )
    by_field = {
        "sm_active": csm,
        "dram_active": cbw,
        "sm_occupancy": cocc,
        "tensor_active": ctensor,
        "engine_active": cengine,
    }
    for u in snap.usages:
        o = u.owner
        labels = [
            str(u.gpu),
            u.gpu_uuid,
            u.mig_instance,
            u.mig_profile,
            o.namespace,
            o.pod,
            o.container,
            o.process,
        ]
        if u.memory_known:
            cmem.add_metric(labels, u.memory_bytes)
        cproc.add_metric(labels, u.processes)
        if u.activity_unknown:
            cunknown.add_metric([*labels, u.activity_unknown], 1)
        if u.kernel_ratio is not None:
            ckernel.add_metric([*labels, u.kernel_source], u.kernel_ratio)
        if u.sm_ratio is not None:
            csm.add_metric([*labels, u.sm_source], u.sm_ratio)
        if u.bandwidth_ratio is not None:
            cbw.add_metric([*labels, u.bandwidth_source], u.bandwidth_ratio)
        if u.engine_ratio is not None:
            cengine.add_metric([*labels, "gpm"], u.engine_ratio)
        for name, value in sorted(u.dcgm.items()):
            by_field[name].add_metric([*labels, "dcgm"], value)
    out += [cmem, cproc, ckernel, csm, cbw, cocc, ctensor, cengine, cunknown]

    out += _exporter_families(snap, version)
    generation = generation_of(dcgm_compat)
    if generation is not None:
        out += dcgm_families(snap, hostname, generation, dcgm_pods)
    return out


def _activity(
    fams: dict[str, GaugeMetricFamily | CounterMetricFamily],
    labels: list[str],
    gpm: GpmReading | None,
    dcgm: dict[str, float],
    nvml: GpuReading | None,
) -> None:
    """One value per activity series and scope, from the first source that has it: GPM, DCGM, NVML."""
    candidates: list[tuple[c.Metric, list[tuple[str, float | None]]]] = [
        (
            c.GPU_SM_ACTIVE,
            [
                ("gpm", gpm.sm_active if gpm else None),
                ("dcgm", dcgm.get("sm_active")),
                ("nvml", nvml.utilization_ratio if nvml else None),
            ],
        ),
        (
            c.GPU_MEMORY_BANDWIDTH,
            [
                ("gpm", gpm.dram_bandwidth if gpm else None),
                ("dcgm", dcgm.get("dram_active")),
                ("nvml", nvml.memory_controller_ratio if nvml else None),
            ],
        ),
        (c.GPU_SM_OCCUPANCY, [("gpm", gpm.sm_occupancy if gpm else None), ("dcgm", dcgm.get("sm_occupancy"))]),
        (c.GPU_TENSOR_ACTIVE, [("gpm", gpm.tensor_active if gpm else None), ("dcgm", dcgm.get("tensor_active"))]),
        (
            c.GPU_ENGINE_ACTIVE,
            [("gpm", gpm.graphics_active if gpm else None), ("dcgm", dcgm.get("engine_active"))],
        ),
    ]
    for metric, sources in candidates:
        for source, value in sources:
            if value is not None:
                fams[metric.family].add_metric([*labels, source], value)
                break


def _health_families(r: NodeReading) -> list[Family]:
    """Device health of each GPU that was read, each series absent where the driver gave nothing.

    XID counts are also served for a GPU that is down: the XID 79 of a GPU that fell off the bus is the
    reason it is down.
    """
    fams = {
        m.name: family(m)
        for m in (
            c.GPU_SM_CLOCK,
            c.GPU_MEMORY_CLOCK,
            c.GPU_MEMORY_TEMPERATURE,
            c.GPU_MEMORY_RESERVED,
            c.GPU_PCIE_REPLAYS,
            c.GPU_NVLINK_BYTES,
            c.GPU_REMAPPED_ROWS,
            c.GPU_ROW_REMAP_PENDING,
            c.GPU_ROW_REMAP_FAILED,
            c.GPU_XID_ERRORS,
        )
    }

    def put(metric: c.Metric, labels: list[str], value: float | None) -> None:
        if value is not None:
            fams[metric.name].add_metric(labels, value)

    for g in r.gpus:
        ids = [str(g.index), g.uuid]
        if g.xid_events_known:
            for code, count in g.xid_counts:
                put(c.GPU_XID_ERRORS, [*ids, str(code)], count)
        if not g.up:
            continue
        put(c.GPU_SM_CLOCK, ids, None if g.sm_clock_mhz is None else g.sm_clock_mhz * 1e6)
        put(c.GPU_MEMORY_CLOCK, ids, None if g.memory_clock_mhz is None else g.memory_clock_mhz * 1e6)
        put(c.GPU_MEMORY_TEMPERATURE, ids, g.memory_temperature_celsius)
        put(c.GPU_MEMORY_RESERVED, ids, g.memory_reserved_bytes)
        put(c.GPU_PCIE_REPLAYS, ids, g.pcie_replays_total)
        put(c.GPU_NVLINK_BYTES, ids, g.nvlink_bytes_total)
        put(c.GPU_REMAPPED_ROWS, [*ids, "correctable"], g.remapped_rows_correctable)
        put(c.GPU_REMAPPED_ROWS, [*ids, "uncorrectable"], g.remapped_rows_uncorrectable)
        put(c.GPU_ROW_REMAP_PENDING, ids, None if g.remapped_rows_pending is None else int(g.remapped_rows_pending))
        put(c.GPU_ROW_REMAP_FAILED, ids, None if g.row_remap_failed is None else int(g.row_remap_failed))
    return list(fams.values())


def _exporter_families(snap: Snapshot, version: str) -> list[Family]:
    r, st = snap.reading, snap.stats
    import pynvml  # already loaded by the reader; imported here only for its version string

    build = family(c.EXPORTER_BUILD_INFO)
    build.add_metric([version, str(getattr(pynvml, "__version__", "")), str(st.get("mode", ""))], 1)
    errors = family(c.EXPORTER_NVML_ERRORS)
    for (call, code), n in sorted(r.errors.items()):
        errors.add_metric([call, code], n)
    hung = family(c.EXPORTER_NVML_HUNG)
    if r.hung_call is not None:
        hung.add_metric(["", "", r.hung_call], 1)
    for g in r.gpus:
        if g.hung_call is not None:
            hung.add_metric([str(g.index), g.uuid, g.hung_call], 1)
    return [
        build,
        one(c.EXPORTER_NVML_UP, 1 if r.nvml_up else 0),
        one(c.EXPORTER_SAMPLES, st.get("samples_total", 0)),
        one(c.EXPORTER_SAMPLE_DURATION, st.get("sample_duration_seconds", 0.0)),
        one(c.EXPORTER_SAMPLE_CPU, st.get("sample_cpu_seconds_total", 0.0)),
        one(c.EXPORTER_LAST_SAMPLE, r.timestamp),
        errors,
        hung,
        one(c.EXPORTER_CLAMPED, r.clamped_total),
        one(c.EXPORTER_VANISHED, snap.vanished_total),
        one(c.EXPORTER_USAGES_DROPPED, st.get("usages_dropped_total", 0)),
    ]


_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TEXT_TYPES = {"counter": "counter", "gauge": "gauge", "info": "gauge", "stateset": "gauge", "unknown": "untyped"}


def _escape_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _plain(fam: Family) -> bool:
    """A family the fast path renders exactly: legacy names, no timestamps, exemplars or OM-only samples."""
    if fam.type not in _TEXT_TYPES or not _LEGACY_NAME.match(fam.name):
        return False
    for sample in fam.samples:
        if sample.timestamp is not None or sample.exemplar is not None or sample.native_histogram is not None:
            return False
        if not sample.name.startswith(fam.name) or sample.name.endswith(("_created", "_gsum", "_gcount")):
            return False
    names = {k for sample in fam.samples for k in sample.labels}
    return all(_LEGACY_LABEL.match(k) for k in names)


class Renderer:
    """Writes both formats; remembers each series' rendered name-and-labels between samples.

    GPU usage series keep their labels from one sample to the next, so most lines reuse the escaped
    prefix of the previous sample, and the text and OpenMetrics output share it within one.
    """

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}
        self._next: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}

    def _prefix(self, name: str, labels: dict[str, str]) -> str:
        key = (name, tuple(labels), tuple(labels.values()))
        prefix = self._next.get(key)
        if prefix is None:
            prefix = self._prefixes.get(key)
            if prefix is None:
                body = ",".join([f'{k}="{_escape_value(labels[k])}"' for k in sorted(labels)])
                prefix = f"{name}{{{body}}} " if labels else f"{name} "
            self._next[key] = prefix
        return prefix

    def _sample_lines(self, fam: Family, out: list[str]) -> None:
        for sample in fam.samples:
            out.append(f"{self._prefix(sample.name, sample.labels)}{floatToGoString(sample.value)}\n")  # type: ignore[no-untyped-call]

    def text(self, fams: Iterable[Family]) -> bytes:
        """Prometheus text format 0.0.4, byte for byte what prometheus-client writes, several times faster.

        Families the fast path cannot render exactly are handed to prometheus-client's own writer.
        """
        out: list[str] = []
        for fam in fams:
            if not _plain(fam):
                out.append(text_format.generate_latest(Families([fam])).decode())
                continue
            name = fam.name
            if not isinstance(fam, UnsuffixedCounter):
                name += "_total" if fam.type == "counter" else "_info" if fam.type == "info" else ""
            doc = fam.documentation.replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {_TEXT_TYPES[fam.type]}\n")
            self._sample_lines(fam, out)
        return "".join(out).encode()

    def openmetrics(self, fams: Iterable[Family]) -> bytes:
        """OpenMetrics 1.0.0, byte for byte what prometheus-client writes; same fallback as ``text``."""
        out: list[str] = []
        for fam in fams:
            if not _plain(fam):
                rendered = openmetrics_format.generate_latest(Families([fam]))  # type: ignore[no-untyped-call]
                out.append(rendered.decode().removesuffix("# EOF\n"))
                continue
            kind = "unknown" if isinstance(fam, UnsuffixedCounter) else fam.type  # OpenMetrics counters end in _total
            out.append(f"# HELP {fam.name} {_escape_value(fam.documentation)}\n# TYPE {fam.name} {kind}\n")
            if fam.unit:
                out.append(f"# UNIT {fam.name} {fam.unit}\n")
            self._sample_lines(fam, out)
        out.append("# EOF\n")
        return "".join(out).encode()

    def render(self, fams: Iterable[Family], timestamp: float) -> Exposition:
        fams = list(fams)
        text, om = self.text(fams), self.openmetrics(fams)
        self._prefixes, self._next = self._next, {}  # keep only the series of this sample
        return Exposition(text, om, gzip.compress(text, 1), gzip.compress(om, 1), timestamp)


def render_text(fams: Iterable[Family]) -> bytes:
    return Renderer().text(fams)


def render_openmetrics(fams: Iterable[Family]) -> bytes:
    return Renderer().openmetrics(fams)


@dataclass(frozen=True)
class Exposition:
    """The rendered bytes of one snapshot, in both formats, plain and gzip-compressed."""

    text: bytes
    openmetrics: bytes
    text_gz: bytes
    openmetrics_gz: bytes
    timestamp: float  # unix seconds of the snapshot

    TEXT_TYPE = text_format.CONTENT_TYPE_PLAIN_0_0_4  # what Prometheus 2.x expects; our names need no escaping
    OPENMETRICS_TYPE = openmetrics_format.CONTENT_TYPE_LATEST


def render(fams: Iterable[Family], timestamp: float) -> Exposition:
    return Renderer().render(fams, timestamp)
