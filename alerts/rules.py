"""Recording and alerting rules for idle, bloated and interfering GPU workloads, built from the catalog.

``gpuattr alerts`` writes ``alerts/gpuattr-rules.yaml`` (a plain Prometheus rule file) and
``alerts/prometheusrule.yaml`` (the same groups as a prometheus-operator PrometheusRule); CI fails when
they are stale. Every alert carries ``severity``, a static ``summary``, a templated ``description`` that
names the pod, model, GPU and the numbers, and a ``runbook_url`` to ``docs/runbooks/<alert>.md``.

``alerts`` composes one builder per family (waste, vLLM, saturation, capacity review, the exporter's own
health, GPU health, the exporter's other sources, the attribution job's and review's own health) into one
group, in the order of the generated files.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alerts.config import AlertConfig
from common import catalog as c
from common.units import parse_duration

RULE_FILE = "gpuattr-rules.yaml"
OPERATOR_FILE = "prometheusrule.yaml"

# Recording rules (level:metric:operations) -------------------------------------------------------------
# Dashboards read these names too (``alerts.rules as r``). The metric part of a name is the metric's own
# (a vLLM one with ":" made "_"); the held, active-pods and KV-used ones exist only as recording rules.
MEM_POD = f"namespace_pod:{c.CONTAINER_MEMORY.name}:sum"
MEM_NAMESPACE = f"namespace:{c.CONTAINER_MEMORY.name}:sum"
MEM_MODEL = f"model:{c.CONTAINER_MEMORY.name}:sum"
# "GPUs' worth used" is kernel time (the one measure every GPU gives, MPS and MIG included); the SM-activity
# rules below say how much of the SMs that time used.
SM_POD = f"namespace_pod:{c.CONTAINER_KERNEL_ACTIVE.name}:sum"
SM_NAMESPACE = f"namespace:{c.CONTAINER_KERNEL_ACTIVE.name}:sum"
SM_MODEL = f"model:{c.CONTAINER_KERNEL_ACTIVE.name}:sum"
SM_TEAM = f"team:{c.CONTAINER_KERNEL_ACTIVE.name}:sum"
SMS_POD = f"namespace_pod:{c.CONTAINER_SM_ACTIVE.name}:sum"
SM_PER_KERNEL = "namespace_pod_container_gpu:gpuattr_container_gpu_sm_per_kernel_time:ratio"
ALLOC_POD = f"namespace_pod:{c.CONTAINER_ALLOCATED.name}:sum"
ALLOC_NAMESPACE = f"namespace:{c.CONTAINER_ALLOCATED.name}:sum"
ALLOC_TEAM = f"team:{c.CONTAINER_ALLOCATED.name}:sum"
HELD = "namespace_pod_container:gpuattr_gpu_held_bytes:max"
ACTIVE_PODS = "gpu:gpuattr_active_pods:count"
VLLM_SPLIT = f"namespace_pod_component:{c.VLLM_MEMORY.name}:sum"
VLLM_KV_USED = "namespace_pod:gpuattr_vllm_kv_used:ratio"
ITL_P95 = f"namespace_pod:{c.External.VLLM_INTER_TOKEN_LATENCY[0].replace(':', '_')}:p95_5m"

CONTAINER_KEYS = "namespace, pod, container, gpu, gpu_uuid, mig_instance"
# Per-container time that means "GPUs' worth used": kernel time on whole GPUs (NVML per-process, or the MPS
# server's for its only client), the instance's GPM SM activity for the only container of a MIG instance
# (never both for one container). DCGM-split values are a different measure and stay out.
SM_USED = (
    f'({c.CONTAINER_KERNEL_ACTIVE.name}{{pod!="", source=~"nvml|mps"}} '
    f'or {c.CONTAINER_SM_ACTIVE.name}{{pod!="", mig_instance!="", source="gpm"}})'
)
# Neighbours share a GPU only outside MIG: MIG instances are isolated, though they share the parent's UUID.
SM_USED_WHOLE_GPU = f'{c.CONTAINER_KERNEL_ACTIVE.name}{{pod!="", mig_instance="", source=~"nvml|mps"}}'
# Any measured activity of a container: kernel time, or SM activity (the only one on a shared MIG instance).
ACTIVITY = f'{{__name__=~"{c.CONTAINER_KERNEL_ACTIVE.name}|{c.CONTAINER_SM_ACTIVE.name}"}}'
K = "namespace, pod, container, gpu_uuid, mig_instance"


def with_pod_labels(expr: str, labels: str, keys: str) -> str:
    """``expr`` with ``labels`` of the pod-info series (``POD_INFO``) joined on (namespace, pod); kept without
    them when the pod has no info series (Kubernetes metadata off, or not delivered yet)."""
    return f"""
(
{textwrap.indent(expr, "  ")}
)
* on (namespace, pod) group_left ({labels}) max by (namespace, pod, {labels}) ({c.POD_INFO.name})
or on ({keys})
(
{textwrap.indent(expr, "  ")}
)
"""


@dataclass
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self, config: AlertConfig) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": _tidy(self.expr),
            "for": self.for_,
            "labels": {"severity": self.severity, **self.labels},
            "annotations": {
                "summary": self.summary,
                "description": _tidy(self.description, join=" "),
                "runbook_url": f"{config.runbook_base_url.rstrip('/')}/{self.name}.md",
            },
        }


def pct(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def _fill(template: str, values: Mapping[str, object]) -> str:
    """A Go-template description with Python values put in at ``<<name>>`` (Go's {{ }} stay as written)."""
    for key, value in values.items():
        template = template.replace(f"<<{key}>>", str(value))
    return template


def _tidy(text: str, join: str | None = None) -> str:
    """Expressions keep their indentation (dedented); descriptions become one line (``join=" "``)."""
    if join is None:
        return textwrap.dedent(text).strip("\n").rstrip()
    return join.join(line.strip() for line in text.strip().splitlines() if line.strip())


def recording_rules(config: AlertConfig) -> list[dict[str, str]]:
    mem = f'{c.CONTAINER_MEMORY.name}{{pod!=""}}'
    info = c.POD_INFO.name
    alloc = c.CONTAINER_ALLOCATED.name
    itl = " or ".join(f"rate({name}_bucket[5m])" for name in c.External.VLLM_INTER_TOKEN_LATENCY)
    sms_by_container = f'sum by (namespace, pod, source) ({c.CONTAINER_SM_ACTIVE.name}{{pod!=""}})'
    return [
        {"record": MEM_POD, "expr": f"sum by (namespace, pod) ({mem})"},
        {"record": MEM_NAMESPACE, "expr": f"sum by (namespace) ({mem})"},
        {"record": MEM_MODEL, "expr": f"sum by (model) ({mem} * on (namespace, pod) group_left (model) {info})"},
        {"record": SM_POD, "expr": f"sum by (namespace, pod) ({SM_USED})"},
        {"record": SM_NAMESPACE, "expr": f"sum by (namespace) ({SM_USED})"},
        {"record": SM_MODEL, "expr": f"sum by (model) ({SM_USED} * on (namespace, pod) group_left (model) {info})"},
        {"record": SM_TEAM, "expr": f"sum by (team) ({SM_USED} * on (namespace, pod) group_left (team) {info})"},
        {"record": SMS_POD, "expr": f"max by (namespace, pod, source) ({sms_by_container})"},
        {
            # How much of the SMs a container's kernel time used: near 0 for tiny kernels, launch-bound loops
            # and polling; near the device's SM activity per unit of kernel time for real work.
            "record": SM_PER_KERNEL,
            "expr": _tidy(
                f"""
                max by ({CONTAINER_KEYS}) ({c.CONTAINER_SM_ACTIVE.name}{{pod!="", mig_instance=""}})
                /
                (max by ({CONTAINER_KEYS}) ({c.CONTAINER_KERNEL_ACTIVE.name}{{pod!="", mig_instance=""}}) > 0)
                """
            ),
        },
        {"record": ALLOC_POD, "expr": f"sum by (namespace, pod) ({alloc})"},
        {"record": ALLOC_NAMESPACE, "expr": f"sum by (namespace) ({alloc})"},
        {"record": ALLOC_TEAM, "expr": f"sum by (team) ({alloc} * on (namespace, pod) group_left (team) {info})"},
        {
            # What a container holds on a GPU: its memory when that is at least the threshold, else 0 for
            # a device the kubelet allocated to it (held, though it holds no memory).
            "record": HELD,
            "expr": _tidy(
                f"""
                max by ({CONTAINER_KEYS}) ({mem} >= {config.idle_memory_bytes})
                or
                max by ({CONTAINER_KEYS}) ({alloc}) * 0
                """
            ),
        },
        {
            "record": ACTIVE_PODS,
            "expr": _tidy(
                f"""
                count by (gpu, gpu_uuid) (
                  max by (gpu, gpu_uuid, namespace, pod) ({SM_USED_WHOLE_GPU}) > {config.active_pod_threshold}
                )
                """
            ),
        },
        {"record": VLLM_SPLIT, "expr": f"sum by (namespace, pod, model, component) ({c.VLLM_MEMORY.name})"},
        {
            "record": VLLM_KV_USED,
            "expr": _tidy(
                f"""
                sum by (namespace, pod, model) ({c.VLLM_MEMORY.name}{{component="kv_used"}})
                /
                sum by (namespace, pod, model) ({c.VLLM_MEMORY.name}{{component=~"kv_used|kv_idle"}})
                """
            ),
        },
        {"record": ITL_P95, "expr": f"histogram_quantile(0.95, sum by (namespace, pod, le) ({itl}))"},
    ]


# Where a container's GPU is, in a description: the GPU and, on a MIG-partitioned one, the instance.
_GPU_PLACE = (
    "GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}{{ if $labels.mig_instance }}, "
    "MIG instance {{ $labels.mig_instance }}{{ end }})"
)


def alerts(config: AlertConfig) -> list[Alert]:
    """Every alert, family by family, in the order of the generated files."""
    return [
        *waste_alerts(config),
        *vllm_alerts(config),
        *saturation_alerts(config),
        *capacity_alerts(config),
        *exporter_alerts(config),
        *exporter_coverage_alerts(config),
        *gpu_health_alerts(config),
        *gpu_hardware_alerts(config),
        *exporter_source_alerts(config),
        *job_alerts(config),
    ]


def waste_alerts(config: AlertConfig) -> list[Alert]:
    """A container that holds a GPU (memory or an allocation) and does not use it."""
    # Idle: held, no activity above the threshold, and activity known. A container whose activity the driver
    # does not measure (several MPS clients, several containers in one MIG instance) is unknown, not idle:
    # it holds memory but has no activity series, or it is marked activity_unknown.
    unknown = f"""
        max by ({K}) ({c.CONTAINER_MEMORY.name}{{pod!=""}})
        unless on ({K}) max by ({K}) (max_over_time({ACTIVITY}[10m]))
        or max by ({K}) (max_over_time({c.CONTAINER_ACTIVITY_UNKNOWN.name}[10m]))
    """
    idle_core = f"""
        {HELD}
        unless on ({K})
          (max by ({K}) (max_over_time({ACTIVITY}[10m])) > {config.idle_sm_threshold})
        unless on ({K})
          (
        {textwrap.indent(_tidy(unknown), "    ")}
          )
    """
    # Busy but doing little: kernel time above a threshold while the SM activity measured for the container
    # (GPM or DCGM) is a small fraction of it. Only where SM activity is measured: never from kernel time alone.
    busy_kernel = f'{c.CONTAINER_KERNEL_ACTIVE.name}{{pod!="", mig_instance=""}}'
    busy_core = f"""
        {SM_PER_KERNEL} < {config.busy_sm_per_kernel_threshold}
        and on ({CONTAINER_KEYS})
          max by ({CONTAINER_KEYS}) ({busy_kernel}) > {config.busy_kernel_threshold}
    """
    v = {
        "gpu_place": _GPU_PLACE,
        "idle_threshold": pct(config.idle_sm_threshold),
        "idle_window": config.idle_window,
        "busy_threshold": pct(config.busy_kernel_threshold),
        "busy_for": config.busy_but_idle_for,
    }
    return [
        Alert(
            "GpuAllocatedButIdle",
            with_pod_labels(_tidy(idle_core), "model, team", K),
            config.idle_window,
            config.idle_severity,
            "A container holds a GPU it does not use.",
            _fill(
                """
                {{ $labels.namespace }}/{{ $labels.pod }} (container {{ $labels.container }}{{ if $labels.model }},
                model {{ $labels.model }}{{ end }}) holds <<gpu_place>> with {{ $value | humanize1024 }}B of its
                memory, and its kernels have run at most <<idle_threshold>> of the time for <<idle_window>>.
                """,
                v,
            ),
        ),
        Alert(
            "GpuBusyButSmsIdle",
            with_pod_labels(_tidy(busy_core), "model, team", CONTAINER_KEYS),
            config.busy_but_idle_for,
            config.busy_but_idle_severity,
            "A container's kernels keep the GPU busy while its SMs do almost nothing.",
            _fill(
                """
                {{ $labels.namespace }}/{{ $labels.pod }} (container {{ $labels.container }}{{ if $labels.model }},
                model {{ $labels.model }}{{ end }}) has had a kernel running on <<gpu_place>> more than
                <<busy_threshold>> of the time for <<busy_for>>, yet its SMs were active only
                {{ $value | humanizePercentage }} as much as that time: tiny kernels, a launch-bound loop or polling.
                nvidia-smi shows this GPU as busy; it is mostly waiting.
                """,
                v,
            ),
        ),
    ]


def vllm_alerts(config: AlertConfig) -> list[Alert]:
    """A vLLM server whose KV cache reservation is far larger than what it uses."""
    v = {"kv_threshold": pct(config.kv_used_ratio_threshold), "kv_for": config.kv_bloat_for}
    return [
        Alert(
            "VllmKvCacheOversized",
            with_pod_labels(f"{VLLM_KV_USED} < {config.kv_used_ratio_threshold}", "team", "namespace, pod, model"),
            config.kv_bloat_for,
            config.bloat_severity,
            "A vLLM server reserved far more KV cache than it ever uses.",
            _fill(
                """
                vLLM {{ $labels.namespace }}/{{ $labels.pod }} ({{ $labels.model }}) used at most
                {{ $value | humanizePercentage }} of the KV cache it reserved over the attribution window
                (alert below <<kv_threshold>> for <<kv_for>>); the rest of the reservation could go back: see
                the recommended --gpu-memory-utilization in the attribution report.
                """,
                v,
            ),
        ),
    ]


def saturation_alerts(config: AlertConfig) -> list[Alert]:
    """Pods that slow each other down on a shared GPU, and a GPU running out of memory."""
    saturated = f"""
        {ACTIVE_PODS} >= 2
        and on (gpu_uuid)
        (
          max by (gpu_uuid) ({c.GPU_SM_ACTIVE.name}{{mig_instance=""}}) > {config.saturation_threshold}
          or
          max by (gpu_uuid) ({c.GPU_MEMORY_BANDWIDTH.name}{{mig_instance=""}}) > {config.saturation_threshold}
        )
    """
    neighbours = _fill(
        '{{ range printf "max by (namespace, pod) (<<sm>>{gpu_uuid=%q, pod!=\\"\\"})'
        ' > <<threshold>>" .Labels.gpu_uuid | query | sortByLabel "pod" }}{{ .Labels.namespace }}/{{ .Labels.pod }} '
        "{{ end }}",
        {"sm": c.CONTAINER_KERNEL_ACTIVE.name, "threshold": config.active_pod_threshold},
    )
    itl_rising_core = f"""
        (
          {ITL_P95} > {config.itl_rise_factor} * avg_over_time({ITL_P95}[6h])
        )
        and on (namespace, pod)
        (
          max by (namespace, pod, gpu_uuid) ({c.CONTAINER_MEMORY.name}{{pod!="", mig_instance=""}})
          * on (gpu_uuid) group_left () ({ACTIVE_PODS} >= 2)
        )
    """
    pressure = f"""
        (
          max by (gpu, gpu_uuid, mig_instance) ({c.GPU_MEMORY_USED.name})
          / max by (gpu, gpu_uuid, mig_instance) ({c.GPU_MEMORY_TOTAL.name})
          > {config.memory_pressure_ratio}
        )
        and on (gpu_uuid, mig_instance)
        (
          sum by (gpu_uuid, mig_instance) (deriv({c.CONTAINER_MEMORY.name}[15m])) > 0
        )
    """
    v = {
        "gpu_place": _GPU_PLACE,
        "interference_for": config.interference_for,
        "saturation": pct(config.saturation_threshold),
        "neighbours": neighbours,
        "itl_factor": f"{config.itl_rise_factor:g}",
        "pressure": pct(config.memory_pressure_ratio),
        "pressure_for": config.memory_pressure_for,
    }
    return [
        Alert(
            "GpuSharedAndSaturated",
            saturated,
            config.interference_for,
            config.interference_severity,
            "Several pods are active on one saturated GPU and slow each other down.",
            _fill(
                """
                GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) has had {{ $value }} active pods for
                <<interference_for>> while its SM activity or memory bandwidth was above <<saturation>>:
                <<neighbours>>
                """,
                v,
            ),
        ),
        Alert(
            "VllmLatencyRisingWithNeighbour",
            with_pod_labels(_tidy(itl_rising_core), "model, team", "namespace, pod"),
            config.interference_for,
            config.interference_severity,
            "A vLLM server's inter-token latency rises while a neighbour on its GPU is active.",
            _fill(
                """
                vLLM {{ $labels.namespace }}/{{ $labels.pod }} has a p95 inter-token latency of
                {{ $value | humanizeDuration }}, over <<itl_factor>>× its 6-hour average, while another pod is
                active on the same GPU.
                """,
                v,
            ),
        ),
        Alert(
            "GpuMemoryPressure",
            pressure,
            config.memory_pressure_for,
            config.memory_pressure_severity,
            "A GPU is nearly full and the memory its pods hold keeps growing.",
            _fill(
                """
                <<gpu_place>> is {{ $value | humanizePercentage }} full (alert above <<pressure>>) and the
                memory held by its processes has kept growing for <<pressure_for>>: the next allocation may
                fail with out-of-memory.
                """,
                v,
            ),
        ),
    ]


def capacity_alerts(config: AlertConfig) -> list[Alert]:
    """A namespace or team that uses a small share of the GPUs allocated to it (the capacity review)."""
    text = """
        {{ $labels.%s }} used {{ $value | humanizePercentage }} of the GPUs allocated to it over
        <<underuse_window>> (alert below <<underuse>>, from <<underuse_min>> GPUs allocated on average).
    """
    v = {
        "underuse_window": config.underuse_window,
        "underuse": pct(config.underuse_ratio),
        "underuse_min": f"{config.underuse_min_gpus:g}",
    }
    return [
        Alert(
            "GpuAllocationUnderusedByNamespace",
            _underuse("namespace", ALLOC_NAMESPACE, SM_NAMESPACE, config),
            config.underuse_for,
            config.underuse_severity,
            "A namespace uses a small share of the GPUs allocated to it.",
            _fill("Namespace " + text % "namespace", v),
        ),
        Alert(
            "GpuAllocationUnderusedByTeam",
            _underuse("team", ALLOC_TEAM, SM_TEAM, config),
            config.underuse_for,
            config.underuse_severity,
            "A team uses a small share of the GPUs allocated to it.",
            _fill("Team " + text % "team", v),
        ),
    ]


def exporter_alerts(config: AlertConfig) -> list[Alert]:
    """The exporter's own health: Prometheus cannot scrape it, or it cannot talk to the driver."""
    v = {"exporter_for": config.exporter_for}
    return [
        Alert(
            "GpuAttrExporterDown",
            f'{c.External.PROMETHEUS_UP}{{job="{config.exporter_job}"}} == 0',
            config.exporter_for,
            config.exporter_severity,
            "Prometheus cannot scrape a gpu-attribution exporter.",
            _fill(
                "Prometheus has not scraped {{ $labels.instance }} (job {{ $labels.job }}) for <<exporter_for>>: "
                "that node's GPU usage is unknown.",
                v,
            ),
        ),
        Alert(
            "GpuAttrNvmlDown",
            f"{c.EXPORTER_NVML_UP.name} == 0",
            config.exporter_for,
            config.exporter_severity,
            "The exporter cannot talk to the NVIDIA driver.",
            _fill(
                "The exporter on {{ $labels.instance }} has had no NVML for <<exporter_for>> (driver missing or "
                "not loaded); it keeps retrying.",
                v,
            ),
        ),
    ]


GPU_RESOURCES = "nvidia_com_gpu.*|nvidia_com_mig_.+"
"""kube-state-metrics' sanitised names of the device plugin's resources: whole GPUs, shared (time-sliced or
MPS) GPUs, and MIG profiles under the mixed strategy."""


def exporter_coverage_alerts(config: AlertConfig) -> list[Alert]:
    """A GPU node no exporter covers: its target is missing altogether, so ``up`` cannot say it is down.

    From kube-state-metrics: a node with GPU capacity and no exporter target labelled with its ``node``
    (the scrape config and the ServiceMonitor copy the pod's node name into ``node``). Without
    kube-state-metrics: no exporter target at all.
    """
    up = f'{c.External.PROMETHEUS_UP}{{job="{config.exporter_job}"}}'
    capacity = c.External.KUBE_NODE_CAPACITY
    expr = f"""
        (
          max by (node) ({capacity}{{resource=~"{GPU_RESOURCES}"}} > 0)
          unless on (node)
          max by (node) ({up})
        )
        or
        (
          absent({up})
          unless on ()
          count({capacity})
        )
    """
    return [
        Alert(
            "GpuAttrExporterMissing",
            expr,
            config.exporter_missing_for,
            config.exporter_severity,
            "A GPU node has no gpu-attribution exporter.",
            _fill(
                "{{ if $labels.node }}Node {{ $labels.node }} has GPUs (kube-state-metrics) but Prometheus has "
                "had no exporter target on it (job <<job>>) for <<missing_for>>{{ else }}Prometheus has had "
                "no exporter target at all (job <<job>>) for <<missing_for>>{{ end }}: GPU usage there is "
                "not measured, and GpuAttrExporterDown cannot fire for a target that does not exist.",
                {"job": config.exporter_job, "missing_for": config.exporter_missing_for},
            ),
        ),
    ]


def gpu_health_alerts(config: AlertConfig) -> list[Alert]:
    """A GPU that cannot be read: the driver is stuck in a call on it, or it fell off the bus."""
    v = {"exporter_for": config.exporter_for}
    return [
        Alert(
            "GpuAttrNvmlCallHung",
            f"max by (job, instance, gpu, gpu_uuid, call) ({c.EXPORTER_NVML_HUNG.name}) == 1",
            config.exporter_for,
            config.exporter_severity,
            "An NVML call has not returned; that GPU is not being read.",
            _fill(
                "NVML {{ $labels.call }} on GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) of {{ $labels.instance }} "
                "has not returned for <<exporter_for>>: the driver is stuck on that GPU. The exporter reads the "
                "other GPUs and serves nothing for this one until the call returns (an empty gpu means a "
                "node-level call such as nvmlInit).",
                v,
            ),
        ),
        Alert(
            "GpuLost",
            f"{c.GPU_UP.name} == 0 unless on (job, instance, gpu_uuid) {c.EXPORTER_NVML_HUNG.name} == 1",
            "1m",
            config.gpu_lost_severity,
            "A GPU fell off the bus.",
            "GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) on {{ $labels.instance }} answers GpuIsLost: "
            "its workloads are failing and the node likely needs a drain and a reset.",
        ),
    ]


HARDWARE_XIDS = (48, 64, 74, 79, 92, 94, 95, 119, 120, 140)
"""XID codes that point at the GPU, its memory, its links or its firmware rather than the workload: double-bit
ECC (48), row remapper failure (64), NVLink (74), fallen off the bus (79), high single-bit ECC rate (92),
contained and uncontained ECC errors (94, 95), GSP firmware errors (119, 120), unrecovered ECC (140). The
workload's own faults (13, 31, 43, 45) and XID 63 (a row remap recorded, which GpuRowRemapPending covers)
are not among them."""


def gpu_hardware_alerts(config: AlertConfig) -> list[Alert]:
    """A GPU whose hardware reports errors: hardware XIDs and HBM row remapping."""
    w = config.hardware_error_window
    xid = f'{c.GPU_XID_ERRORS.name}{{xid=~"{"|".join(str(x) for x in HARDWARE_XIDS)}"}}'
    uncorrectable = f'{c.GPU_REMAPPED_ROWS.name}{{kind="uncorrectable"}}'
    keys = "job, instance, gpu, gpu_uuid"
    v = {"w": w}
    return [
        Alert(
            "GpuXidHardwareError",
            # A code's series appears with its first error: a series absent a window ago counts as new.
            f"""
            max by ({keys}, xid) (
              increase({xid}[{w}]) > 0
              or ({xid} unless {xid} offset {w})
            )
            """,
            "0s",
            config.gpu_hardware_severity,
            "A GPU reported a hardware XID error.",
            _fill(
                "GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) on {{ $labels.instance }} raised XID "
                "{{ $labels.xid }} in the last <<w>>: an error of the GPU, its memory, links or firmware, not of "
                "the workload. Its workloads have likely failed; drain the node and reset the GPU.",
                v,
            ),
        ),
        Alert(
            "GpuUncorrectableRowRemap",
            # Rows remapped before the exporter started are history: only a count that rose within the window.
            f"max by ({keys}) (delta({uncorrectable}[{w}]) > 0)",
            "0s",
            config.gpu_hardware_severity,
            "A GPU remapped an HBM row after an uncorrectable memory error.",
            _fill(
                "GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) on {{ $labels.instance }} remapped an HBM row for "
                "an uncorrectable error in the last <<w>>: the process that held that memory was killed, and the "
                "spare row is used only after a GPU reset.",
                v,
            ),
        ),
        Alert(
            "GpuRowRemapPending",
            f"max by ({keys}) ({c.GPU_ROW_REMAP_PENDING.name}) == 1",
            "1m",
            config.gpu_reset_severity,
            "A GPU needs a reset to apply a row remap.",
            "GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) on {{ $labels.instance }} has a row remap pending: "
            "the spare HBM row takes over only at the next GPU reset. Drain the node and reset the GPU.",
        ),
        Alert(
            "GpuRowRemapFailed",
            f"max by ({keys}) ({c.GPU_ROW_REMAP_FAILED.name}) == 1",
            "1m",
            config.gpu_hardware_severity,
            "A GPU could not remap a failing HBM row.",
            "GPU {{ $labels.gpu }} ({{ $labels.gpu_uuid }}) on {{ $labels.instance }} failed to remap an HBM row "
            "(no spare row left in that bank): its memory errors can no longer be repaired. Take the GPU out of "
            "service and have it replaced.",
        ),
    ]


def exporter_source_alerts(config: AlertConfig) -> list[Alert]:
    """The exporter's other sources: Kubernetes API, kubelet, the host's PIDs, dcgm-exporter."""
    return [
        Alert(
            "GpuAttrKubernetesApiUnreachable",
            f"{c.EXPORTER_KUBERNETES_UP.name} == 0",
            "10m",
            config.exporter_severity,
            "The exporter cannot watch pods; names and models may be stale.",
            "The exporter on {{ $labels.instance }} has not reached the Kubernetes API for 10m; it serves "
            "pods from its cache, so new pods show under their command names only.",
        ),
        Alert(
            "GpuAttrKubeletUnreachable",
            f"{c.EXPORTER_KUBELET_UP.name} == 0",
            "10m",
            config.exporter_severity,
            "The exporter cannot read GPU allocations from the kubelet.",
            "The exporter on {{ $labels.instance }} has not reached the kubelet pod-resources socket for "
            "10m; allocation series are the last known ones.",
        ),
        Alert(
            "GpuAttrHostPidsInvisible",
            f"{c.EXPORTER_HOST_PIDS_VISIBLE.name} == 0",
            "10m",
            config.exporter_severity,
            "The exporter cannot map GPU processes to containers.",
            "The exporter on {{ $labels.instance }} does not see the host's PIDs (hostPID missing?): GPU "
            "usage is reported by command name only.",
        ),
        Alert(
            "GpuAttrDcgmExporterDown",
            f"{c.EXPORTER_DCGM_UP.name} == 0",
            "10m",
            "info",
            "The exporter cannot read dcgm-exporter's profiling fields.",
            "The exporter on {{ $labels.instance }} has had no usable answer from dcgm-exporter for 10m; "
            'source="dcgm" series are absent and NVML-derived ones are served.',
        ),
    ]


JOB_FAILING_FOR = "10m"
"""How long a command that has never succeeded may fail before it counts as stale (one failed first run of a
Deployment whose Prometheus is restarting should not page)."""


def job_alerts(config: AlertConfig) -> list[Alert]:
    """The attribution job's and the capacity review's own health: no successful run for longer than their
    period, so the figures dashboards show are old, or none at all."""
    success, up = c.JOB_LAST_SUCCESS.name, c.JOB_UP.name

    def older(command: str, duration: str) -> str:
        seconds = int(parse_duration(duration))
        return f'time() - max by (command) ({success}{{command="{command}"}}) > {seconds}'

    return [
        Alert(
            "GpuAttrJobStale",
            f"""
            {older("attribute", config.job_stale_for)}
            or
            {older("review", config.review_stale_for)}
            or
            (max by (command) ({up}) == 0 unless on (command) max by (command) ({success}))
            """,
            JOB_FAILING_FOR,
            config.job_stale_severity,
            "The attribution job or the capacity review has not succeeded within its period.",
            _fill(
                "gpuattr {{ $labels.command }} has had no successful run for longer than its period "
                "(<<job_stale_for>> for attribute, <<review_stale_for>> for review), or none since it started "
                "failing: the figures on the dashboards are that old, or missing. Each failed run names what failed "
                "in its log and in <<input_failed>>.",
                {
                    "job_stale_for": config.job_stale_for,
                    "review_stale_for": config.review_stale_for,
                    "input_failed": c.JOB_INPUT_FAILED.name,
                },
            ),
        ),
    ]


def _underuse(by: str, alloc: str, used: str, config: AlertConfig) -> str:
    w = config.underuse_window
    # Time-weighted: a pod that ran for ten minutes and then sat idle holding its GPUs has no activity
    # series afterwards; summing over time counts that silence as zero use (an average would skip it).
    allocated_time = f"sum_over_time({alloc}[{w}])"
    used_time = f"(sum_over_time({used}[{w}]) or {allocated_time} * 0)"
    return f"""
        ({used_time} / {allocated_time} < {config.underuse_ratio})
        and on ({by})
        (avg_over_time({alloc}[{w}]) >= {config.underuse_min_gpus})
    """


def rule_groups(config: AlertConfig) -> list[dict[str, Any]]:
    return [
        {"name": "gpuattr.recording", "interval": config.rule_interval, "rules": recording_rules(config)},
        {"name": "gpuattr.alerts", "interval": config.rule_interval, "rules": [a.rule(config) for a in alerts(config)]},
    ]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `gpuattr alerts` from alerts/rules.py and the metric catalog; do not edit.\n"


def render(config: AlertConfig) -> dict[str, str]:
    """File name -> content of every generated file."""
    groups = rule_groups(config)
    plain = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=120)
    operator = yaml.dump(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "gpuattr", "labels": {"app.kubernetes.io/name": "gpuattr", "role": "alert-rules"}},
            "spec": {"groups": groups},
        },
        Dumper=_Dumper,
        sort_keys=False,
        width=120,
    )
    return {RULE_FILE: HEADER + plain, OPERATOR_FILE: HEADER + operator}


def write(out_dir: Path, config: AlertConfig) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(config).items():
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append(out_dir / name)
    return written


def stale(out_dir: Path, config: AlertConfig) -> list[str]:
    """Generated files that differ from what would be generated now."""
    return [
        name
        for name, text in render(config).items()
        if not (out_dir / name).exists() or (out_dir / name).read_text(encoding="utf-8") != text
    ]
