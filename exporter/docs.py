"""Generate ``docs/metrics.md`` from the catalog (and the settings), so the reference cannot drift."""

from __future__ import annotations

import dataclasses

from exporter import catalog as c
from exporter.settings import ExporterSettings, env_name, flag_name

_PRECEDENCE = """\
## Where activity numbers come from (precedence)

Several sources can measure how busy a GPU is. The exporter picks one per series and says which in the
`source` label, so a dashboard never mixes meanings silently:

| series | first choice | otherwise |
| --- | --- | --- |
| `gpuattr_gpu_sm_active_ratio` | `gpm`: GPM SM_UTIL, share of SMs busy (Hopper and newer, per GPU and per MIG instance) | `nvml`: kernel-time utilisation (nvidia-smi `utilization.gpu`) |
| `gpuattr_gpu_memory_bandwidth_ratio` | `gpm`: GPM DRAM_BW_UTIL, share of peak DRAM bandwidth | `nvml`: memory-controller busy time (`utilization.memory`) |
| `gpuattr_container_gpu_sm_active_ratio` | `gpm` on a MIG instance holding one container (the instance's SM activity) | `nvml`: per-process `smUtil`, summed per container |
| `gpuattr_container_gpu_memory_bandwidth_ratio` | `gpm`: the GPU's DRAM_BW_UTIL split by each process's `memUtil` share (by `smUtil` share when no process shows memory activity); on a MIG instance with one container, the instance's DRAM_BW_UTIL | `nvml`: per-process `memUtil` |

Per-process activity comes from `nvmlDeviceGetProcessesUtilizationInfo` (drivers R550+), falling back to
`nvmlDeviceGetProcessUtilization`; each sample passes the newest timestamp seen before, so it covers
exactly the interval since the previous sample. NVML has no per-process activity on MIG-enabled GPUs:
with several containers in one MIG instance, their activity series are absent rather than guessed.
Activity series are absent (not zero) for an interval in which the driver could not tell.
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
        "Generated from `exporter/catalog.py` by `gpuattr docs`; CI fails when this file is stale.",
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
