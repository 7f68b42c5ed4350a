"""Thresholds, windows and severities of every rule, in one configuration with sensible defaults.

``gpuattr alerts --config FILE`` overrides any field from YAML; unknown keys are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.quoting import short_repr
from common.units import parse_duration

SEVERITIES = ("critical", "warning", "info")


_LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/-]{1,200}")


class AlertConfigError(ValueError):
    """A configuration that cannot be used; names the file and the key."""


@dataclass
class AlertConfig:
    runbook_base_url: str = "docs/runbooks"
    """Where ``docs/runbooks/<alert>.md`` is published (e.g. your repository's web URL); alert names are appended."""
    exporter_job: str = "gpuattr-exporter"
    """Prometheus job label of the exporter's targets (for the target-down alert)."""

    idle_sm_threshold: float = 0.01
    """Kernel time (0..1) at or below which a container counts as idle (SM activity on a shared MIG instance)."""
    idle_window: str = "2h"
    """How long a container must stay idle while holding a GPU before the alert fires."""
    idle_memory_bytes: int = 1 * 2**30
    """GPU memory a container must hold to count as holding a GPU when nothing was allocated to it."""
    idle_severity: str = "warning"

    busy_kernel_threshold: float = 0.15
    """Kernel time (0..1) above which a container counts as keeping its GPU busy."""
    busy_sm_per_kernel_threshold: float = 0.1
    """SM activity per unit of kernel time below which that busy time does little (1 would be every SM busy
    whenever a kernel runs; a launch-bound loop of tiny kernels measured 0.0013 on a real H200)."""
    busy_but_idle_for: str = "30m"
    busy_but_idle_severity: str = "info"

    kv_used_ratio_threshold: float = 0.25
    """Peak KV cache in use as a share of what vLLM reserved, below which the reservation is bloated."""
    kv_bloat_for: str = "6h"
    bloat_severity: str = "info"

    saturation_threshold: float = 0.9
    """Device SM activity or memory bandwidth (0..1) above which a shared GPU counts as saturated."""
    active_pod_threshold: float = 0.05
    """A pod's SM activity above which it counts as active on a shared GPU."""
    interference_for: str = "15m"
    itl_rise_factor: float = 1.5
    """Inter-token latency p95 against its own 6-hour average, above which it counts as rising."""
    interference_severity: str = "warning"

    memory_pressure_ratio: float = 0.95
    """Used share of a GPU's memory above which it counts as close to full."""
    memory_pressure_for: str = "10m"
    memory_pressure_severity: str = "critical"

    underuse_window: str = "1d"
    underuse_ratio: float = 0.3
    """GPUs' worth used per GPU allocated, over the window, below which an allocation is under-used."""
    underuse_min_gpus: float = 2.0
    """Smallest average allocation (GPUs) for which under-use is worth an alert."""
    underuse_for: str = "1h"
    underuse_severity: str = "info"

    exporter_for: str = "5m"
    exporter_missing_for: str = "15m"
    """How long a node with GPU capacity (kube-state-metrics) may have no exporter target, or Prometheus no
    exporter target at all, before GpuAttrExporterMissing fires: longer than an exporter pod takes to start."""
    exporter_severity: str = "warning"
    gpu_lost_severity: str = "critical"
    hardware_error_window: str = "1h"
    """How long a hardware XID or a new uncorrectable row remap keeps its alert firing after it happened."""
    gpu_hardware_severity: str = "critical"
    """Severity of a hardware XID, a new uncorrectable row remap and a failed row remap."""
    gpu_reset_severity: str = "warning"
    """Severity of a row remap that waits for a GPU reset."""

    job_stale_for: str = "26h"
    """How long after its last success `gpuattr attribute` counts as stale: a day for the daily CronJob, plus
    two hours (a Deployment with --serve re-runs every few minutes, so the same bound holds with room)."""
    review_stale_for: str = "8d"
    """The same for `gpuattr review`: a week for a weekly review, plus a day."""
    job_stale_severity: str = "warning"

    rule_interval: str = "30s"
    """Evaluation interval of the generated rule groups."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form keys kept for templates (unused by the builder)."""


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _is_duration(value: object) -> bool:
    try:
        return isinstance(value, str) and parse_duration(value) > 0
    except ValueError:
        return False


def load_config(path: str | Path | None) -> AlertConfig:
    config = AlertConfig()
    if path is None:
        return config
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AlertConfigError(f"alert config {path}: {exc}") from exc
    except RecursionError:
        raise AlertConfigError(f"alert config {path}: nested too deeply to read") from None
    if not isinstance(raw, dict):
        raise AlertConfigError(f"alert config {path}: expected a mapping of settings")
    known = {f.name: f for f in dataclasses.fields(AlertConfig)}
    for key, value in raw.items():
        if key not in known:
            raise AlertConfigError(f"alert config {path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        default = getattr(config, key)
        wanted = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise AlertConfigError(
                f"alert config {path}: {key} must be a {type(default).__name__}, got {short_repr(value)}"
            )
        if isinstance(default, float) and not _finite(value):
            raise AlertConfigError(f"alert config {path}: {key} must be a finite number, got {short_repr(value)}")
        if key.endswith(("_window", "_for", "_interval")) and not _is_duration(value):
            raise AlertConfigError(f"alert config {path}: {key} must be a Prometheus duration such as 30m or 1h30m")
        if isinstance(default, (int, float)) and value < 0:
            raise AlertConfigError(f"alert config {path}: {key} must not be negative, got {short_repr(value)}")
        if key == "exporter_job" and not _LABEL_VALUE.fullmatch(str(value)):
            raise AlertConfigError(
                f"alert config {path}: exporter_job must be a plain job name (letters, digits, . _ : / -), "
                f"got {short_repr(value)}: it is written into PromQL"
            )
        if key.endswith("_severity") and value not in SEVERITIES:
            raise AlertConfigError(f"alert config {path}: {key} must be one of {', '.join(SEVERITIES)}")
        setattr(config, key, float(value) if isinstance(default, float) else value)
    return config
