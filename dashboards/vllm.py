"""vLLM memory: per server, weights / KV cache used / KV cache idle / overhead over time, the recommended
--gpu-memory-utilization and the memory it would give back (published by the attribution job)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash

from alerts import rules as r
from common import catalog as c
from dashboards import panels as p
from dashboards.promql import MODEL, NAMESPACE, POD, sel

UID = "gpuattr-vllm-memory"
TITLE = "GPU attribution / vLLM memory"

SERVERS = (NAMESPACE, MODEL, POD)
SERVER = "namespace, pod, model"
SERVER_LEGEND = "{{namespace}}/{{pod}}"
KV_IDLE = 'component="kv_idle"'
SPLIT_WHY = (
    "The attribution job splits what NVML shows for each vLLM server into weights, KV cache in use at its "
    "peak over the job's window (kv_used), KV cache reserved but never used (kv_idle) and the rest "
    "(overhead: CUDA context, activations, CUDA graphs, NCCL)."
)


def _summary_row(d: dash.Dashboard) -> dash.Dashboard:
    split = sel(r.VLLM_SPLIT, *SERVERS)
    return (
        d.with_row(p.row("Selected servers"))
        .with_panel(
            p.stat_panel(
                "Reclaimable GPU memory",
                "GPU memory the selected servers would give back if each ran with the recommended "
                f"--gpu-memory-utilization ({c.VLLM_RECLAIMABLE.name}, summed over servers and GPUs): "
                "room for another model or a smaller GPU.",
                p.BYTES,
                p.Query(f"sum({sel(c.VLLM_RECLAIMABLE, *SERVERS)})"),
                span=6,
            )
        )
        .with_panel(
            p.stat_panel(
                "KV cache reserved, never used",
                SPLIT_WHY + " This is the kv_idle part summed over the selected servers: memory held for "
                "requests that never came.",
                p.BYTES,
                p.Query(f"sum({sel(r.VLLM_SPLIT, *SERVERS, KV_IDLE)})"),
                span=6,
            )
        )
        .with_panel(
            p.stat_panel(
                "Lowest peak KV cache use",
                f"The smallest share of its reserved KV cache any selected server used at its peak (recording "
                f"rule {r.VLLM_KV_USED}). Below 25% for 6 hours fires VllmKvCacheOversized.",
                p.RATIO,
                p.Query(f"min({sel(r.VLLM_KV_USED, *SERVERS)})"),
                span=6,
            )
        )
        .with_panel(
            p.stat_panel(
                "vLLM servers",
                "vLLM servers the attribution job has split (one per pod, whatever its tensor parallelism).",
                p.COUNT,
                p.Query(f"count(count by ({SERVER}) ({split}))"),
                span=6,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Memory by component, selected servers",
                SPLIT_WHY + " Stacked over the selected servers: a tall kv_idle band is reservation to reclaim.",
                p.BYTES,
                [p.Query(f"sum by (component) ({split})", "{{component}}")],
                stack=True,
            )
        )
        .with_panel(
            p.bargauge_panel(
                "Reclaimable memory per server",
                "GPU memory each server would give back with the recommended --gpu-memory-utilization "
                "(summed over its GPUs), largest first.",
                p.BYTES,
                [p.Query(f"sort_desc(sum by ({SERVER}) ({sel(c.VLLM_RECLAIMABLE, *SERVERS)}))", SERVER_LEGEND)],
                span=12,
            )
        )
        .with_panel(
            p.table_panel(
                "Recommended settings",
                "Per server: the --gpu-memory-utilization it runs with, the one the attribution job recommends "
                "(weights, overhead and peak KV cache use plus headroom), the peak share of its KV cache in use "
                "and the memory the change would give back. Set the recommended value and restart the server "
                "to reclaim it.",
                p.RATIO,
                [
                    p.Column(
                        p.Query(f"max by ({SERVER}) ({sel(c.VLLM_GPU_MEMORY_UTILIZATION, *SERVERS)})"),
                        "--gpu-memory-utilization",
                        p.RATIO,
                    ),
                    p.Column(
                        p.Query(f"max by ({SERVER}) ({sel(c.VLLM_RECOMMENDED_GPU_MEMORY_UTILIZATION, *SERVERS)})"),
                        "recommended",
                        p.RATIO,
                    ),
                    p.Column(
                        p.Query(f"max by ({SERVER}) ({sel(r.VLLM_KV_USED, *SERVERS)})"), "peak KV cache use", p.RATIO
                    ),
                    p.Column(
                        p.Query(f"sum by ({SERVER}) ({sel(c.VLLM_RECLAIMABLE, *SERVERS)})"), "reclaimable", p.BYTES
                    ),
                ],
                labels=["namespace", "pod", "model"],
                sort_by="reclaimable",
            )
        )
    )


def _server_row(d: dash.Dashboard) -> dash.Dashboard:
    one = (NAMESPACE, POD)
    return d.with_row(p.row("Per server")).with_panel(
        p.timeseries_panel(
            "Memory split of $pod",
            SPLIT_WHY + " Stacked for one server (the panel repeats for each selected pod); the dashed line is "
            "what it would hold with the recommended --gpu-memory-utilization.",
            p.BYTES,
            [
                p.Query(f"sum by (component) ({sel(r.VLLM_SPLIT, *one)})", "{{component}}"),
                p.Query(
                    f"sum({sel(r.VLLM_SPLIT, *one)}) - sum({sel(c.VLLM_RECLAIMABLE, *one)})",
                    "with the recommended setting",
                ),
            ],
            stack=True,
            lines=["B"],
        )
        .repeat("pod")
        .repeat_direction("h")
        .max_per_row(2)
    )


def build() -> dash.Dashboard:
    d = (
        p.new_dashboard(
            UID,
            TITLE,
            "Where each vLLM server's GPU memory goes (weights, KV cache used and idle, overhead), the "
            "--gpu-memory-utilization to set instead, and the memory that would free.",
        )
        .with_variable(p.datasource_variable())
        .with_variable(
            p.query_variable(
                "namespace",
                "Namespace",
                f"label_values({c.VLLM_MEMORY.name}, namespace)",
                "Namespaces with vLLM servers the attribution job has analysed.",
            )
        )
        .with_variable(
            p.query_variable(
                "model",
                "Model",
                f"label_values({sel(c.VLLM_MEMORY, NAMESPACE)}, model)",
                "Models served by vLLM in the selected namespaces.",
            )
        )
        .with_variable(
            p.query_variable(
                "pod",
                "Server",
                f"label_values({sel(c.VLLM_MEMORY, NAMESPACE, MODEL)}, pod)",
                "vLLM server pods of the selected models; the per-server panels repeat for each.",
            )
        )
    )
    return _server_row(_summary_row(d))
