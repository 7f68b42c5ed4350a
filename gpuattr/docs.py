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
| `gpuattr_gpu_engine_active_ratio` | `dcgm` GR_ENGINE_ACTIVE | — | — |

**Per-container series** carry one value per source that can attribute it (select one `source`; never sum
over it; summing the `gpm` or `dcgm` values over containers gives the device value):

| series | `nvml` | `gpm` | `dcgm` |
| --- | --- | --- | --- |
| `gpuattr_container_gpu_sm_active_ratio` | per-process `smUtil`, summed per container (time its kernels ran) | the instance's SM_UTIL, for the only container of a MIG instance | the GPU's SM_ACTIVE split by `smUtil` share; the instance's value for the only container of a MIG instance |
| `gpuattr_container_gpu_memory_bandwidth_ratio` | per-process `memUtil` | the GPU's DRAM_BW_UTIL split by `memUtil` share (when NVML saw no memory activity, by `smUtil`); MIG as above | DRAM_ACTIVE split the same way |
| `gpuattr_container_gpu_sm_occupancy_ratio`, `…_tensor_active_ratio`, `…_engine_active_ratio` | — | — | the DCGM field split by `smUtil` share; MIG as above |

Per-process activity comes from `nvmlDeviceGetProcessesUtilizationInfo` (drivers R550+), falling back to
`nvmlDeviceGetProcessUtilization`; each sample passes the newest timestamp seen before, so it covers
exactly the interval since the previous sample. NVML has no per-process activity on MIG-enabled GPUs:
with several containers in one MIG instance, their activity series are absent rather than guessed.
Activity series are absent (not zero) for an interval in which the source could not tell: a dcgm-exporter
that is down, slow (`--dcgm-timeout`) or answers garbage contributes nothing to that sample, never its
previous values (`gpuattr_exporter_dcgm_up` says so). When NVML saw no activity on a GPU that DCGM reports
busy, the device value stays unattributed (containers get 0) rather than being shared out by guess.

dcgm-exporter pages are read with prometheus-client's parser and matched to GPUs by `UUID` (or `uuid`)
and MIG instance by `GPU_I_ID`. Profiling fields are 0–1 ratios; older releases wrote "(in %)" in their
HELP while serving ratios (NVIDIA/dcgm-exporter#346), so a field is read as percent only when a value
is above 1. Release 4.9 renamed some fields and labels; `--dcgm-field-aliases NEW=OLD` reads a renamed
field as the one it replaced.
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
