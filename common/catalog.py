"""The metric catalog: every metric name, type, unit, help text and label set of the project.

Dashboards, alerts, docs and the attribution job import names from here; nobody types a metric name
twice. ``docs/metrics.md`` is generated from this module (``gpuattr docs``) and CI fails when it is stale.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.Enum):
    """How a series behaves. ``INFO`` is a gauge fixed at 1 whose labels carry metadata to join on."""

    GAUGE = "gauge"
    COUNTER = "counter"
    INFO = "info"


class Group(enum.Enum):
    """Which part of the exporter produces a metric (for the docs and for switching groups off)."""

    DEVICE = "GPU devices and MIG instances"
    CONTAINER = "Usage per container (or per process outside Kubernetes)"
    KUBERNETES = "Kubernetes: pods, workloads, allocations"
    ATTRIBUTION = "The attribution job (published by it, not by the node exporter)"
    EXPORTER = "The exporter itself"
    DCGM_COMPAT = "dcgm-exporter compatible names (--dcgm-compat)"


@dataclass(frozen=True)
class Metric:
    """One metric family as exposed on ``/metrics``."""

    name: str
    """Full name as it appears in PromQL (counters include ``_total``)."""
    kind: Kind
    help: str
    """One line: what the value is, its unit, and the ``nvidia-smi`` field or method behind it."""
    labels: tuple[str, ...]
    group: Group
    unit: str = ""
    """OpenMetrics unit; the name ends with ``_<unit>`` when set."""
    notes: str = ""
    """Longer explanation for the docs only."""
    family: str = field(init=False)
    """The OpenMetrics family name (counters without ``_total``)."""

    def __post_init__(self) -> None:
        base = self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name
        object.__setattr__(self, "family", base)


# Label sets -------------------------------------------------------------------------------------------
GPU = ("gpu", "gpu_uuid")
"""``gpu`` is the NVML index (as nvidia-smi shows it); ``gpu_uuid`` the stable identity."""
MIG = ("mig_instance", "mig_profile")
"""GPU-instance id and profile (``3g.40gb``); both empty on a GPU without MIG."""
K8S = ("namespace", "pod", "container")
"""kube-state-metrics names; empty for processes outside Kubernetes."""
PROCESS = ("process",)
"""The command name of processes outside Kubernetes; empty for containers (no PID label, ever)."""
SOURCE = ("source",)
"""Where an activity number comes from: ``gpm`` (Hopper+ GPU performance monitoring), ``nvml``
(NVML utilisation counters), later ``dcgm``. Precedence is documented in docs/metrics.md."""

USAGE_LABELS = GPU + MIG + K8S + PROCESS

# Devices ------------------------------------------------------------------------------------------------
GPU_INFO = Metric(
    "gpuattr_gpu_info",
    Kind.INFO,
    "GPU identity, fixed at 1 (nvidia-smi -L); join on gpu_uuid.",
    ("gpu", "gpu_uuid", "gpu_model", "driver_version", "mig_mode"),
    Group.DEVICE,
)
GPU_UP = Metric(
    "gpuattr_gpu_up",
    Kind.GAUGE,
    "1 when the last sample read this GPU, 0 when it was lost (GpuIsLost), unreadable, or an NVML call on it "
    "has not returned (see gpuattr_exporter_nvml_call_hung).",
    GPU,
    Group.DEVICE,
)
GPU_MEMORY_TOTAL = Metric(
    "gpuattr_gpu_memory_total_bytes",
    Kind.GAUGE,
    "Framebuffer memory of the GPU or MIG instance in bytes (nvidia-smi memory.total).",
    GPU + MIG,
    Group.DEVICE,
    unit="bytes",
)
GPU_MEMORY_USED = Metric(
    "gpuattr_gpu_memory_used_bytes",
    Kind.GAUGE,
    "Framebuffer memory in use on the GPU or MIG instance in bytes (nvidia-smi memory.used).",
    GPU + MIG,
    Group.DEVICE,
    unit="bytes",
)
GPU_UTILIZATION = Metric(
    "gpuattr_gpu_utilization_ratio",
    Kind.GAUGE,
    "Fraction of time one or more kernels ran over the driver's sample period (nvidia-smi "
    "utilization.gpu); not the share of SMs busy. N/A under MIG.",
    GPU,
    Group.DEVICE,
    unit="ratio",
)
GPU_MEMORY_CONTROLLER = Metric(
    "gpuattr_gpu_memory_controller_ratio",
    Kind.GAUGE,
    "Fraction of time device memory was read or written (nvidia-smi utilization.memory).",
    GPU,
    Group.DEVICE,
    unit="ratio",
)
GPU_SM_ACTIVE = Metric(
    "gpuattr_gpu_sm_active_ratio",
    Kind.GAUGE,
    "Share of SMs busy over the last interval: GPM SM_UTIL on Hopper and newer (source=gpm, per GPU "
    "and per MIG instance), else dcgm-exporter's DCGM_FI_PROF_SM_ACTIVE (source=dcgm), else NVML "
    "kernel-time utilisation (source=nvml).",
    GPU + MIG + SOURCE,
    Group.DEVICE,
    unit="ratio",
)
GPU_SM_OCCUPANCY = Metric(
    "gpuattr_gpu_sm_occupancy_ratio",
    Kind.GAUGE,
    "Resident warps against the theoretical maximum over the last interval: GPM SM_OCCUPANCY on Hopper+ "
    "(source=gpm), else dcgm-exporter's DCGM_FI_PROF_SM_OCCUPANCY (source=dcgm).",
    GPU + MIG + SOURCE,
    Group.DEVICE,
    unit="ratio",
)
GPU_TENSOR_ACTIVE = Metric(
    "gpuattr_gpu_tensor_active_ratio",
    Kind.GAUGE,
    "Fraction of time the SMs ran any tensor-core instruction over the last interval: GPM ANY_TENSOR_UTIL "
    "on Hopper+ (source=gpm), else DCGM_FI_PROF_PIPE_TENSOR_ACTIVE (source=dcgm).",
    GPU + MIG + SOURCE,
    Group.DEVICE,
    unit="ratio",
)
GPU_ENGINE_ACTIVE = Metric(
    "gpuattr_gpu_engine_active_ratio",
    Kind.GAUGE,
    "Fraction of time the graphics or compute engine was active over the last interval: GPM GRAPHICS_UTIL "
    "on Hopper+ (source=gpm, per GPU and per MIG instance, where NVML utilisation is N/A), else "
    "dcgm-exporter's DCGM_FI_PROF_GR_ENGINE_ACTIVE (source=dcgm).",
    GPU + MIG + SOURCE,
    Group.DEVICE,
    unit="ratio",
)
GPU_MEMORY_BANDWIDTH = Metric(
    "gpuattr_gpu_memory_bandwidth_ratio",
    Kind.GAUGE,
    "DRAM bandwidth used against the theoretical peak over the last interval: GPM DRAM_BW_UTIL on "
    "Hopper+ (source=gpm), else DCGM_FI_PROF_DRAM_ACTIVE (source=dcgm), else the memory controller's busy "
    "time (source=nvml).",
    GPU + MIG + SOURCE,
    Group.DEVICE,
    unit="ratio",
)
GPU_POWER = Metric(
    "gpuattr_gpu_power_watts",
    Kind.GAUGE,
    "Board power draw in watts (nvidia-smi power.draw).",
    GPU,
    Group.DEVICE,
    unit="watts",
)
GPU_ENERGY = Metric(
    "gpuattr_gpu_energy_joules_total",
    Kind.COUNTER,
    "Energy used since the driver loaded, in joules (NVML total energy consumption).",
    GPU,
    Group.DEVICE,
    unit="joules",
)
GPU_TEMPERATURE = Metric(
    "gpuattr_gpu_temperature_celsius",
    Kind.GAUGE,
    "GPU core temperature in degrees Celsius (nvidia-smi temperature.gpu).",
    GPU,
    Group.DEVICE,
    unit="celsius",
)

# Device health: what tells a failing or throttled GPU from a busy one ------------------------------------
GPU_SM_CLOCK = Metric(
    "gpuattr_gpu_sm_clock_hertz",
    Kind.GAUGE,
    "SM clock in hertz (nvidia-smi clocks.current.sm); below the boost clock while idle or throttled.",
    GPU,
    Group.DEVICE,
    unit="hertz",
)
GPU_MEMORY_CLOCK = Metric(
    "gpuattr_gpu_memory_clock_hertz",
    Kind.GAUGE,
    "Memory clock in hertz (nvidia-smi clocks.current.memory).",
    GPU,
    Group.DEVICE,
    unit="hertz",
)
GPU_MEMORY_TEMPERATURE = Metric(
    "gpuattr_gpu_memory_temperature_celsius",
    Kind.GAUGE,
    "HBM temperature in degrees Celsius (nvidia-smi temperature.memory); absent on GPUs without a memory sensor.",
    GPU,
    Group.DEVICE,
    unit="celsius",
)
GPU_MEMORY_RESERVED = Metric(
    "gpuattr_gpu_memory_reserved_bytes",
    Kind.GAUGE,
    "Framebuffer memory the driver and firmware reserve, in bytes (nvidia-smi memory.reserved); no process holds it.",
    GPU,
    Group.DEVICE,
    unit="bytes",
)
GPU_PCIE_REPLAYS = Metric(
    "gpuattr_gpu_pcie_replays_total",
    Kind.COUNTER,
    "PCIe packets the GPU had to resend since the driver loaded (nvidia-smi pci.replay_counter); a count "
    "that keeps rising points at the link, riser or slot.",
    GPU,
    Group.DEVICE,
)
GPU_NVLINK_BYTES = Metric(
    "gpuattr_gpu_nvlink_bytes_total",
    Kind.COUNTER,
    "NVLink data sent and received over all links since the driver loaded, in bytes (NVML NVLink throughput "
    "counters); absent on GPUs without NVLink.",
    GPU,
    Group.DEVICE,
    unit="bytes",
)
GPU_REMAPPED_ROWS = Metric(
    "gpuattr_gpu_remapped_rows",
    Kind.GAUGE,
    "HBM rows the GPU replaced with spare rows, by the kind of error that caused it (kind=correctable or "
    "uncorrectable; nvidia-smi -q remapped rows); absent on GPUs without row remapping.",
    (*GPU, "kind"),
    Group.DEVICE,
)
GPU_ROW_REMAP_PENDING = Metric(
    "gpuattr_gpu_row_remap_pending",
    Kind.GAUGE,
    "1 when a row remap waits for the next GPU reset (nvidia-smi -q remapped rows pending), else 0.",
    GPU,
    Group.DEVICE,
)
GPU_ROW_REMAP_FAILED = Metric(
    "gpuattr_gpu_row_remap_failed",
    Kind.GAUGE,
    "1 when a row remap failed for lack of spare rows (nvidia-smi -q remapped rows failure), else 0.",
    GPU,
    Group.DEVICE,
)
GPU_XID_ERRORS = Metric(
    "gpuattr_gpu_xid_errors_total",
    Kind.COUNTER,
    "XID errors the driver raised for the GPU since the exporter started, by XID code (NVML XID events; "
    "'NVRM: Xid' in the kernel log); absent where the driver delivers no XID events.",
    (*GPU, "xid"),
    Group.DEVICE,
    notes=(
        "A series appears with the first error of its code, so alerts also fire on a series that is new. "
        "Codes caused by the workload (13 graphics engine exception, 31 memory page fault, 43 GPU stopped "
        "processing, 45 preemptive cleanup) are the application's to fix; codes that point at the GPU, its "
        "memory or its links (48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140) are the platform's: see the "
        "GpuXidHardwareError runbook. The counts restart with the exporter; the kernel log keeps the history."
    ),
)

GPU_MPS_KERNEL_ACTIVE = Metric(
    "gpuattr_gpu_mps_kernel_active_ratio",
    Kind.GAUGE,
    "On a GPU shared through MPS: share of the last interval in which a kernel of any MPS client ran (the "
    "nvidia-cuda-mps-server's smUtil, to which NVML credits all its clients' work). Shared by the clients "
    "listed in gpuattr_gpu_mps_clients; not a workload of its own.",
    GPU,
    Group.DEVICE,
    unit="ratio",
)
GPU_MPS_CLIENTS = Metric(
    "gpuattr_gpu_mps_clients",
    Kind.GAUGE,
    "Processes running as clients of the GPU's MPS server (nvmlDeviceGetMPSComputeRunningProcesses; "
    "nvidia-smi type M+C).",
    GPU,
    Group.DEVICE,
)
GPU_MPS_SERVER_MEMORY = Metric(
    "gpuattr_gpu_mps_server_memory_bytes",
    Kind.GAUGE,
    "GPU memory held by the MPS server process itself (nvidia-cuda-mps-server), in bytes: part of the GPU's "
    "used memory that belongs to no workload.",
    GPU,
    Group.DEVICE,
    unit="bytes",
)

# Usage per container --------------------------------------------------------------------------------
CONTAINER_MEMORY = Metric(
    "gpuattr_container_gpu_memory_bytes",
    Kind.GAUGE,
    "GPU memory held by the container's processes on this GPU or MIG instance, in bytes (sum of "
    "NVML per-process usedGpuMemory; nvidia-smi --query-compute-apps=used_memory).",
    USAGE_LABELS,
    Group.CONTAINER,
    unit="bytes",
)
CONTAINER_PROCESSES = Metric(
    "gpuattr_container_gpu_processes",
    Kind.GAUGE,
    "Number of the container's processes with a context on this GPU or MIG instance.",
    USAGE_LABELS,
    Group.CONTAINER,
)
CONTAINER_KERNEL_ACTIVE = Metric(
    "gpuattr_container_gpu_kernel_active_ratio",
    Kind.GAUGE,
    "Share of the last interval in which a kernel of the container was running on this GPU: time, not "
    "SMs (NVML per-process smUtil summed over its processes, nvidia-smi pmon's sm column; source=nvml). "
    "The only client of an MPS server gets the server's smUtil (source=mps). A loop of tiny kernels can "
    "read 20% here while its SMs are nearly idle: compare gpuattr_container_gpu_sm_active_ratio.",
    USAGE_LABELS + SOURCE,
    Group.CONTAINER,
    unit="ratio",
    notes="Absent, with gpuattr_container_gpu_activity_unknown, where the driver does not measure it.",
)
CONTAINER_SM_ACTIVE = Metric(
    "gpuattr_container_gpu_sm_active_ratio",
    Kind.GAUGE,
    "Share of the GPU's SMs busy with the container's work over the last interval, never more than the "
    "device measured: the GPU's GPM SM activity split by the containers' kernel-time shares (source=gpm; a "
    "MIG instance's own GPM for its only container), or dcgm-exporter's DCGM_FI_PROF_SM_ACTIVE split the "
    "same way (source=dcgm). Absent on GPUs with neither. Select one source; never sum over it.",
    USAGE_LABELS + SOURCE,
    Group.CONTAINER,
    unit="ratio",
)
CONTAINER_ACTIVITY_UNKNOWN = Metric(
    "gpuattr_container_gpu_activity_unknown",
    Kind.GAUGE,
    "1 where the container holds this GPU or MIG instance but the driver does not measure its activity, "
    "so its activity series are absent (unknown, not idle): reason=mps_shared (one of several MPS "
    "clients; NVML credits all their work to the MPS server), mig_shared (one of several containers of a "
    "MIG instance), driver (no per-process samples this interval).",
    (*USAGE_LABELS, "reason"),
    Group.CONTAINER,
)
CONTAINER_MEMORY_BANDWIDTH = Metric(
    "gpuattr_container_gpu_memory_bandwidth_ratio",
    Kind.GAUGE,
    "The container's share of DRAM bandwidth over the last interval. source=gpm: the GPU's GPM "
    "DRAM_BW_UTIL split in proportion to each process's memory-controller activity (memUtil); "
    "source=nvml: the process's memory-controller busy time (memUtil) itself; source=dcgm: "
    "DCGM_FI_PROF_DRAM_ACTIVE split by memUtil. Select one source; never sum over it.",
    USAGE_LABELS + SOURCE,
    Group.CONTAINER,
    unit="ratio",
)

CONTAINER_SM_OCCUPANCY = Metric(
    "gpuattr_container_gpu_sm_occupancy_ratio",
    Kind.GAUGE,
    "The container's share of the GPU's SM occupancy: DCGM_FI_PROF_SM_OCCUPANCY split by the processes' "
    "smUtil (source=dcgm); the whole instance's value for the only container of a MIG instance.",
    USAGE_LABELS + SOURCE,
    Group.CONTAINER,
    unit="ratio",
)
CONTAINER_TENSOR_ACTIVE = Metric(
    "gpuattr_container_gpu_tensor_active_ratio",
    Kind.GAUGE,
    "The container's share of tensor-pipe activity: DCGM_FI_PROF_PIPE_TENSOR_ACTIVE split by smUtil (source=dcgm).",
    USAGE_LABELS + SOURCE,
    Group.CONTAINER,
    unit="ratio",
)
CONTAINER_ENGINE_ACTIVE = Metric(
    "gpuattr_container_gpu_engine_active_ratio",
    Kind.GAUGE,
    "The container's share of graphics/compute engine activity: the GPU's GPM GRAPHICS_UTIL split by the "
    "containers' kernel-time shares (source=gpm; a MIG instance's own for its only container), or "
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE split the same way (source=dcgm). Select one source; never sum over it.",
    USAGE_LABELS + SOURCE,
    Group.CONTAINER,
    unit="ratio",
)

# Kubernetes: pods, workloads, allocations -------------------------------------------------------------
POD_INFO = Metric(
    "gpuattr_pod_info",
    Kind.INFO,
    "A GPU pod on this node, fixed at 1: its owner workload, the model it serves, its workload class "
    "(inference, training, batch, experimentation) and team. Join on namespace and pod.",
    ("namespace", "pod", "workload_kind", "workload", "model", "workload_class", "team"),
    Group.KUBERNETES,
    notes="Only pods that hold or were allocated a GPU on this node. The model comes from the pod label or "
    "annotation named by --model-label, else the container's arguments and environment in the pod spec, else "
    "the GPU process's command line (parsed, never exported).",
)
CONTAINER_ALLOCATED = Metric(
    "gpuattr_container_gpu_allocated",
    Kind.GAUGE,
    "1 per GPU, MIG instance or shared replica the kubelet allocated to the container (pod-resources API). "
    "sharing: exclusive, time-slicing (a replica <uuid>::<n>), mps (a replica of a GPU whose MPS server "
    "runs), mig, or mig-shared. Beside the usage series it makes allocated-but-idle and "
    "used-but-never-allocated one expression.",
    GPU + MIG + K8S + ("resource", "sharing"),
    Group.KUBERNETES,
)
GPU_ALLOCATABLE = Metric(
    "gpuattr_gpu_allocatable_units",
    Kind.GAUGE,
    "Device IDs the kubelet advertises for the GPU or MIG instance (pod-resources GetAllocatableResources), "
    "held or not: 1 for a device given whole, N for one the device plugin shares as N replicas "
    "(<uuid>::0 to <uuid>::N-1). sharing as in gpuattr_container_gpu_allocated. A replica is 1/N of the device.",
    GPU + MIG + ("resource", "sharing"),
    Group.KUBERNETES,
    notes="Read when the agent starts, every 12 samples after (the set changes only when the device plugin "
    "restarts) and as soon as the kubelet answers again after an outage. Absent, never 0, where the kubelet "
    "does not serve GetAllocatableResources (before 1.23, or switched off): the agent logs that once, and the "
    "job and the review then count a shared device as 1/N for N containers holding it.",
)

# Attribution job (vLLM memory split), published by `gpuattr attribute` ---------------------------------
VLLM_MEMORY = Metric(
    "gpuattr_vllm_memory_bytes",
    Kind.GAUGE,
    "A vLLM server's GPU memory on one GPU over the job's window, split by component: weights, kv_used "
    "(peak KV cache in use), kv_idle (KV cache reserved but never used: allocated minus peak), overhead "
    "(CUDA context, activations, graphs, NCCL: the rest of what NVML shows).",
    ("namespace", "pod", "gpu_uuid", "model", "component"),
    Group.ATTRIBUTION,
    unit="bytes",
)
VLLM_GPU_MEMORY_UTILIZATION = Metric(
    "gpuattr_vllm_gpu_memory_utilization_ratio",
    Kind.GAUGE,
    "The --gpu-memory-utilization a vLLM server runs with: the share of each GPU's memory it reserves "
    "(from its arguments; vLLM's default 0.9 when they do not set it).",
    ("namespace", "pod", "model"),
    Group.ATTRIBUTION,
    unit="ratio",
)
VLLM_RECOMMENDED_GPU_MEMORY_UTILIZATION = Metric(
    "gpuattr_vllm_recommended_gpu_memory_utilization_ratio",
    Kind.GAUGE,
    "The --gpu-memory-utilization the job recommends for a vLLM server: its weights, overhead and peak KV "
    "cache in use over the window plus headroom, as a share of the GPU's memory.",
    ("namespace", "pod", "model"),
    Group.ATTRIBUTION,
    unit="ratio",
)
VLLM_RECLAIMABLE = Metric(
    "gpuattr_vllm_reclaimable_bytes",
    Kind.GAUGE,
    "GPU memory a vLLM server would give back on one GPU if it ran with the recommended "
    "--gpu-memory-utilization, in bytes (configured minus recommended share, times the GPU's memory).",
    ("namespace", "pod", "gpu_uuid", "model"),
    Group.ATTRIBUTION,
    unit="bytes",
)

REVIEW_GPUS_ALLOCATED = Metric(
    "gpuattr_review_gpus_allocated",
    Kind.GAUGE,
    "GPUs allocated on average over the capacity review's window, per team, namespace, workload, model or "
    "workload class (published by `gpuattr review --pushgateway`).",
    ("dimension", "name", "window"),
    Group.ATTRIBUTION,
)
REVIEW_GPUS_USED = Metric(
    "gpuattr_review_gpus_used",
    Kind.GAUGE,
    "GPUs' worth of SM activity used on average over the review's window, same dimensions.",
    ("dimension", "name", "window"),
    Group.ATTRIBUTION,
)
REVIEW_IDLE_GPU_HOURS = Metric(
    "gpuattr_review_idle_gpu_hours",
    Kind.GAUGE,
    "GPU-hours allocated while idle over the review's window, same dimensions.",
    ("dimension", "name", "window"),
    Group.ATTRIBUTION,
)
REVIEW_GPUS_FREEABLE = Metric(
    "gpuattr_review_gpus_freeable",
    Kind.GAUGE,
    "GPUs the review's consolidation plan would free (right-sized, shared where the classes allow).",
    ("window",),
    Group.ATTRIBUTION,
)

JOB_UP = Metric(
    "gpuattr_job_up",
    Kind.GAUGE,
    "1 when the last run of `gpuattr attribute` or `gpuattr review` (command) read its essential inputs and "
    "published its figures, 0 when it failed and published nothing (the last good figures stay).",
    ("command",),
    Group.ATTRIBUTION,
    notes="Served with the figures by `gpuattr attribute --serve`; pushed with `--pushgateway` to a group of its "
    "own (job `gpuattr-attribution-health` or `gpuattr-review-health`), so that a failed run leaves the figures' "
    "group untouched. The label is `command`, not `job`: the Pushgateway overwrites a pushed `job` label with its "
    "grouping key's.",
)
JOB_LAST_SUCCESS = Metric(
    "gpuattr_job_last_success_timestamp_seconds",
    Kind.GAUGE,
    "Unix time at which the last successful run of the command ended, in seconds: the age of the figures "
    "published (absent until a run succeeds; a failed run's push leaves the last value in place).",
    ("command",),
    Group.ATTRIBUTION,
    unit="seconds",
)
JOB_LAST_RUN = Metric(
    "gpuattr_job_last_run_timestamp_seconds",
    Kind.GAUGE,
    "Unix time at which the last run of the command ended, in seconds, whether it succeeded or failed.",
    ("command",),
    Group.ATTRIBUTION,
    unit="seconds",
)
JOB_INPUT_FAILED = Metric(
    "gpuattr_job_input_failed",
    Kind.GAUGE,
    "1 when the last run could not read this input (its Prometheus query failed), 0 when it could; "
    "essential says whether the run fails without it.",
    ("command", "input", "essential"),
    Group.ATTRIBUTION,
)

# The exporter itself --------------------------------------------------------------------------------
EXPORTER_BUILD_INFO = Metric(
    "gpuattr_exporter_build_info",
    Kind.INFO,
    "The exporter's version and the NVML binding's, fixed at 1.",
    ("version", "nvml_binding_version", "mode"),
    Group.EXPORTER,
)
EXPORTER_NVML_UP = Metric(
    "gpuattr_exporter_nvml_up",
    Kind.GAUGE,
    "1 when NVML is initialised and answering, 0 when the driver or library is missing (retried).",
    (),
    Group.EXPORTER,
)
EXPORTER_SAMPLES = Metric(
    "gpuattr_exporter_samples_total",
    Kind.COUNTER,
    "Samples taken by the background sampler.",
    (),
    Group.EXPORTER,
)
EXPORTER_SAMPLE_DURATION = Metric(
    "gpuattr_exporter_sample_duration_seconds",
    Kind.GAUGE,
    "Wall time the last sample took, in seconds (all NVML calls plus rendering).",
    (),
    Group.EXPORTER,
    unit="seconds",
)
EXPORTER_SAMPLE_CPU = Metric(
    "gpuattr_exporter_sample_cpu_seconds_total",
    Kind.COUNTER,
    "CPU time the sampler thread and its NVML threads spent sampling and rendering, in seconds.",
    (),
    Group.EXPORTER,
    unit="seconds",
)
EXPORTER_LAST_SAMPLE = Metric(
    "gpuattr_exporter_last_sample_timestamp_seconds",
    Kind.GAUGE,
    "Unix time at which the served snapshot was taken, in seconds.",
    (),
    Group.EXPORTER,
    unit="seconds",
)
EXPORTER_NVML_ERRORS = Metric(
    "gpuattr_exporter_nvml_errors_total",
    Kind.COUNTER,
    "NVML calls that failed, by call and NVML error code (NotSupported is counted once and the call "
    "is not retried on that GPU; ExporterTimeout counts a call that did not return within --nvml-timeout).",
    ("call", "code"),
    Group.EXPORTER,
)
EXPORTER_NVML_HUNG = Metric(
    "gpuattr_exporter_nvml_call_hung",
    Kind.GAUGE,
    "1 while an NVML call has not returned within --nvml-timeout: on that GPU (its gpu_up is 0 and it is "
    "skipped until the call returns; the other GPUs are read), or on the node when gpu is empty.",
    (*GPU, "call"),
    Group.EXPORTER,
    notes="A call into the driver cannot be interrupted: the thread that made it waits inside it, and the exporter "
    "sends that GPU nothing more until it returns. A call that hangs for minutes usually means a wedged driver or "
    "a GPU about to fall off the bus; the series names the call so the driver's log can be matched to it.",
)
EXPORTER_CLAMPED = Metric(
    "gpuattr_exporter_utilization_clamped_total",
    Kind.COUNTER,
    "Per-process utilisation samples above 100% that the driver returned and the exporter clamped.",
    (),
    Group.EXPORTER,
)
EXPORTER_VANISHED = Metric(
    "gpuattr_exporter_processes_vanished_total",
    Kind.COUNTER,
    "Processes NVML listed that exited before they could be attributed; dropped from the sample.",
    (),
    Group.EXPORTER,
)
EXPORTER_USAGES_DROPPED = Metric(
    "gpuattr_exporter_usages_dropped_total",
    Kind.COUNTER,
    "Per-container usage rows left out of a sample because the node had more (GPU, owner) pairs than "
    "--max-usages allows (the smallest memory holders go first).",
    (),
    Group.EXPORTER,
)
EXPORTER_HTTP_REJECTED = Metric(
    "gpuattr_exporter_http_rejected_total",
    Kind.COUNTER,
    "HTTP connections and requests answered 503 (Retry-After: 1), or dropped as too slow, by reason: "
    "connections (more than --max-open-connections open), client_connections (more than "
    "--max-client-connections from one address), busy (more than --max-connections responses at once), "
    "client_busy (more than a quarter of them to one address), rate (over --max-request-rate for over a "
    "second), client_rate (one address over --max-client-request-rate for over a second), slow_client "
    "(headers or response not through within --request-timeout).",
    ("reason",),
    Group.EXPORTER,
    notes="Each connection is served on a thread and each request is Python work; a crowd of connections or "
    "thousands of requests a second starve the sampler thread of the interpreter lock and samples slip "
    "(bench/scrape_load.py). Prometheus scrapes a node a few times a minute and retries at its next interval. "
    "The limits per address make a greedy or slow client cost only itself, and /healthz and /readyz never "
    "count against the scrapes' budget (bench/hostile_clients.py).",
)
EXPORTER_OTLP_EXPORTS = Metric(
    "gpuattr_exporter_otlp_exports_total",
    Kind.COUNTER,
    "OTLP pushes of the snapshot, by result (success, failure).",
    ("result",),
    Group.EXPORTER,
)

EXPORTER_KUBERNETES_UP = Metric(
    "gpuattr_exporter_kubernetes_up",
    Kind.GAUGE,
    "1 while the pod watch on the Kubernetes API is healthy; 0 while it is unreachable (pods are served "
    "from the cache meanwhile).",
    (),
    Group.EXPORTER,
)
EXPORTER_KUBERNETES_ERRORS = Metric(
    "gpuattr_exporter_kubernetes_errors_total",
    Kind.COUNTER,
    "Failed Kubernetes API requests, by reason (list, watch, owner_lookup, http_<status>).",
    ("reason",),
    Group.EXPORTER,
)
EXPORTER_KUBELET_UP = Metric(
    "gpuattr_exporter_kubelet_up",
    Kind.GAUGE,
    "1 when the last kubelet pod-resources call answered; 0 when the socket is missing or refuses "
    "(allocations are served as last known).",
    (),
    Group.EXPORTER,
)
EXPORTER_HOST_PIDS_VISIBLE = Metric(
    "gpuattr_exporter_host_pids_visible",
    Kind.GAUGE,
    "1 when the GPU processes NVML lists exist under --proc-root; 0 when the exporter cannot see host PIDs "
    "(the DaemonSet lacks hostPID: true) and processes cannot be mapped to containers.",
    (),
    Group.EXPORTER,
)
EXPORTER_UNATTRIBUTED = Metric(
    "gpuattr_exporter_unattributed_processes",
    Kind.GAUGE,
    "GPU processes of the last sample not mapped to a container, by reason (no_host_pid, pod_unknown, "
    "proc_unreadable); they are reported under their command name instead.",
    ("reason",),
    Group.EXPORTER,
)

EXPORTER_DCGM_UP = Metric(
    "gpuattr_exporter_dcgm_up",
    Kind.GAUGE,
    "1 when the last scrape of dcgm-exporter (--dcgm-exporter-url) gave profiling fields; 0 when it was "
    "down, slow or answered garbage (no DCGM value is then served for that sample).",
    (),
    Group.EXPORTER,
)
EXPORTER_DCGM_ERRORS = Metric(
    "gpuattr_exporter_dcgm_errors_total",
    Kind.COUNTER,
    "Failed dcgm-exporter scrapes, by reason (unreachable, timeout, http, parse, too_large, no_fields).",
    ("reason",),
    Group.EXPORTER,
)
EXPORTER_DCGM_DURATION = Metric(
    "gpuattr_exporter_dcgm_scrape_duration_seconds",
    Kind.GAUGE,
    "Wall time of the last dcgm-exporter scrape, in seconds.",
    (),
    Group.EXPORTER,
    unit="seconds",
)

# dcgm-exporter compatible names (--dcgm-compat) ------------------------------------------------------
DCGM_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "GPU_I_PROFILE", "GPU_I_ID", "DCGM_FI_DRIVER_VERSION")
"""dcgm-exporter's label names: gpu index, UUID, ``nvidiaN`` device, model, host, MIG profile and id, and the
driver version (DCGM_FI_DRIVER_VERSION, a "label" field of its default counters). ``promtool check metrics``
objects to ``modelName`` (camelCase) and to counters without ``_total``; both are kept because what was built
for dcgm-exporter selects on them. These are the only lint findings of ``--dcgm-compat``. In Kubernetes mode
(kubelet pod-resources on) the series also carry ``namespace``, ``pod`` and ``container`` (:data:`DCGM_POD_LABELS`);
the host label is ``Hostname`` or ``hostname`` by generation (:class:`DcgmGeneration`)."""
DCGM_POD_LABELS = K8S
"""What dcgm-exporter's Kubernetes mode adds to the series of a GPU or MIG instance allocated to a pod."""


@dataclass(frozen=True)
class DcgmGeneration:
    """A span of dcgm-exporter releases whose pages look alike, as ``--dcgm-compat`` selects it."""

    name: str
    releases: str
    host_label: str
    """``Hostname`` until PR #655 (NVIDIA/dcgm-exporter, merged after 4.5.3-4.8.2), ``hostname`` since."""


DCGM_GENERATIONS = (
    DcgmGeneration("3.x", "dcgm-exporter 3.x (to 3.3.9-3.6.1)", "Hostname"),
    DcgmGeneration("4.x", "dcgm-exporter 4.x releases (4.1.1-4.0.3 to 4.5.3-4.8.2)", "Hostname"),
    DcgmGeneration("next", "dcgm-exporter's main branch since PR #655 (in no release up to 4.5.3-4.8.2)", "hostname"),
)
DCGM_DEFAULT_GENERATION = "4.x"
"""What a bare ``--dcgm-compat`` (or ``GPUATTR_DCGM_COMPAT=true``) selects: the newest released page layout."""


def dcgm_generation(name: str) -> DcgmGeneration:
    """The generation called ``name``; KeyError when there is none."""
    for g in DCGM_GENERATIONS:
        if g.name == name:
            return g
    raise KeyError(name)


@dataclass(frozen=True)
class DcgmVariant:
    """How one generation differs from the default for a field: its type or help."""

    kind: Kind | None = None
    help: str | None = None


@dataclass(frozen=True)
class DcgmField:
    """One dcgm-exporter field: its metric (as the default generation serves it), what it is made from, and
    the conversion from our unit (bytes, ratio, watts, joules, MHz, °C, bytes/s, counts) to DCGM's.

    A counter of dcgm-exporter has no ``_total`` suffix: its ``# TYPE`` line names the field as it is.
    """

    metric: Metric
    source: str
    """What we read (for the docs)."""
    scale: float = 1.0
    """DCGM's value = ours × scale (MiB: 2**-20, %: 100, mJ: 1000)."""
    integer: bool = False
    """Rounded to an integer, as DCGM serves this field."""
    per_instance: bool = False
    """Also served per MIG instance (GPU_I_ID), from the instance's own reading."""
    variants: tuple[tuple[str, DcgmVariant], ...] = ()
    """(generation, difference) where a generation's default counters typed or described it otherwise."""

    def variant(self, generation: str) -> tuple[Kind, str]:
        """The type and help this field has in ``generation``."""
        for name, v in self.variants:
            if name == generation:
                return v.kind or self.metric.kind, v.help or self.metric.help
        return self.metric.kind, self.metric.help


def _dcgm(name: str, kind: Kind, help: str, notes: str = "") -> Metric:
    return Metric(name, kind, help, DCGM_LABELS, Group.DCGM_COMPAT, notes=notes)


_MIB = 2.0**-20

DCGM_SM_CLOCK = _dcgm("DCGM_FI_DEV_SM_CLOCK", Kind.GAUGE, "SM clock frequency (in MHz).")
DCGM_MEM_CLOCK = _dcgm("DCGM_FI_DEV_MEM_CLOCK", Kind.GAUGE, "Memory clock frequency (in MHz).")
DCGM_MEMORY_TEMP = _dcgm("DCGM_FI_DEV_MEMORY_TEMP", Kind.GAUGE, "Memory temperature (in C).")
DCGM_GPU_TEMP = _dcgm("DCGM_FI_DEV_GPU_TEMP", Kind.GAUGE, "GPU temperature (in C).")
DCGM_POWER_USAGE = _dcgm("DCGM_FI_DEV_POWER_USAGE", Kind.GAUGE, "Power draw (in W).")
DCGM_TOTAL_ENERGY = _dcgm(
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    Kind.COUNTER,
    "Total energy consumption since boot (in mJ).",
    notes="A counter without the _total suffix, as dcgm-exporter writes it.",
)
DCGM_PCIE_REPLAY = _dcgm("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", Kind.COUNTER, "Total number of PCIe retries.")
DCGM_GPU_UTIL = _dcgm("DCGM_FI_DEV_GPU_UTIL", Kind.GAUGE, "GPU utilization (in %).")
DCGM_MEM_COPY_UTIL = _dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", Kind.GAUGE, "Memory utilization (in %).")
DCGM_ENC_UTIL = _dcgm("DCGM_FI_DEV_ENC_UTIL", Kind.GAUGE, "Encoder utilization (in %).")
DCGM_DEC_UTIL = _dcgm("DCGM_FI_DEV_DEC_UTIL", Kind.GAUGE, "Decoder utilization (in %).")
DCGM_XID_ERRORS = _dcgm("DCGM_FI_DEV_XID_ERRORS", Kind.GAUGE, "Value of the last XID error encountered.")
DCGM_FB_FREE = _dcgm("DCGM_FI_DEV_FB_FREE", Kind.GAUGE, "Framebuffer memory free (in MiB).")
DCGM_FB_USED = _dcgm("DCGM_FI_DEV_FB_USED", Kind.GAUGE, "Framebuffer memory used (in MiB).")
DCGM_FB_RESERVED = _dcgm("DCGM_FI_DEV_FB_RESERVED", Kind.GAUGE, "Framebuffer memory reserved (in MiB).")
DCGM_UNCORRECTABLE_REMAPPED_ROWS = _dcgm(
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", Kind.COUNTER, "Number of remapped rows for uncorrectable errors"
)
DCGM_CORRECTABLE_REMAPPED_ROWS = _dcgm(
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", Kind.COUNTER, "Number of remapped rows for correctable errors"
)
DCGM_ROW_REMAP_FAILURE = _dcgm("DCGM_FI_DEV_ROW_REMAP_FAILURE", Kind.GAUGE, "Whether remapping of rows has failed")
DCGM_GR_ENGINE_ACTIVE = _dcgm(
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE", Kind.GAUGE, "Ratio of time the graphics engine is active (from NVML GPM)."
)
DCGM_SM_ACTIVE = _dcgm(
    "DCGM_FI_PROF_SM_ACTIVE",
    Kind.GAUGE,
    "The ratio of cycles an SM has at least 1 warp assigned (from NVML GPM SM_UTIL).",
)
DCGM_SM_OCCUPANCY = _dcgm(
    "DCGM_FI_PROF_SM_OCCUPANCY",
    Kind.GAUGE,
    "The ratio of number of warps resident on an SM (from NVML GPM SM_OCCUPANCY).",
)
DCGM_TENSOR_ACTIVE = _dcgm(
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    Kind.GAUGE,
    "Ratio of cycles any tensor pipe is active (from NVML GPM ANY_TENSOR_UTIL).",
)
DCGM_DRAM_ACTIVE = _dcgm(
    "DCGM_FI_PROF_DRAM_ACTIVE",
    Kind.GAUGE,
    "Ratio of cycles the device memory interface is active sending or receiving data (from NVML GPM DRAM_BW_UTIL).",
)
DCGM_PCIE_TX = _dcgm(
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    Kind.GAUGE,
    "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes "
    "per second.",
)
DCGM_PCIE_RX = _dcgm(
    "DCGM_FI_PROF_PCIE_RX_BYTES",
    Kind.GAUGE,
    "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes "
    "per second.",
)

_PCIE_3X_TX = DcgmVariant(Kind.COUNTER, "Total number of bytes transmitted through PCIe TX via NVML.")
_PCIE_3X_RX = DcgmVariant(Kind.COUNTER, "Total number of bytes received through PCIe RX via NVML.")

DCGM_FIELDS: tuple[DcgmField, ...] = (
    DcgmField(DCGM_SM_CLOCK, "nvmlDeviceGetClockInfo(SM), MHz"),
    DcgmField(DCGM_MEM_CLOCK, "nvmlDeviceGetClockInfo(MEM), MHz"),
    DcgmField(DCGM_MEMORY_TEMP, "NVML memory (HBM) temperature, °C"),
    DcgmField(DCGM_GPU_TEMP, "nvmlDeviceGetTemperature, °C"),
    DcgmField(DCGM_POWER_USAGE, "nvmlDeviceGetPowerUsage, W"),
    DcgmField(DCGM_TOTAL_ENERGY, "nvmlDeviceGetTotalEnergyConsumption, J × 1000", scale=1000.0),
    DcgmField(DCGM_PCIE_TX, "nvmlDeviceGetPcieThroughput(TX), bytes/s", variants=(("3.x", _PCIE_3X_TX),)),
    DcgmField(DCGM_PCIE_RX, "nvmlDeviceGetPcieThroughput(RX), bytes/s", variants=(("3.x", _PCIE_3X_RX),)),
    DcgmField(DCGM_PCIE_REPLAY, "nvmlDeviceGetPcieReplayCounter"),
    DcgmField(DCGM_GPU_UTIL, "utilization.gpu, ratio × 100", scale=100.0, integer=True),
    DcgmField(DCGM_MEM_COPY_UTIL, "utilization.memory, ratio × 100", scale=100.0, integer=True),
    DcgmField(DCGM_ENC_UTIL, "nvmlDeviceGetEncoderUtilization, %", scale=100.0, integer=True),
    DcgmField(DCGM_DEC_UTIL, "nvmlDeviceGetDecoderUtilization, %", scale=100.0, integer=True),
    DcgmField(DCGM_XID_ERRORS, "the last XID event the driver reported"),
    DcgmField(
        DCGM_FB_FREE,
        "memory total − used, bytes / 2**20; per MIG instance on a MIG GPU",
        scale=_MIB,
        integer=True,
        per_instance=True,
        variants=(("3.x", DcgmVariant(help="Frame buffer memory free (in MB).")),),
    ),
    DcgmField(
        DCGM_FB_USED,
        "memory used, bytes / 2**20; per MIG instance on a MIG GPU",
        scale=_MIB,
        integer=True,
        per_instance=True,
        variants=(("3.x", DcgmVariant(help="Frame buffer memory used (in MB).")),),
    ),
    DcgmField(DCGM_FB_RESERVED, "nvmlDeviceGetMemoryInfo_v2 reserved, bytes / 2**20", scale=_MIB, integer=True),
    DcgmField(DCGM_UNCORRECTABLE_REMAPPED_ROWS, "nvmlDeviceGetRemappedRows, uncorrectable"),
    DcgmField(DCGM_CORRECTABLE_REMAPPED_ROWS, "nvmlDeviceGetRemappedRows, correctable"),
    DcgmField(DCGM_ROW_REMAP_FAILURE, "nvmlDeviceGetRemappedRows, failure flag (1 or 0)"),
    DcgmField(DCGM_GR_ENGINE_ACTIVE, "GPM GRAPHICS_UTIL / 100", per_instance=True),
    DcgmField(DCGM_SM_ACTIVE, "GPM SM_UTIL / 100", per_instance=True),
    DcgmField(DCGM_SM_OCCUPANCY, "GPM SM_OCCUPANCY / 100", per_instance=True),
    DcgmField(DCGM_TENSOR_ACTIVE, "GPM ANY_TENSOR_UTIL / 100", per_instance=True),
    DcgmField(DCGM_DRAM_ACTIVE, "GPM DRAM_BW_UTIL / 100", per_instance=True),
)
"""Every dcgm-exporter field ``--dcgm-compat`` produces, each only when its reading is known (never 0 for
unknown). The series of a field are those of its metric's name in every generation: the generations differ in
the host label (:class:`DcgmGeneration`) and, for 3.x, in some types and help texts."""

DCGM_UNMAPPED: dict[str, str] = {
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS": "a vGPU guest's licence state; on bare metal and in containers there is "
    "no vGPU licence to report (dcgm-exporter serves 0 there), so nothing true can be said",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": "typed counter but served by DCGM as a rate in an undocumented unit "
    "(KiB/s by NVIDIA's own answers, NVIDIA/dcgm-exporter#472, NVIDIA/deepops#810); NVML's byte counters cannot "
    "reproduce that value faithfully, so the field is left out rather than served with another meaning",
    "DCGM_FI_DEV_ECC_*, DCGM_FI_DEV_RETIRED_*, DCGM_FI_DEV_*_VIOLATION, DCGM_EXP_*": "not in dcgm-exporter's "
    "default counters (commented out there); not produced",
    "DCGM_FI_PROF_PIPE_FP64/FP32/FP16_ACTIVE": "not in the default counters; NVML GPM has per-pipe metrics, not read",
    "DCGM 4.6 field names (DCGM_FI_DEV_GPU_TEMP_CELSIUS, DCGM_FI_DEV_SM_CLOCK_HERTZ, "
    "DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL, DCGM_FI_DEV_GPU_UTIL_RATIO, …)": "DCGM 4.6 (go-dcgm) renamed many fields "
    "and added Hz/J/ratio variants, but no dcgm-exporter default-counters.csv uses them up to 4.5.3-4.8.2 and its "
    "main branch: no page serves these names, so no generation does",
}
"""dcgm-exporter fields that ``--dcgm-compat`` does not produce, and why (rendered into the docs)."""


def all_metrics() -> tuple[Metric, ...]:
    """Every metric of the catalog, in declaration order."""
    return tuple(v for v in globals().values() if isinstance(v, Metric))


def by_name(name: str) -> Metric:
    """The catalog entry for ``name``; KeyError names the unknown metric."""
    for metric in all_metrics():
        if metric.name == name:
            return metric
    raise KeyError(f"no metric named {name!r} in the catalog")


class External:
    """Metric names other exporters serve that our rules, dashboards and job read (not in our exposition)."""

    VLLM_INTER_TOKEN_LATENCY = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
    """vLLM's inter-token latency histogram: the name since 0.11, then the one before."""
    VLLM_KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    """KV cache usage, a 0..1 fraction despite the name: since 0.9, then before."""
    VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
    """vLLM's counter of tokens generated (output tokens), per server."""
    VLLM_PROMPT_TOKENS = "vllm:prompt_tokens_total"
    """vLLM's counter of prompt tokens processed (prefill), per server."""
    VLLM_CACHE_CONFIG_INFO = "vllm:cache_config_info"
    """A gauge fixed at 1 whose labels are vLLM's cache config (every field, varying by version)."""
    VLLM_REQUESTS_RUNNING = ("vllm:num_requests_running",)
    VLLM_REQUESTS_WAITING = ("vllm:num_requests_waiting",)
    VLLM_PREEMPTIONS = ("vllm:num_preemptions_total",)
    VLLM_TTFT = "vllm:time_to_first_token_seconds"
    """vLLM's time-to-first-token histogram."""
    PROMETHEUS_UP = "up"
    KUBE_NODE_CAPACITY = "kube_node_status_capacity"
    """kube-state-metrics: a node's capacity per resource, the resource name sanitised (``nvidia.com/gpu`` is
    ``resource="nvidia_com_gpu"``), labelled ``node``."""
