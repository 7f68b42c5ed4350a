"""``gpuattr demo``: run the exporter on a scenario, scrape it like Prometheus would, print what it sees."""

from __future__ import annotations

import time
from collections import defaultdict

from common import catalog as c
from common.exposition import Sample, scrape
from common.tables import table
from common.units import gib


def _pct(value: float | None) -> str:
    return "     -" if value is None else f"{value * 100:5.1f}%"


def summary(metrics: dict[str, list[Sample]]) -> str:
    """A human summary of one scrape: GPUs, then usage per container or process."""

    def by_key(name: str, *keys: str) -> dict[tuple[str, ...], float]:
        return {tuple(lbl.get(k, "") for k in keys): v for lbl, v in metrics.get(name, [])}

    gpu_keys = ("gpu", "gpu_uuid", "mig_instance")
    total = by_key(c.GPU_MEMORY_TOTAL.name, *gpu_keys)
    used = by_key(c.GPU_MEMORY_USED.name, *gpu_keys)
    sm = by_key(c.GPU_SM_ACTIVE.name, *gpu_keys)
    bw = by_key(c.GPU_MEMORY_BANDWIDTH.name, *gpu_keys)
    up = by_key(c.GPU_UP.name, "gpu")
    names = {lbl["gpu"]: lbl["gpu_model"] for lbl, _ in metrics.get(c.GPU_INFO.name, [])}
    gpu_rows = []
    keys = set(total) | {(g, "", "") for (g,) in up if not any(k[0] == g for k in total)}
    for key in sorted(keys, key=lambda k: (int(k[0]), int(k[2] or -1))):
        gpu, _uuid, mig = key
        label = f"{gpu}" + (f" / MIG {mig}" if mig else "")
        if up.get((gpu,), 1) == 0:
            gpu_rows.append([label, names.get(gpu, ""), "LOST", "", "", ""])
            continue
        gpu_rows.append(
            [
                label,
                names.get(gpu, "") if not mig else "",
                gib(used.get(key, 0), 1),
                gib(total.get(key, 0), 1),
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

    csm = {**by_source(c.CONTAINER_SM_ACTIVE.name, "gpm"), **by_source(c.CONTAINER_SM_ACTIVE.name, "nvml")}
    cbw = {
        **by_source(c.CONTAINER_MEMORY_BANDWIDTH.name, "nvml"),
        **by_source(c.CONTAINER_MEMORY_BANDWIDTH.name, "gpm"),
    }
    dcgm_sm = by_source(c.CONTAINER_SM_ACTIVE.name, "dcgm")
    usage_rows = []
    for key in sorted(mem, key=lambda k: (int(k[0]), int(k[2] or -1), k[4:])):
        gpu, _uuid, mig, _profile, ns, pod, container, process = key
        who = f"{ns}/{pod}/{container}" if pod else f"(process) {process}"
        row = [gpu + (f"/{mig}" if mig else ""), who, gib(mem[key], 1), _pct(csm.get(key)), _pct(cbw.get(key))]
        usage_rows.append([*row, _pct(dcgm_sm.get(key))] if dcgm_sm else row)
    tables = [
        table(["GPU", "model", "used", "total", "SM", "DRAM bw"], gpu_rows, right=(2, 3, 4, 5)),
        table(
            ["GPU", "who", "memory", "SM", "DRAM bw", *(["SM active (dcgm)"] if dcgm_sm else [])],
            usage_rows,
            right=(2, 3, 4, 5),
        ),
    ]
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
    return "\n\n".join(tables)


def wait_for_samples(url: str, samples: int, timeout_s: float) -> dict[str, list[Sample]]:
    """Scrape until the exporter has taken ``samples`` samples (activity needs two), then return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(url)
        taken = sum(v for _, v in metrics.get(c.EXPORTER_SAMPLES.name, []))
        if taken >= samples or time.monotonic() > deadline:
            return metrics
        time.sleep(0.2)
