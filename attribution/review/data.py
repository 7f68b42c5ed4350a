"""What the capacity review asks Prometheus: GPU-hours integrated in PromQL per pod, peaks, metadata, token
counters and latency histograms, for the window and the window before it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from attribution.prometheus import PrometheusClient, PrometheusError, Sample
from common import catalog as c
from common.units import parse_duration

DIMENSIONS = ("team", "namespace", "workload", "model", "workload_class")
KEYS = "namespace, pod"


@dataclass
class Inputs:
    per_pod: pd.DataFrame  # one row per pod: allocation and use over the window, metadata, peaks
    previous: pd.DataFrame  # the same figures for the window before (trends)
    tokens: dict[tuple[str, str], float]
    latency_buckets: dict[str, dict[tuple[str, str], dict[float, float]]]  # "ttft"/"itl" -> pod -> le -> count
    problems: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input -> why it could not be read


ESSENTIAL = ("alloc_h", "used_h", "idle_h", "gpus", "gpu_bytes", "peak_mem", "peak_sm", "info")
"""The queries of the reviewed window that the published headline figures come from: GPUs allocated, GPUs'
worth used and idle GPU-hours per dimension (named from the pods' info series), and the consolidation
plan's GPUs freed. Without any of them the review would publish zeros, or everything under "(none)",
where the last good figures were. Memory share, unknown activity, GPU models (prices), tokens, latencies
and the window before (trends) are not essential: the review names them as missing and stands."""
PREVIOUS = "_previous"
"""Suffix of an input's name for its query of the window before."""
ONLY_NOW = ("tokens", "ttft", "itl", "info", "gpu_model")
"""Inputs read for the reviewed window only."""


def inputs(window: str, resolution: str, idle: float) -> list[str]:
    """The name of every input a review reads: the reviewed window's, then the window before's."""
    names = list(queries(window, resolution, idle))
    return names + [name + PREVIOUS for name in names if name not in ONLY_NOW]


def queries(window: str, resolution: str, idle: float) -> dict[str, str]:
    """The PromQL of each figure, by name, for a window ending at the evaluation time."""
    step_s = parse_duration(resolution, "--resolution")
    step_h = step_s / 3600
    alloc = c.CONTAINER_ALLOCATED.name
    # GPUs' worth used: kernel time on whole GPUs (NVML, or the MPS server's for its only client); a MIG
    # instance's GPM SM activity for its only container. A container whose activity the driver does not
    # measure (several MPS clients, several containers in one MIG instance) is neither used nor idle.
    sm = (
        f'({c.CONTAINER_KERNEL_ACTIVE.name}{{pod!="", source=~"nvml|mps"}} '
        f'or {c.CONTAINER_SM_ACTIVE.name}{{pod!="", mig_instance!="", source="gpm"}})'
    )
    keys = "namespace, pod, container, gpu_uuid, mig_instance"
    unknown = f'max by ({keys}) ({c.CONTAINER_ACTIVITY_UNKNOWN.name}{{pod!=""}})'
    mem = f'{c.CONTAINER_MEMORY.name}{{pod!=""}}'
    total = f"max by (gpu_uuid, mig_instance) ({c.GPU_MEMORY_TOTAL.name})"

    # A subquery includes both ends of its range: one step less than the window gives exactly
    # window / resolution points, each standing for one step of time.
    span = f"{int(parse_duration(window, '--window') - step_s)}s"

    def hours(expr: str) -> str:
        return f"sum_over_time(({expr})[{span}:{resolution}]) * {step_h}"

    return {
        # GPU-hours, integrated at the resolution: absent series count as zero
        "alloc_h": hours(f"sum by ({KEYS}) ({alloc})"),
        "used_h": hours(f"sum by ({KEYS}) ({sm})"),
        "mem_h": hours(f"sum by ({KEYS}) ({mem} / on (gpu_uuid, mig_instance) group_left {total})"),
        "idle_h": hours(f"sum by ({KEYS}) ({alloc} unless on ({keys}) ({sm} > {idle}) unless on ({keys}) {unknown})"),
        "unknown_h": hours(f"sum by ({KEYS}) ({alloc} and on ({keys}) {unknown})"),
        "peak_mem": f"max by ({KEYS}) (max_over_time(({mem})[{window}:{resolution}]))",
        "peak_sm": f"max by ({KEYS}) (max_over_time(({sm})[{window}:{resolution}]))",
        "gpus": f"max by ({KEYS}) (max_over_time((count by ({KEYS}) ({alloc}))[{window}:{resolution}]))",
        "gpu_bytes": f"max by ({KEYS}) (max_over_time((max by ({KEYS}) ({alloc} * on (gpu_uuid) group_left "
        f"max by (gpu_uuid) ({c.GPU_MEMORY_TOTAL.name}))) [{window}:{resolution}]))",
        "gpu_model": f"max by ({KEYS}, gpu_model) (last_over_time(({alloc} * on (gpu_uuid) group_left (gpu_model) "
        f"max by (gpu_uuid, gpu_model) ({c.GPU_INFO.name}))[{window}:{resolution}]))",
        "info": f"max by ({KEYS}, team, workload_class, workload_kind, workload, model) "
        f"(last_over_time({c.POD_INFO.name}[{window}]))",
        # increase() drops the metric name, so the two counters are summed apart, then added
        "tokens": " + ".join(
            f"sum by ({KEYS}) (increase({name}[{window}]))"
            for name in (c.External.VLLM_PROMPT_TOKENS, c.External.VLLM_GENERATION_TOKENS)
        ),
        "ttft": f"sum by ({KEYS}, le) (increase({c.External.VLLM_TTFT}_bucket[{window}]))",
        # the name since vLLM 0.11, or the one before; a server exposes one of them
        "itl": " or ".join(
            f"sum by ({KEYS}, le) (increase({name}_bucket[{window}]))" for name in c.External.VLLM_INTER_TOKEN_LATENCY
        ),
    }


def _by_pod(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.labels.get("namespace", ""), s.labels.get("pod", "")): s.value for s in samples}


def gather(client: PrometheusClient, window: str, at: float, resolution: str, idle: float) -> Inputs:
    """Every figure of the window ending at ``at`` and of the window before it; a query that fails is a
    problem named in the review and an entry of ``failed`` (the review fails when it is ``ESSENTIAL``)."""
    problems: list[str] = []
    failed: dict[str, str] = {}

    def ask(name: str, expr: str, when: float) -> list[Sample]:
        try:
            return client.query(expr, when)
        except PrometheusError as exc:
            name += "" if when == at else PREVIOUS
            problems.append(f"{name}: {exc}")
            failed[name] = str(exc).replace(repr(expr), name)  # the query is long; its name says which
            return []

    frames = []
    for when in (at, at - parse_duration(window, "--window")):
        got = {
            name: ask(name, expr, when)
            for name, expr in queries(window, resolution, idle).items()
            if name not in ONLY_NOW or when == at
        }
        values = {name: _by_pod(s) for name, s in got.items() if name not in ("info", "gpu_model")}
        gpu_models = {
            (s.labels.get("namespace", ""), s.labels.get("pod", "")): s.labels.get("gpu_model", "")
            for s in got.get("gpu_model", [])
        }
        pods = sorted(set(values["alloc_h"]) | set(values["used_h"]))
        info = {(s.labels.get("namespace", ""), s.labels.get("pod", "")): s.labels for s in got.get("info", [])}
        rows = []
        for key in pods:
            labels = info.get(key, {}) if when == at else {}
            rows.append(
                {
                    "namespace": key[0],
                    "pod": key[1],
                    "team": labels.get("team", ""),
                    "workload_class": labels.get("workload_class", ""),
                    "workload": (labels.get("workload_kind", "") + "/" + labels.get("workload", "")).strip("/"),
                    "model": labels.get("model", ""),
                    "gpu_model": gpu_models.get(key, ""),
                    **{
                        name: values[name].get(key, 0.0)
                        for name in (
                            "alloc_h",
                            "used_h",
                            "mem_h",
                            "idle_h",
                            "unknown_h",
                            "peak_mem",
                            "peak_sm",
                            "gpus",
                            "gpu_bytes",
                        )
                    },
                }
            )
        frames.append(pd.DataFrame(rows))
        if when == at:
            tokens = dict(_by_pod(got.get("tokens", [])))
            latency: dict[str, dict[tuple[str, str], dict[float, float]]] = {"ttft": {}, "itl": {}}
            for metric, histograms in latency.items():
                for s in got.get(metric, []):
                    key = (s.labels.get("namespace", ""), s.labels.get("pod", ""))
                    le = float(s.labels.get("le", "inf").replace("+Inf", "inf"))
                    histograms.setdefault(key, {})[le] = s.value
    current, previous = frames
    if not current.empty and not previous.empty:
        # the window before takes each pod's metadata from now (the info series is read once)
        carried = [d for d in (*DIMENSIONS, "gpu_model") if d != "namespace"]
        meta = current.set_index(["namespace", "pod"])[carried]
        previous = (
            previous.drop(columns=carried)
            .join(meta, on=["namespace", "pod"], how="left")
            .fillna(dict.fromkeys(carried, ""))
        )
    return Inputs(current, previous, tokens, latency, problems, failed)
