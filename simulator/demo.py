"""``gpuattr demo``: run the exporter on a scenario, scrape it like Prometheus would, print what it sees."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from alerts.config import AlertConfig
from common import catalog as c
from common.exposition import Sample, scrape
from common.tables import table
from common.units import gib

BUSY = AlertConfig()  # the GpuBusyButSmsIdle alert's thresholds, so the demo flags what the alert would


def _pct(value: float | None) -> str:
    """A ratio as a percentage; a small non-zero one keeps its digits (0.025 %, not 0.0 %)."""
    if value is None:
        return "-"
    return f"{value * 100:.3f}%" if 0 < value < 0.001 else f"{value * 100:.1f}%"


def _one(metrics: dict[str, list[Sample]], name: str, gpu: str) -> float | None:
    return next((v for lbl, v in metrics.get(name, []) if lbl.get("gpu") == gpu), None)


def summary(metrics: dict[str, list[Sample]]) -> str:
    """A human summary of one scrape: GPUs, then usage per container or process."""

    def by_key(name: str, *keys: str) -> dict[tuple[str, ...], float]:
        return {tuple(lbl.get(k, "") for k in keys): v for lbl, v in metrics.get(name, [])}

    gpu_keys = ("gpu", "gpu_uuid", "mig_instance")
    total = by_key(c.GPU_MEMORY_TOTAL.name, *gpu_keys)
    used = by_key(c.GPU_MEMORY_USED.name, *gpu_keys)
    kernel_time = by_key(c.GPU_UTILIZATION.name, *gpu_keys)  # whole GPUs only: N/A under MIG
    # SM activity from GPM where the GPU has it, else dcgm-exporter's; the source=nvml fallback is kernel time
    sm = {
        tuple(lbl.get(k, "") for k in gpu_keys): v
        for source in ("dcgm", "gpm")
        for lbl, v in metrics.get(c.GPU_SM_ACTIVE.name, [])
        if lbl.get("source") == source
    }
    bw = by_key(c.GPU_MEMORY_BANDWIDTH.name, *gpu_keys)
    up = by_key(c.GPU_UP.name, "gpu")
    names = {lbl["gpu"]: lbl["gpu_model"] for lbl, _ in metrics.get(c.GPU_INFO.name, [])}
    gpu_rows = []
    keys = set(total) | {(g, "", "") for (g,) in up if not any(k[0] == g for k in total)}
    for key in sorted(keys, key=lambda k: (int(k[0]), int(k[2] or -1))):
        gpu, _uuid, mig = key
        label = f"{gpu}" + (f" / MIG {mig}" if mig else "")
        if up.get((gpu,), 1) == 0:
            gpu_rows.append([label, names.get(gpu, ""), "LOST", "", "", "", ""])
            continue
        gpu_rows.append(
            [
                label,
                names.get(gpu, "") if not mig else "",
                gib(used.get(key, 0), 1),
                gib(total.get(key, 0), 1),
                _pct(kernel_time.get(key)),
                _pct(sm.get(key)),
                _pct(bw.get(key)),
            ]
        )
    usage_keys = (*c.USAGE_LABELS,)
    mem = by_key(c.CONTAINER_MEMORY.name, *usage_keys)

    def by_source(name: str, source: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(lbl.get(k, "") for k in usage_keys): v for lbl, v in metrics.get(name, []) if lbl["source"] == source
        }

    kernel = {**by_source(c.CONTAINER_KERNEL_ACTIVE.name, "nvml"), **by_source(c.CONTAINER_KERNEL_ACTIVE.name, "mps")}
    # SM activity: GPM where the GPU has it, else dcgm-exporter's; never kernel time passed off as SMs
    csm = {**by_source(c.CONTAINER_SM_ACTIVE.name, "dcgm"), **by_source(c.CONTAINER_SM_ACTIVE.name, "gpm")}
    cbw = {
        **by_source(c.CONTAINER_MEMORY_BANDWIDTH.name, "nvml"),
        **by_source(c.CONTAINER_MEMORY_BANDWIDTH.name, "mps"),
        **by_source(c.CONTAINER_MEMORY_BANDWIDTH.name, "gpm"),
    }
    unknown = {
        tuple(lbl.get(k, "") for k in usage_keys): lbl["reason"]
        for lbl, _ in metrics.get(c.CONTAINER_ACTIVITY_UNKNOWN.name, [])
    }
    mps_gpus = {lbl["gpu"] for lbl, _ in metrics.get(c.GPU_MPS_CLIENTS.name, [])}
    usage_rows = []
    for key in sorted(mem, key=lambda k: (int(k[0]), int(k[2] or -1), k[4:])):
        gpu, _uuid, mig, _profile, ns, pod, container, process = key
        who = f"{ns}/{pod}/{container}" if pod else f"(process) {process}"
        busy, sms = kernel.get(key), csm.get(key)
        if key in unknown:
            note = {
                "mps_shared": "activity unknown: one of several MPS clients",
                "mig_shared": "activity unknown: one of several in a MIG instance",
            }.get(unknown[key], "activity unknown this interval")
        elif (
            busy is not None
            and sms is not None
            and busy > BUSY.busy_kernel_threshold
            and sms < busy * BUSY.busy_sm_per_kernel_threshold
        ):
            note = "busy but its SMs are nearly idle"
        else:
            note = "MPS client" if gpu in mps_gpus else ""
        usage_rows.append(
            [
                gpu + (f"/{mig}" if mig else ""),
                who,
                gib(mem[key], 1),
                _pct(busy),
                _pct(sms),
                _pct(cbw.get(key)),
                note,
            ]
        )
    tables = [
        table(
            ["GPU", "model", "used", "total", "kernel time", "SM active", "DRAM bw"], gpu_rows, right=(2, 3, 4, 5, 6)
        ),
        table(
            ["GPU", "who", "memory", "kernel time", "SM active", "DRAM bw", ""],
            usage_rows,
            right=(2, 3, 4, 5),
        ),
    ]
    mps_rows = [
        [
            lbl["gpu"],
            f"{int(v)} clients",
            _pct(_one(metrics, c.GPU_MPS_KERNEL_ACTIVE.name, lbl["gpu"])),
            gib(_one(metrics, c.GPU_MPS_SERVER_MEMORY.name, lbl["gpu"]) or 0, 2),
        ]
        for lbl, v in sorted(metrics.get(c.GPU_MPS_CLIENTS.name, []), key=lambda s: int(s[0]["gpu"]))
    ]
    if mps_rows:
        tables.append(table(["GPU", "MPS server", "kernel time, all clients", "server memory"], mps_rows, right=(2, 3)))
    pods = metrics.get(c.POD_INFO.name, [])
    if pods:
        allocated: dict[tuple[str, str], list[str]] = defaultdict(list)
        for lbl, _ in metrics.get(c.CONTAINER_ALLOCATED.name, []):
            where = lbl["gpu"] + (f"/MIG {lbl['mig_instance']}" if lbl["mig_instance"] else "")
            allocated[(lbl["namespace"], lbl["pod"])].append(where)
        using = {(k[4], k[5]) for k, v in mem.items() if v > 0}
        pod_rows = []
        for lbl, _ in sorted(pods, key=lambda p: (p[0]["namespace"], p[0]["pod"])):
            key = (lbl["namespace"], lbl["pod"])
            note = "allocated, holds no GPU memory" if key in allocated and key not in using else ""
            pod_rows.append(
                [
                    f"{lbl['namespace']}/{lbl['pod']}",
                    f"{lbl['workload_kind']}/{lbl['workload']}",
                    lbl["model"] or "-",
                    lbl["workload_class"] or "-",
                    lbl["team"] or "-",
                    ",".join(allocated.get(key, [])) or "-",
                    note,
                ]
            )
        tables.append(table(["pod", "workload", "model", "class", "team", "allocated GPUs", ""], pod_rows))
    tables.append(LEGEND)
    return "\n\n".join(tables)


LEGEND = "\n".join(
    (
        "kernel time  share of the interval in which a kernel ran, not how many SMs it kept busy",
        f"             ({c.GPU_UTILIZATION.name}, {c.CONTAINER_KERNEL_ACTIVE.name})",
        "SM active    share of the SMs busy, from GPM or dcgm-exporter; '-' where neither measures it",
        f"             ({c.GPU_SM_ACTIVE.name}, {c.CONTAINER_SM_ACTIVE.name})",
    )
)


def next_steps(servers: list[Any], exporter_url: str, command: str = "gpuattr") -> str:
    """The simulated vLLM servers' URLs, and the README's next steps as commands that run against them
    while the demo serves. ``servers``: :class:`simulator.vllm.SimVllmServer` objects."""
    leaders = [s for s in servers if getattr(s, "rank", 0) == 0]
    if not leaders:
        return f"Next, while it serves:\n  curl -s {exporter_url}"
    rows = [[f"{s.namespace}/{s.pod}", s.metrics_url, s.logs_url] for s in leaders]
    first = leaders[0]
    lines = [
        "The simulated vLLM servers:",
        "",
        table(["server", "/metrics", "start-up log"], rows),
        "",
        "Next, while it serves (in another terminal):",
        f"  curl -s {exporter_url}",
        f"  curl -s {first.metrics_url} | grep '^vllm:'",
        f"  curl -s {first.logs_url} | {command} vllm-log -",
        "  mkdir -p demo-logs",
        *(f"  curl -s {s.logs_url} > demo-logs/{s.namespace}_{s.pod}.log" for s in leaders),
        f"  {command} attribute --window 5m --exporter-url {exporter_url} --logs demo-logs \\",
        *(
            f"      --vllm {s.namespace}/{s.pod}={s.metrics_url}" + (" \\" if s is not leaders[-1] else "")
            for s in leaders
        ),
    ]
    return "\n".join(lines)


def wait_for_samples(url: str, samples: int, timeout_s: float) -> dict[str, list[Sample]]:
    """Scrape until the exporter has taken ``samples`` samples (activity needs two), then return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(url)
        taken = sum(v for _, v in metrics.get(c.EXPORTER_SAMPLES.name, []))
        if taken >= samples or time.monotonic() > deadline:
            return metrics
        time.sleep(0.2)
