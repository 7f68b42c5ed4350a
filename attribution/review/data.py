"""What the capacity review asks Prometheus: GPU-hours integrated in PromQL per pod, peaks, metadata, token
counters and latency histograms, for the window and the window before it; and GPUs allocated and used per
pod over time (one range query, the same expressions averaged over each step of a coarser timeline)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from attribution.prometheus import PrometheusClient, PrometheusError, Sample, Series
from attribution.sharing import SHARED_MATCHER, fallback_note, mig_fraction, unadvertised
from attribution.sharing import held as share_held
from common import catalog as c
from common.units import format_duration, parse_duration

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
    spacing_s: float | None = None  # seconds between samples, as measured; None: not known
    sampling: str = ""  # how the GPU-hours were integrated, one sentence for the report
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)
    """GPUs allocated and GPUs' worth used per pod and step of the timeline, each its mean over the step
    (columns namespace, pod, time, allocated, used; NaN or no row: no series of the pod in that step)."""
    timeline_times: list[float] = field(default_factory=list)  # the end of each step of the timeline
    timeline_step_s: float | None = None  # seconds per step of the timeline; None: the timeline was not read


ESSENTIAL = ("alloc_h", "used_h", "idle_h", "gpus", "gpu_bytes", "peak_mem", "peak_sm", "info")
"""The queries of the reviewed window that the published headline figures come from: GPUs allocated, GPUs'
worth used and idle GPU-hours per dimension (named from the pods' info series), and the consolidation
plan's GPUs freed. Without any of them the review would publish zeros, or everything under "(none)",
where the last good figures were. Memory share, unknown activity, GPU models (prices), tokens, latencies
and the window before (trends) are not essential: the review names them as missing and stands."""
PREVIOUS = "_previous"
"""Suffix of an input's name for its query of the window before."""
ONLY_NOW = ("tokens", "ttft", "itl", "info", "gpu_model", "kv_max", "cache_config", "unadvertised")
"""Inputs read for the reviewed window only."""


def inputs(window: str, resolution: str, idle: float) -> list[str]:
    """The name of every input a review reads: the reviewed window's, then the window before's."""
    names = list(queries(window, resolution, idle))
    return [SPACING] + names + [TIMELINE] + [name + PREVIOUS for name in names if name not in ONLY_NOW]


SPACING = "spacing"
"""The input that measures how far apart the samples are (non-essential: without it, today's queries)."""
DENSE_S = 120.0
"""Samples at most this far apart are read as they are: Prometheus looks 5 minutes back for the last sample
of a series at each step, VictoriaMetrics as far as the series' own interval, so every step sees one."""
NICE_S = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
"""Intervals people configure; a measured spacing within 10 % of one is read as that one."""


PROBE_S = 6 * 3600.0
"""The spacing is measured on the densest stretch of this length in the window: a history that covers only
part of the window is measured where it is, not spread over the whole window."""


def _probe(window: str) -> float:
    return min(parse_duration(window, "--window"), PROBE_S)


def spacing_query(window: str) -> str:
    """The most samples any GPU or allocation series has in a stretch of ``PROBE_S`` (or the window) of the
    window."""
    names = f"{c.GPU_INFO.name}|{c.CONTAINER_ALLOCATED.name}"
    probe = f"{round(_probe(window) * 1000)}ms"
    densest = f'max(count_over_time({{__name__=~"{names}"}}[{probe}]))'
    if parse_duration(window, "--window") <= PROBE_S:
        return densest
    return f"max_over_time(({densest})[{window}:{probe}])"


def spacing_from(count: float, window: str) -> float | None:
    """The seconds between samples given the densest series' ``count`` in a stretch of the window
    (``spacing_query``); None for fewer than two samples. A count that includes both ends of the stretch or
    only one gives the same interval; one within 10 % of an interval people configure is read as it."""
    if count < 2:
        return None
    measured = _probe(window) / (count - 0.5)  # halfway between stretch / count and stretch / (count - 1)
    nice = min(NICE_S, key=lambda n: abs(math.log(measured / n)))
    return float(nice) if abs(measured / nice - 1) <= 0.1 else float(round(measured))


def lookback(spacing_s: float | None) -> str | None:
    """How far back each step looks for a series' last sample: None (the store's own) for dense samples;
    twice the spacing for sparse ones, so one missed sample loses nothing."""
    if spacing_s is None or spacing_s <= DENSE_S:
        return None
    return format_duration(math.ceil(2 * spacing_s))


def sampling_note(spacing_s: float | None, resolution: str) -> str:
    """One sentence on how the GPU-hours were integrated, for the report."""
    if spacing_s is None:
        return f"sample spacing unknown (no GPU or allocation series); integrated at {resolution}"
    every = format_duration(math.ceil(spacing_s))
    look = lookback(spacing_s)
    if look is None:
        return f"samples every {every}; integrated at {resolution}"
    return f"samples every {every}; integrated at {resolution}, each step taking a series' last sample within {look}"


def _instant(spacing_s: float | None) -> dict[str, str]:
    """The instant expressions the figures integrate, evaluated at each step of the resolution: ``alloc``
    and ``held`` (GPUs allocated, and each allocation's share of its device), ``sm`` (GPUs' worth used),
    ``unknown``, ``mem``, ``total``, ``gpu_total``, ``gpu_info`` and their label sets ``keys`` and
    ``by_profile``; ``unadvertised`` (shared devices whose node advertises no replicas, counted by holders)."""
    look = lookback(spacing_s)

    def fresh(selector: str) -> str:
        return selector if look is None else f"last_over_time({selector}[{look}])"

    alloc = fresh(c.CONTAINER_ALLOCATED.name)
    # GPUs' worth used: kernel time on whole GPUs (NVML, or the MPS server's for its only client); a MIG
    # instance's GPM SM activity for its only container. A container whose activity the driver does not
    # measure (several MPS clients, several containers in one MIG instance) is neither used nor idle.
    kernel = fresh(c.CONTAINER_KERNEL_ACTIVE.name + '{pod!="", source=~"nvml|mps"}')
    gpm = fresh(c.CONTAINER_SM_ACTIVE.name + '{pod!="", mig_instance!="", source="gpm"}')
    sm = f"({kernel} or {gpm})"
    keys = "namespace, pod, container, gpu_uuid, mig_instance"
    unknown_sel = c.CONTAINER_ACTIVITY_UNKNOWN.name + '{pod!=""}'
    unknown = f"max by ({keys}) ({fresh(unknown_sel)})"
    mem = fresh(c.CONTAINER_MEMORY.name + '{pod!=""}')
    total = f"max by (gpu_uuid, mig_instance) ({fresh(c.GPU_MEMORY_TOTAL.name)})"
    gpu_total = f"max by (gpu_uuid) ({fresh(c.GPU_MEMORY_TOTAL.name)})"
    gpu_info = f"max by (gpu_uuid, gpu_model) ({fresh(c.GPU_INFO.name)})"
    # Each allocation's share of its device: 1/N for N replicas the node advertises (time-slicing, MPS), else
    # 1/N for N containers holding it (``sharing.held``). The MIG instance's own share of its GPU follows
    # from its profile (``mig_fraction``), applied to every figure summed by profile.
    advertised = fresh(c.GPU_ALLOCATABLE.name)
    held = share_held(alloc, advertised)
    by_profile = f"{KEYS}, mig_profile"
    return {
        "alloc": alloc,
        "sm": sm,
        "keys": keys,
        "unknown": unknown,
        "mem": mem,
        "total": total,
        "gpu_total": gpu_total,
        "gpu_info": gpu_info,
        "held": held,
        "by_profile": by_profile,
        "unadvertised": unadvertised(fresh(c.CONTAINER_ALLOCATED.name + "{" + SHARED_MATCHER + "}"), advertised),
    }


def queries(window: str, resolution: str, idle: float, spacing_s: float | None = None) -> dict[str, str]:
    """The PromQL of each figure, by name, for a window ending at the evaluation time; ``spacing_s``: the
    seconds between samples (sparse samples are looked for as far back as they lie)."""
    step_s = parse_duration(resolution, "--resolution")
    e = _instant(spacing_s)
    alloc, sm, keys, unknown, mem = e["alloc"], e["sm"], e["keys"], e["unknown"], e["mem"]
    total, gpu_total, gpu_info, held, by_profile = e["total"], e["gpu_total"], e["gpu_info"], e["held"], e["by_profile"]

    # Subqueries evaluate at multiples of the resolution. Prometheus 2 includes both ends of their range,
    # VictoriaMetrics (and Prometheus 3) only the last: a range half a step short of the window has its
    # first end between two points, so every store evaluates the same window / resolution points. Each
    # stands for the window over the number of points evaluated (one step each, unless the end of the
    # window is not a multiple of the resolution).
    window_s = parse_duration(window, "--window")
    window_h = window_s / 3600
    span = f"{round((window_s - step_s / 2) * 1000)}ms"
    points = f"scalar(count_over_time(vector(1)[{span}:{resolution}]))"

    def hours(expr: str) -> str:
        return f"sum_over_time(({expr})[{span}:{resolution}]) * {window_h} / {points}"

    usage = "|".join(c.External.VLLM_KV_CACHE_USAGE)
    return {
        # GPU-hours, integrated at the resolution: absent series count as zero
        "alloc_h": hours(f"sum by ({by_profile}) ({held})"),
        "used_h": hours(f"sum by ({by_profile}) ({sm})"),
        "mem_h": hours(f"sum by ({by_profile}) ({mem} / on (gpu_uuid, mig_instance) group_left {total})"),
        "idle_h": hours(
            f"sum by ({by_profile}) ({held} unless on ({keys}) ({sm} > {idle}) unless on ({keys}) {unknown})"
        ),
        "unknown_h": hours(f"sum by ({by_profile}) ({held} and on ({keys}) {unknown})"),
        # the pod's peak on one device (its containers there added up)
        "peak_mem": f"max by ({KEYS}) (max_over_time((sum by ({KEYS}, gpu_uuid, mig_instance) ({mem}))"
        f"[{window}:{resolution}]))",
        "peak_sm": f"max by ({KEYS}) (max_over_time(({sm})[{window}:{resolution}]))",
        "gpus": f"max by ({KEYS}) (max_over_time((count by ({KEYS}) ({alloc}))[{window}:{resolution}]))",
        "held": f"max by ({by_profile}) (max_over_time((sum by ({by_profile}) ({held}))[{window}:{resolution}]))",
        "gpu_bytes": f"max by ({KEYS}) (max_over_time((max by ({KEYS}) ({alloc} * on (gpu_uuid) group_left "
        f"{gpu_total})) [{window}:{resolution}]))",
        "gpu_model": f"max by ({KEYS}, gpu_model) (last_over_time(({alloc} * on (gpu_uuid) group_left (gpu_model) "
        f"{gpu_info})[{window}:{resolution}]))",
        # shared devices whose node advertises no replicas, at the end of the window: counted by holders
        "unadvertised": e["unadvertised"],
        "info": f"max by ({KEYS}, team, workload_class, workload_kind, workload, model) "
        f"(last_over_time({c.POD_INFO.name}[{window}]))",
        # vLLM's KV cache: its peak use and its reservation, for the right-sized footprint of the plan
        "kv_max": f'max by ({KEYS}) (max_over_time({{__name__=~"{usage}"}}[{window}]))',
        "cache_config": f"max by ({KEYS}, kv_cache_memory_bytes) "
        f"(last_over_time({c.External.VLLM_CACHE_CONFIG_INFO}[{window}]))",
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


TIMELINE = "timeline"
"""The input of the figures over time (non-essential: without it, the review has no timeline)."""
TIMELINE_STEPS_S = (3600, 7200, 10800, 21600, 43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)
"""Steps the timeline is drawn at, the smallest that fits first."""
TIMELINE_POINTS = 200
"""The most steps of the timeline: a chart a page wide shows no more."""


def timeline_step(window: str, resolution: str, spacing_s: float | None) -> float:
    """Seconds per step of the timeline: an hour for windows up to 2 days, 6 hours up to 14 days, a day
    beyond; at least the resolution and the sample spacing, at most ``TIMELINE_POINTS`` steps in the window.
    A multiple of the resolution (each step averages the same number of points), no longer than the window."""
    window_s = parse_duration(window, "--window")
    step_s = parse_duration(resolution, "--resolution")
    base = 3600 if window_s <= 2 * 86400 else 21600 if window_s <= 14 * 86400 else 86400
    least = max(base, step_s, spacing_s or 0.0, window_s / TIMELINE_POINTS)
    step = next((float(s) for s in TIMELINE_STEPS_S if s >= least), math.ceil(least / 86400) * 86400.0)
    step = math.ceil(round(step / step_s, 6)) * step_s
    if step > window_s:  # one step, the window itself (at the resolution's multiple)
        step = max(step_s, math.floor(round(window_s / step_s, 6)) * step_s)
    return step


def timeline_query(resolution: str, step_s: float, spacing_s: float | None = None) -> str:
    """GPUs allocated (``figure="allocated"``) and GPUs' worth used (``figure="used"``) per pod and MIG
    profile, each the mean over the step ending at the evaluation time of the very expressions the window's
    GPU-hours integrate (``alloc_h``, ``used_h``), at the same resolution: summed over the steps of a window,
    times the step, they are its GPU-hours. A step without a pod's series has no value for it (a gap)."""
    e = _instant(spacing_s)
    res_s = parse_duration(resolution, "--resolution")
    # half a resolution step short, as the window's figures: the same points whichever end the store includes
    span = f"{round((step_s - res_s / 2) * 1000)}ms"
    points = f"scalar(count_over_time(vector(1)[{span}:{resolution}]))"

    def mean(expr: str) -> str:
        return f"sum_over_time(({expr})[{span}:{resolution}]) / {points}"

    allocated = mean(f"sum by ({e['by_profile']}) ({e['held']})")
    used = mean(f"sum by ({e['by_profile']}) ({e['sm']})")
    return (
        f'label_replace({allocated}, "figure", "allocated", "", "") or label_replace({used}, "figure", "used", "", "")'
    )


def timeline_times(window: str, at: float, step_s: float) -> list[float]:
    """The end of each step of the timeline: ``at`` and back by whole steps, the first step's end within
    the window's first step (a window not a multiple of the step: the first step starts before it)."""
    count = max(1, math.ceil(round(parse_duration(window, "--window") / step_s, 6)))
    return [at - (count - 1 - i) * step_s for i in range(count)]


def _timeline_frame(series: list[Series], unknown: set[str]) -> pd.DataFrame:
    """Per pod and step, its GPUs allocated and used, each MIG profile weighted by its share of a GPU."""
    cells: dict[tuple[str, str, float], dict[str, float]] = {}
    for s in series:
        figure = s.labels.get("figure", "")
        if figure not in ("allocated", "used"):
            continue
        fraction = mig_fraction(s.labels.get("mig_profile", ""))
        if fraction is None:
            unknown.add(s.labels.get("mig_profile", ""))
            fraction = 1.0
        for t, value in s.points:
            if not math.isfinite(value):
                continue
            cell = cells.setdefault((*_key(s.labels), t), {})
            cell[figure] = cell.get(figure, 0.0) + value * fraction
    rows = [
        {
            "namespace": ns,
            "pod": pod,
            "time": t,
            "allocated": cell.get("allocated", math.nan),
            "used": cell.get("used", math.nan),
        }
        for (ns, pod, t), cell in sorted(cells.items())
    ]
    return pd.DataFrame(rows, columns=["namespace", "pod", "time", "allocated", "used"])


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get("namespace", ""), labels.get("pod", "")


def _by_pod(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {_key(s.labels): s.value for s in samples}


WEIGHTED = ("alloc_h", "used_h", "mem_h", "idle_h", "unknown_h", "held")
"""Figures summed per MIG profile in PromQL, each weighted here by the profile's share of its GPU."""
FIGURES = ("alloc_h", "used_h", "mem_h", "idle_h", "unknown_h", "peak_mem", "peak_sm", "gpus", "held", "gpu_bytes")


def _weighted(samples: list[Sample], unknown: set[str]) -> dict[tuple[str, str], float]:
    """Per pod, the sum over its MIG profiles of each value times the profile's share of a GPU (a profile
    not understood counts as a whole GPU and is added to ``unknown``)."""
    out: dict[tuple[str, str], float] = {}
    for s in samples:
        profile = s.labels.get("mig_profile", "")
        fraction = mig_fraction(profile)
        if fraction is None:
            unknown.add(profile)
            fraction = 1.0
        out[_key(s.labels)] = out.get(_key(s.labels), 0.0) + s.value * fraction
    return out


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

    counted = ask(SPACING, spacing_query(window), at)
    spacing_s = spacing_from(max((s.value for s in counted), default=0.0), window)
    unknown_profiles: set[str] = set()
    frames = []
    kv_max: dict[tuple[str, str], float] = {}
    kv_bytes: dict[tuple[str, str], float] = {}
    for when in (at, at - parse_duration(window, "--window")):
        got = {
            name: ask(name, expr, when)
            for name, expr in queries(window, resolution, idle, spacing_s).items()
            if name not in ONLY_NOW or when == at
        }
        values = {
            name: _weighted(got[name], unknown_profiles) if name in WEIGHTED else _by_pod(got[name]) for name in FIGURES
        }
        gpu_models = {_key(s.labels): s.labels.get("gpu_model", "") for s in got.get("gpu_model", [])}
        pods = sorted(set(values["alloc_h"]) | set(values["used_h"]))
        info = {_key(s.labels): s.labels for s in got.get("info", [])}
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
                    **{name: values[name].get(key, 0.0) for name in FIGURES},
                }
            )
        frames.append(pd.DataFrame(rows))
        if when == at:
            got_now = got
            tokens = dict(_by_pod(got.get("tokens", [])))
            kv_max = _by_pod(got.get("kv_max", []))
            for s in got.get("cache_config", []):
                try:
                    kv_bytes[_key(s.labels)] = float(s.labels.get("kv_cache_memory_bytes", ""))
                except ValueError:
                    continue
            latency: dict[str, dict[tuple[str, str], dict[float, float]]] = {"ttft": {}, "itl": {}}
            for metric, histograms in latency.items():
                for s in got.get(metric, []):
                    le = float(s.labels.get("le", "inf").replace("+Inf", "inf"))
                    histograms.setdefault(_key(s.labels), {})[le] = s.value
    current, previous = frames
    if not current.empty:
        keys = list(zip(current["namespace"], current["pod"], strict=True))
        current = current.assign(
            kv_max=[kv_max.get(k, math.nan) for k in keys], kv_bytes=[kv_bytes.get(k, math.nan) for k in keys]
        )
    if not current.empty and not previous.empty:
        # the window before takes each pod's metadata from now (the info series is read once)
        carried = [d for d in (*DIMENSIONS, "gpu_model") if d != "namespace"]
        meta = current.set_index(["namespace", "pod"])[carried]
        previous = (
            previous.drop(columns=carried)
            .join(meta, on=["namespace", "pod"], how="left")
            .fillna(dict.fromkeys(carried, ""))
        )
    counted_by_holders = round(max((s.value for s in got_now.get("unadvertised", [])), default=0.0))
    if counted_by_holders:
        problems.append(fallback_note(counted_by_holders))
    step_s = timeline_step(window, resolution, spacing_s)
    times = timeline_times(window, at, step_s)
    try:
        series = client.query_range(timeline_query(resolution, step_s, spacing_s), times[0], times[-1], step_s)
    except PrometheusError as exc:
        problems.append(f"{TIMELINE}: {exc}")
        failed[TIMELINE] = str(exc).replace(repr(timeline_query(resolution, step_s, spacing_s)), TIMELINE)
        series = []
    timeline = _timeline_frame(series, unknown_profiles)
    if unknown_profiles:
        problems.append(f"MIG profiles not understood, counted as whole GPUs: {', '.join(sorted(unknown_profiles))}")
    return Inputs(
        current,
        previous,
        tokens,
        latency,
        problems,
        failed,
        spacing_s,
        sampling_note(spacing_s, resolution),
        timeline,
        times,
        None if TIMELINE in failed else step_s,
    )
