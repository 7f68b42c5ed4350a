"""Generate ``docs/metrics.md`` from the catalog (and the settings), so the reference cannot drift."""

from __future__ import annotations

import dataclasses

from common import catalog as c
from common.envflags import env_name
from exporter.settings import ExporterSettings, flag_name

_PRECEDENCE = """\
## Where activity numbers come from (precedence)

Three sources can measure how busy a GPU is: NVML GPM (Hopper and newer, per GPU and per MIG instance),
dcgm-exporter's profiling fields (`--dcgm-exporter-url`: DCGM_FI_PROF_SM_ACTIVE, SM_OCCUPANCY, DRAM_ACTIVE,
PIPE_TENSOR_ACTIVE, GR_ENGINE_ACTIVE, any GPU DCGM profiles) and NVML's utilisation counters (every GPU).
Each series says which one it used in its `source` label, so a dashboard never mixes meanings silently.

**Device and MIG-instance series** carry one value each, from the first source that has it:

| series | 1st | 2nd | 3rd |
| --- | --- | --- | --- |
| `gpuattr_gpu_sm_active_ratio` | `gpm` SM_UTIL (share of SMs busy) | `dcgm` SM_ACTIVE | `nvml` kernel time (`utilization.gpu`) |
| `gpuattr_gpu_memory_bandwidth_ratio` | `gpm` DRAM_BW_UTIL | `dcgm` DRAM_ACTIVE | `nvml` memory-controller time (`utilization.memory`) |
| `gpuattr_gpu_sm_occupancy_ratio` | `gpm` SM_OCCUPANCY | `dcgm` SM_OCCUPANCY | — |
| `gpuattr_gpu_tensor_active_ratio` | `gpm` ANY_TENSOR_UTIL | `dcgm` PIPE_TENSOR_ACTIVE | — |
| `gpuattr_gpu_engine_active_ratio` | `gpm` GRAPHICS_UTIL | `dcgm` GR_ENGINE_ACTIVE | — |

**Two activity measures per container**, each named for what it measures:

- `gpuattr_container_gpu_kernel_active_ratio` is **time**: the share of the interval in which a kernel of the
  container was running (NVML's per-process `smUtil`, what `nvidia-smi pmon` shows in its `sm` column). It
  exists on every GPU NVML samples, but it says nothing about how much of the GPU those kernels used: on a
  real H200 a loop of one-element kernels read 0.19 here while GPM measured its SMs 0.00025 active.
- `gpuattr_container_gpu_sm_active_ratio` is **SMs**: the share of the GPU's SMs busy with the container's
  work. It is the device's own measurement (GPM SM_UTIL, or dcgm-exporter's SM_ACTIVE) split across the
  containers by their kernel-time shares, so the containers' values add up to what the device measured and
  none can exceed it. On a GPU with neither GPM nor dcgm-exporter (before Hopper, without DCGM) it is absent:
  kernel time is not passed off as SM activity.

A container whose kernels run much of the time while its SMs stay nearly idle (tiny kernels, launch-bound
loops, polling) is the waste `nvidia-smi` hides; the recording rule `…:sm_per_kernel_time:ratio` and the alert
`GpuBusyButSmsIdle` find it.

Per-container series carry one value per source that can attribute it (select one `source`; never sum over
it; summing the `gpm` or `dcgm` values over containers gives the device value):

| series | `nvml` / `mps` | `gpm` | `dcgm` |
| --- | --- | --- | --- |
| `gpuattr_container_gpu_kernel_active_ratio` | per-process `smUtil`, summed per container; `mps`: the MPS server's `smUtil` for its only client | — | — |
| `gpuattr_container_gpu_sm_active_ratio` | — | the GPU's SM_UTIL split by kernel-time share; the instance's SM_UTIL for the only container of a MIG instance | the GPU's SM_ACTIVE split the same way; the instance's value for the only container of a MIG instance |
| `gpuattr_container_gpu_memory_bandwidth_ratio` | per-process `memUtil` (`mps`: the server's) | the GPU's DRAM_BW_UTIL split by `memUtil` share (when NVML saw no memory activity, by `smUtil`); MIG as above | DRAM_ACTIVE split the same way |
| `gpuattr_container_gpu_engine_active_ratio` | — | the GPU's GRAPHICS_UTIL split by kernel-time share; MIG as above | GR_ENGINE_ACTIVE split the same way; MIG as above |
| `gpuattr_container_gpu_sm_occupancy_ratio`, `…_tensor_active_ratio` | — | — | the DCGM field split by `smUtil` share; MIG as above |

## MPS

Under NVIDIA's Multi-Process Service (a sharing mode of the NVIDIA device plugin) the driver lists the
`nvidia-cuda-mps-server` process and its clients (`nvmlDeviceGetMPSComputeRunningProcesses`; nvidia-smi's
type `M+C`), gives each client its own memory, and credits **every** per-process utilisation sample to the
server. So the exporter:

- attributes memory to the clients as usual, and never presents the server as a workload: its memory is
  `gpuattr_gpu_mps_server_memory_bytes`, its activity (all clients together) `gpuattr_gpu_mps_kernel_active_ratio`,
  and `gpuattr_gpu_mps_clients` counts the clients;
- gives the server's activity to a client only when it is the GPU's **only** client owner (then the
  server's time is exactly that client's time: `source="mps"`, and GPM or DCGM SM activity is its own);
- with several client owners, reports their activity as **unknown**: no activity series, and
  `gpuattr_container_gpu_activity_unknown{reason="mps_shared"} 1`. Nothing the driver says tells how the time
  splits between them, so none is guessed. Idle alerts and the capacity review skip unknown activity rather
  than read it as idle;
- labels what the kubelet allocated: `gpuattr_container_gpu_allocated{sharing="mps"}` for a replica
  (`<uuid>::<n>`) of a GPU whose MPS server runs, `time-slicing` for one without;
- publishes how many replicas the kubelet advertises for the GPU, held or not
  (`gpuattr_gpu_allocatable_units`, from GetAllocatableResources): with the device plugin's `replicas: 4`, a
  pod holding one replica holds a quarter of the GPU even when it is alone there, and the attribution job
  and the capacity review count it so; where the series is absent they count 1/N for N containers holding it,
  and say for how many devices.

dcgm-exporter pages are read with prometheus-client's parser and matched to GPUs by `UUID` (or `uuid`)
and MIG instance by `GPU_I_ID`. Profiling fields are 0–1 ratios; older releases wrote "(in %)" in their
HELP while serving ratios (NVIDIA/dcgm-exporter#346), so a field is read as percent only when a value
is above 1. DCGM 4.6 renamed many fields (kept as aliases in DCGM, not yet used by dcgm-exporter's default
counters) and dcgm-exporter's main branch renamed `Hostname` to `hostname`; `--dcgm-field-aliases NEW=OLD`
reads a renamed field as the one it replaced.
"""


# (the table above is Markdown: its rows are long by nature)


def _metric_rows(group: c.Group) -> list[str]:
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for m in c.all_metrics():
        if m.group is not group:
            continue
        labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
        rows.append(f"| `{m.name}` | {m.kind.value} | {labels} | {m.help} |")
    return rows


_DCGM_PODS = """\
### Kubernetes mode: pod labels on `DCGM_*` series

dcgm-exporter's Kubernetes mode learns from the kubelet's pod-resources API which pod holds which GPU and
adds `namespace`, `pod` and `container` to that GPU's series (or the MIG instance's, matched by its GPU
instance). The agent does the same whenever it reads pod-resources (`--pod-resources-socket`, which the
Kubernetes deployment sets); without it the series have no such labels. Our `gpuattr_*` series are unchanged.

- A whole GPU held by one container: its series carry that container's `namespace`, `pod`, `container`.
- A MIG instance: the instance's series (`GPU_I_ID`) carry the container holding it; the whole-GPU series of
  a MIG GPU (temperature, power, clocks) carry empty pod labels, since no single pod holds the device.
- A GPU or instance no pod holds: one series with the pod labels empty.
- A GPU shared by several containers (time-slicing, MPS, a shared MIG instance): **one copy of every
  device series per container**, each with the device's own value, as dcgm-exporter does with
  `--kubernetes-virtual-gpus` (without that flag dcgm-exporter labels only one of the pods, whichever it
  met last). The device value is therefore repeated, not split: `sum by (namespace, pod)` answers "what
  do the GPUs my pod uses show", while a node or cluster total must count each device once, e.g.
  `sum(max by (UUID, GPU_I_ID) (DCGM_FI_DEV_FB_USED))`. The per-container share of a shared GPU is in
  `gpuattr_container_gpu_*`, not here.
"""


def _dcgm_compat_doc() -> list[str]:
    lines = [
        "### dcgm-exporter generations (`--dcgm-compat GENERATION`)",
        "",
        f"A bare `--dcgm-compat` (or `GPUATTR_DCGM_COMPAT=true`) means `{c.DCGM_DEFAULT_GENERATION}`. The "
        "field names are the same in every generation: dcgm-exporter's default counters still use them up to "
        "its newest release and main branch (the DCGM 4.6 names are listed above as not produced).",
        "",
        "| generation | releases | host label | differences |",
        "| --- | --- | --- | --- |",
    ]
    for g in c.DCGM_GENERATIONS:
        diffs = [
            f"`{f.metric.name}`: {v.kind.value + ', ' if v.kind else ''}{v.help or f.metric.help}"
            for f in c.DCGM_FIELDS
            for name, v in f.variants
            if name == g.name
        ]
        lines.append(f"| `{g.name}` | {g.releases} | `{g.host_label}` | {'; '.join(diffs) or '—'} |")
    lines += [
        "",
        "### How each `DCGM_*` field is made",
        "",
        "Each series is served only while its reading is known; an unknown value is absent, never 0. Counters "
        "keep dcgm-exporter's names without `_total` (`# TYPE <name> counter` in the text format; typed `unknown` "
        "in OpenMetrics, whose counters must end in `_total`).",
        "",
        "| field | type | from | per MIG instance |",
        "| --- | --- | --- | --- |",
    ]
    for f in c.DCGM_FIELDS:
        lines.append(f"| `{f.metric.name}` | {f.metric.kind.value} | {f.source} | {'yes' if f.per_instance else '—'} |")
    return [*lines, "", _DCGM_PODS.rstrip("\n")]


def render_metrics_doc() -> str:
    lines = [
        "# Metric reference",
        "",
        "Generated from `common/catalog.py` by `gpuattr docs`; CI fails when this file is stale.",
        "Series of type *info* are gauges fixed at 1 whose labels carry metadata to join on.",
        "",
        "Labels: `gpu` is the NVML index, `gpu_uuid` the stable identity; `mig_instance`/`mig_profile` are",
        "empty on a GPU without MIG; `namespace`/`pod`/`container` are empty outside Kubernetes, where",
        "`process` carries the command name instead. There is never a PID label.",
        "",
    ]
    for group in c.Group:
        lines += [f"## {group.value}", "", *_metric_rows(group), ""]
    lines += [
        "### dcgm-exporter fields not produced by `--dcgm-compat`",
        "",
        "| field | why |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {why} |" for name, why in c.DCGM_UNMAPPED.items()]
    lines += [
        "",
        *_dcgm_compat_doc(),
        "",
        _PRECEDENCE,
        "## Configuration",
        "",
        "Every flag of `gpuattr exporter` is also an environment variable.",
        "",
    ]
    lines += ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(ExporterSettings):
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default}`" if f.default not in (None, "") else "—"
        else:
            default = "(computed)"
        lines.append(f"| `{flag_name(f.name)}` | `{env_name(f.name)}` | {default} | {f.metadata.get('help', '')} |")
    return "\n".join(lines) + "\n"
