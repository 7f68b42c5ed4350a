"""Node and GPU: what each GPU of a node holds, who keeps it busy, who shares it, and how neighbours interfere."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash

from alerts import rules as r
from common import catalog as c
from dashboards import panels as p
from dashboards.promql import (
    GPU,
    IN_POD,
    KERNEL_SOURCES,
    MIG_ONLY,
    NODE,
    NODE_HELP,
    NODE_LABEL,
    SOURCE,
    WHOLE_GPU,
    sel,
)

UID = "gpuattr-node-gpu"
TITLE = "GPU attribution / Node and GPU"

DEVICE = "instance, gpu, gpu_uuid, mig_instance"
"""One whole GPU or MIG instance of one node."""
KERNEL = c.CONTAINER_KERNEL_ACTIVE
MPS = "instance, gpu, gpu_uuid"
MPS_SHARED = 'reason="mps_shared"'
HOLDER = f"{DEVICE}, namespace, pod"
MIG_HOLDER = "instance, gpu, gpu_uuid, mig_instance, mig_profile, namespace, pod"
DEVICE_LEGEND = "{{instance}} GPU {{gpu}} {{mig_instance}}"
POD_LEGEND = "{{namespace}}/{{pod}}{{process}}"


def _holders(by: str, *matchers: str) -> str:
    """Pods that hold memory on a device (their bytes), or were allocated it and hold none (0)."""
    return (
        f"(sum by ({by}) ({sel(c.CONTAINER_MEMORY, NODE, IN_POD, *matchers)})"
        f" or sum by ({by}) ({sel(c.CONTAINER_ALLOCATED, NODE, *matchers)}) * 0)"
    )


SHARED = (
    f"{_holders(HOLDER)} and on (instance, gpu_uuid, mig_instance) "
    f"(count by (instance, gpu_uuid, mig_instance) ({_holders(HOLDER)}) > 1)"
)
"""Every pod on a GPU (or MIG instance) that more than one pod holds or was allocated."""
ADVERTISED = (
    f"max by ({HOLDER}) (({SHARED}) * 0 + on (instance, gpu_uuid, mig_instance) group_left "
    f"max by (instance, gpu_uuid, mig_instance) ({sel(c.GPU_ALLOCATABLE, NODE)}))"
)
"""For each pod of ``SHARED``: the device IDs the kubelet advertises for its GPU or MIG instance (a pod holding
one of 4 replicas holds a quarter of it, however many pods share it now)."""


def _node_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(p.row("Node"))
        .with_panel(
            p.timeseries_panel(
                "SM activity per GPU and MIG instance",
                "Share of SMs busy on each GPU or MIG instance of the selected nodes "
                f"({c.GPU_SM_ACTIVE.name} from its best source: gpm, then dcgm, then nvml). Flat lines at "
                "0% are GPUs doing nothing, whoever holds them.",
                p.RATIO,
                [p.Query(f"max by ({DEVICE}) ({sel(c.GPU_SM_ACTIVE, NODE)})", DEVICE_LEGEND)],
                min_value=0,
            )
        )
        .with_panel(
            p.bargauge_panel(
                "Memory used per GPU and MIG instance",
                "Framebuffer used over total on each GPU and MIG instance now (nvidia-smi memory.used / "
                "memory.total). A full GPU with idle SMs is usually a reservation (vLLM's KV cache, a "
                "notebook), not work.",
                p.RATIO,
                [
                    p.Query(
                        f"max by ({DEVICE}) ({sel(c.GPU_MEMORY_USED, NODE)}) "
                        f"/ max by ({DEVICE}) ({sel(c.GPU_MEMORY_TOTAL, NODE)})",
                        DEVICE_LEGEND,
                    )
                ],
                span=12,
                max_value=1,
            )
        )
        .with_panel(
            p.table_panel(
                "Pods sharing a GPU",
                "Every pod on a GPU or MIG instance that more than one pod holds memory on or was allocated "
                "(time-slicing, MPS, or a process the kubelet did not allocate): the memory each holds, the "
                "time its kernels ran and the share of SMs they kept busy ($source), and how many replicas the kubelet "
                "advertises for the device (each replica is that fraction of it; blank where the kubelet does not "
                "say). Shared GPUs are where neighbours slow each other down. Under MPS with several clients, "
                "activity is unknown (blank).",
                p.BYTES,
                [
                    p.Column(p.Query(SHARED), "memory held", p.BYTES),
                    p.Column(
                        p.Query(
                            f"sum by ({HOLDER}) ({sel(c.CONTAINER_KERNEL_ACTIVE, NODE, IN_POD, KERNEL_SOURCES)}) "
                            f"and on ({HOLDER}) {SHARED}"
                        ),
                        "kernel time",
                        p.RATIO,
                    ),
                    p.Column(
                        p.Query(
                            f"sum by ({HOLDER}) ({sel(c.CONTAINER_SM_ACTIVE, NODE, IN_POD, SOURCE)}) "
                            f"and on ({HOLDER}) {SHARED}"
                        ),
                        "SM activity",
                        p.RATIO,
                    ),
                    p.Column(p.Query(ADVERTISED), "replicas advertised", p.COUNT),
                ],
                labels=["instance", "gpu", "gpu_uuid", "mig_instance", "namespace", "pod"],
                span=12,
            )
        )
        .with_panel(
            p.table_panel(
                "MPS-shared GPUs",
                "GPUs whose work runs through an MPS server (a sharing mode of the NVIDIA device plugin): its "
                "clients, the share of time a kernel of any client ran (NVML credits all of it to the server), "
                "the server's own memory, and the clients whose activity is therefore unknown. With several "
                "clients the driver does not say who did what: unknown, not idle.",
                p.RATIO,
                [
                    p.Column(p.Query(f"max by ({MPS}) ({sel(c.GPU_MPS_KERNEL_ACTIVE, NODE)})"), "kernel time", p.RATIO),
                    p.Column(p.Query(f"max by ({MPS}) ({sel(c.GPU_MPS_CLIENTS, NODE)})"), "client processes", p.COUNT),
                    p.Column(
                        p.Query(f"max by ({MPS}) ({sel(c.GPU_MPS_SERVER_MEMORY, NODE)})"), "server memory", p.BYTES
                    ),
                    p.Column(
                        p.Query(f"count by ({MPS}) ({sel(c.CONTAINER_ACTIVITY_UNKNOWN, NODE, MPS_SHARED)})"),
                        "containers, activity unknown",
                        p.COUNT,
                    ),
                ],
                labels=["instance", "gpu", "gpu_uuid"],
                span=12,
            )
        )
        .with_panel(
            p.table_panel(
                "MIG instances",
                "Each MIG instance of the selected nodes: its profile, memory used and size, and how busy its "
                "SMs and memory are (GPM per instance). An instance at 0% SM activity is a slice that could go "
                "to someone else; reshaping the MIG layout needs the GPU drained.",
                p.RATIO,
                [
                    p.Column(
                        p.Query(f"max by ({DEVICE}, mig_profile) ({sel(c.GPU_MEMORY_USED, NODE, MIG_ONLY)})"),
                        "memory used",
                        p.BYTES,
                    ),
                    p.Column(
                        p.Query(f"max by ({DEVICE}, mig_profile) ({sel(c.GPU_MEMORY_TOTAL, NODE, MIG_ONLY)})"),
                        "memory size",
                        p.BYTES,
                    ),
                    p.Column(
                        p.Query(f"max by ({DEVICE}, mig_profile) ({sel(c.GPU_SM_ACTIVE, NODE, MIG_ONLY)})"),
                        "SM activity",
                        p.RATIO,
                    ),
                    p.Column(
                        p.Query(f"max by ({DEVICE}, mig_profile) ({sel(c.GPU_MEMORY_BANDWIDTH, NODE, MIG_ONLY)})"),
                        "memory bandwidth",
                        p.RATIO,
                    ),
                ],
                labels=["instance", "gpu", "gpu_uuid", "mig_instance", "mig_profile"],
                span=12,
            )
        )
        .with_panel(
            p.table_panel(
                "Who holds each MIG instance",
                "Pods holding memory on or allocated a MIG instance (0 bytes: allocated, never started CUDA), "
                "with their SM activity ($source). A MIG slice is isolated hardware: a pod on it cannot be slowed "
                "by its neighbours, and an idle one wastes the whole slice.",
                p.BYTES,
                [
                    p.Column(p.Query(_holders(MIG_HOLDER, MIG_ONLY)), "memory held", p.BYTES),
                    p.Column(
                        p.Query(
                            f"sum by ({MIG_HOLDER}) ({sel(c.CONTAINER_SM_ACTIVE, NODE, IN_POD, MIG_ONLY, SOURCE)})"
                        ),
                        "SM activity",
                        p.RATIO,
                    ),
                ],
                labels=["instance", "gpu", "gpu_uuid", "mig_instance", "mig_profile", "namespace", "pod"],
                span=12,
            )
        )
    )


HEALTH = "instance, gpu, gpu_uuid"
"""One whole GPU of one node: device health has no MIG instance."""
GPU_LEGEND = "{{instance}} GPU {{gpu}}"
HERTZ = "hertz"
CELSIUS = "celsius"
BYTES_PER_S = "binBps"


def _health(metric: c.Metric, *matchers: str) -> str:
    return f"max by ({HEALTH}) ({sel(metric, NODE, *matchers)})"


def _health_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(p.row("Device health"))
        .with_panel(
            p.table_panel(
                "Device health per GPU",
                "Each GPU of the selected nodes: XID errors since the exporter started (all codes; the hardware "
                "ones fire GpuXidHardwareError), HBM rows remapped for correctable and uncorrectable errors, a "
                "remap waiting for a GPU reset or one that failed (1 = yes), PCIe replays since the driver "
                "loaded, and the clocks and memory temperature now. A blank cell is a value this GPU's driver "
                "does not report.",
                p.COUNT,
                [
                    p.Column(p.Query(f"sum by ({HEALTH}) ({sel(c.GPU_XID_ERRORS, NODE)})"), "XID errors", p.COUNT),
                    p.Column(
                        p.Query(_health(c.GPU_REMAPPED_ROWS, 'kind="correctable"')), "rows remapped (corr.)", p.COUNT
                    ),
                    p.Column(
                        p.Query(_health(c.GPU_REMAPPED_ROWS, 'kind="uncorrectable"')),
                        "rows remapped (uncorr.)",
                        p.COUNT,
                    ),
                    p.Column(p.Query(_health(c.GPU_ROW_REMAP_PENDING)), "remap pending", p.COUNT),
                    p.Column(p.Query(_health(c.GPU_ROW_REMAP_FAILED)), "remap failed", p.COUNT),
                    p.Column(p.Query(_health(c.GPU_PCIE_REPLAYS)), "PCIe replays", p.COUNT),
                    p.Column(p.Query(_health(c.GPU_SM_CLOCK)), "SM clock", HERTZ),
                    p.Column(p.Query(_health(c.GPU_MEMORY_CLOCK)), "memory clock", HERTZ),
                    p.Column(p.Query(_health(c.GPU_MEMORY_TEMPERATURE)), "HBM temperature", CELSIUS),
                ],
                labels=["instance", "gpu", "gpu_uuid"],
                span=24,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "XID errors by code",
                "XID errors each GPU raised since the exporter started, by code (NVML XID events; 'NVRM: Xid' in "
                "the kernel log). 13, 31, 43 and 45 are the workload's own faults; 48, 64, 74, 79, 92, 94, 95, "
                "119, 120 and 140 are the GPU's (see the GpuXidHardwareError runbook).",
                p.COUNT,
                [p.Query(f"sum by ({HEALTH}, xid) ({sel(c.GPU_XID_ERRORS, NODE)})", GPU_LEGEND + " XID {{xid}}")],
            )
        )
        .with_panel(
            p.timeseries_panel(
                "SM clock per GPU",
                "SM clock of each GPU (nvidia-smi clocks.current.sm). It drops to its floor when idle; a busy GPU "
                "running well below its boost clock is throttled (power or temperature) and runs its work "
                "slower.",
                HERTZ,
                [p.Query(_health(c.GPU_SM_CLOCK), GPU_LEGEND)],
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Temperature per GPU",
                "Core (nvidia-smi temperature.gpu) and HBM (temperature.memory) temperature of each GPU. HBM runs "
                "hotter under memory-bound work; GPUs without a memory sensor show the core only.",
                CELSIUS,
                [
                    p.Query(_health(c.GPU_TEMPERATURE), GPU_LEGEND + " core"),
                    p.Query(_health(c.GPU_MEMORY_TEMPERATURE), GPU_LEGEND + " HBM"),
                ],
            )
        )
        .with_panel(
            p.timeseries_panel(
                "NVLink traffic per GPU",
                "Data each GPU sent and received over NVLink, all links together. Only work spread over several "
                "GPUs (tensor or data parallelism) uses it; GPUs without NVLink have no line.",
                BYTES_PER_S,
                [p.Query(f"sum by ({HEALTH}) (rate({sel(c.GPU_NVLINK_BYTES, NODE)}[$__rate_interval]))", GPU_LEGEND)],
            )
        )
    )


def _gpu_row(d: dash.Dashboard) -> dash.Dashboard:
    whole = (NODE, GPU, WHOLE_GPU)
    return (
        d.with_row(p.row("GPU $gpu"))
        .with_panel(
            p.stat_panel(
                "Memory used",
                "Framebuffer used over total on the selected GPU now. Near 100% with memory still growing "
                "fires GpuMemoryPressure: the next allocation may fail.",
                p.RATIO,
                p.Query(f"sum({sel(c.GPU_MEMORY_USED, *whole)}) / sum({sel(c.GPU_MEMORY_TOTAL, *whole)})"),
                span=4,
            )
        )
        .with_panel(
            p.stat_panel(
                "SM activity",
                "Share of the GPU's SMs busy now (device value, best source). On a MIG GPU see the MIG table.",
                p.RATIO,
                p.Query(f"max({sel(c.GPU_SM_ACTIVE, *whole)})"),
                span=4,
            )
        )
        .with_panel(
            p.stat_panel(
                "Memory bandwidth",
                "DRAM bandwidth used against peak now (device value, best source). Two bandwidth-bound pods on "
                "one GPU slow each other even when SM activity looks moderate.",
                p.RATIO,
                p.Query(f"max({sel(c.GPU_MEMORY_BANDWIDTH, *whole)})"),
                span=4,
            )
        )
        .with_panel(
            p.stat_panel(
                "Power",
                "Board power draw now (nvidia-smi power.draw). An allocated GPU idling near its floor costs "
                "the same per hour as a busy one.",
                p.WATTS,
                p.Query(f"max({sel(c.GPU_POWER, NODE, GPU)})"),
                span=4,
            )
        )
        .with_panel(
            p.stat_panel(
                "Pods holding memory",
                "Pods with GPU memory on this GPU now. More than one means they share it (time-slicing or "
                "MPS) and compete for SMs and bandwidth.",
                p.COUNT,
                p.Query(f"count(sum by (namespace, pod) ({sel(c.CONTAINER_MEMORY, NODE, GPU, IN_POD)}))"),
                span=4,
            )
        )
        .with_panel(
            p.stat_panel(
                "Active pods",
                f"Pods whose SM activity is above the active threshold on this GPU now (recording rule "
                f"{r.ACTIVE_PODS}). Two or more active pods on a saturated GPU fire GpuSharedAndSaturated.",
                p.COUNT,
                p.Query(f"sum({sel(r.ACTIVE_PODS, GPU)}) or vector(0)"),
                span=4,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Memory by pod",
                "GPU memory each pod (or, outside Kubernetes, each command) holds on this GPU, stacked, under "
                "the GPU's capacity (dashed). Memory that stays flat at its peak while SM activity is low is "
                "a reservation others could use.",
                p.BYTES,
                [
                    p.Query(f"sum by (namespace, pod, process) ({sel(c.CONTAINER_MEMORY, NODE, GPU)})", POD_LEGEND),
                    p.Query(f"sum({sel(c.GPU_MEMORY_TOTAL, *whole)})", "capacity"),
                ],
                stack=True,
                lines=["B"],
                span=24,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Kernel time by pod",
                "Share of time a kernel of each pod ran on this GPU (NVML per-process smUtil, as nvidia-smi pmon "
                "shows; for the only client of an MPS server, the server's), stacked. Time, not SMs: a loop of "
                "tiny kernels fills it while the SMs idle; compare the SM activity panel.",
                p.RATIO,
                [
                    p.Query(
                        f"sum by (namespace, pod, process) ({sel(KERNEL, NODE, GPU, KERNEL_SOURCES)})",
                        POD_LEGEND,
                    )
                ],
                stack=True,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "SM activity by pod",
                "Share of the GPU's SMs busy with each pod's work, stacked, from $source (gpm: the GPU's GPM SM "
                "activity split by kernel-time share; dcgm: DCGM SM_ACTIVE split the same way). Absent on GPUs "
                "with neither. The stack never exceeds what the device measured.",
                p.RATIO,
                [
                    p.Query(
                        f"sum by (namespace, pod, process, source) ({sel(c.CONTAINER_SM_ACTIVE, NODE, GPU, SOURCE)})",
                        POD_LEGEND + " ({{source}})",
                    )
                ],
                stack=True,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Memory bandwidth by pod",
                "Each pod's share of the GPU's DRAM bandwidth from $source, one line per pod and source (not "
                "stacked: with nvml|gpm a whole GPU has both the NVML memory-controller time and the GPM "
                "share, which measure different things and must not be added).",
                p.RATIO,
                [
                    p.Query(
                        f"sum by (namespace, pod, process, source) "
                        f"({sel(c.CONTAINER_MEMORY_BANDWIDTH, NODE, GPU, SOURCE)})",
                        POD_LEGEND + " ({{source}})",
                    )
                ],
                span=24,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Interference: vLLM latency against the kernel time of the pods on this GPU",
                f"p95 inter-token latency of every vLLM server on this GPU (recording rule {r.ITL_P95}, left "
                "axis) against the kernel time of every pod on the GPU (dashed, right axis). Latency "
                "that rises when a neighbour's activity does is interference: give the server its own GPU or "
                "a MIG slice. Fires VllmLatencyRisingWithNeighbour.",
                p.SECONDS,
                [
                    p.Query(
                        f"{r.ITL_P95} and on (namespace, pod) {sel(c.CONTAINER_MEMORY, NODE, GPU, IN_POD)}",
                        "{{namespace}}/{{pod}} p95 inter-token latency",
                    ),
                    p.Query(
                        f"sum by (namespace, pod) ({sel(KERNEL, NODE, GPU, IN_POD, KERNEL_SOURCES)})",
                        "{{namespace}}/{{pod}} kernel time",
                    ),
                ],
                right_axis=[("B", p.RATIO)],
                span=24,
            )
        )
    )


def build() -> dash.Dashboard:
    d = (
        p.new_dashboard(
            UID,
            TITLE,
            "Per node and per GPU: memory stacked by pod, SM activity and bandwidth by pod, MIG instances, "
            "pods that share a GPU, and vLLM latency against its neighbours' activity.",
        )
        .with_variable(p.datasource_variable())
        .with_variable(
            p.query_variable(
                "node",
                "Node",
                f"label_values({c.GPU_INFO.name}, {NODE_LABEL})",
                NODE_HELP,
            )
        )
        .with_variable(
            p.query_variable(
                "gpu",
                "GPU",
                f"label_values({sel(c.GPU_INFO, NODE)}, gpu_uuid)",
                "One GPU of the selected nodes, by UUID (nvidia-smi -L).",
                multi=False,
            )
        )
        .with_variable(p.source_variable())
    )
    return _gpu_row(_health_row(_node_row(d)))
