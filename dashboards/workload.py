"""Workload and model: memory, activity, bandwidth and replicas per model and per workload; vLLM serving
throughput, cost per million tokens, KV cache use and latency."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash

from alerts import rules as r
from common import catalog as c
from dashboards import panels as p
from dashboards.promql import (
    IN_POD,
    MODEL,
    NAMESPACE,
    NODE,
    NODE_HELP,
    NODE_LABEL,
    PRICE,
    SOURCE,
    external,
    pod_labels,
    pods_matching,
    sel,
    used,
)

UID = "gpuattr-workload-model"
TITLE = "GPU attribution / Workload and model"

INFO = (NODE, NAMESPACE, MODEL)
"""Pods of the selected nodes, namespaces and models (the pod info series carries the node as ``instance``)."""
WORKLOAD = "namespace, workload_kind, workload"
WORKLOAD_LEGEND = "{{namespace}}/{{workload}}"


BUSY_KEYS = "namespace, pod, container, gpu, gpu_uuid"


def _usage(metric: c.Metric, *matchers: str) -> str:
    return sel(metric, NODE, NAMESPACE, IN_POD, *matchers)


def _per(labels: str, expr: str, by: str | None = None) -> str:
    """``expr`` (per container or per pod) summed by ``labels`` copied from pod info."""
    return f"sum by ({by or labels}) ({expr} {pod_labels(labels, *INFO)})"


def _tokens(counter: str, by: str = "model") -> str:
    """Tokens per second of a vLLM counter, summed per ``by`` (the servers' model from pod info)."""
    return _per("model", f"rate({sel(counter, NAMESPACE)}[$__rate_interval])", by)


GPUS_HELD_BY_MODEL = _per("model", sel(r.ALLOC_POD, NAMESPACE))
"""GPUs (MIG instances, time-sliced replicas) allocated to the pods of each model."""


def _model_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(p.row("Per model"))
        .with_panel(
            p.timeseries_panel(
                "GPU memory by model",
                f"GPU memory held by all pods serving or training each model ({c.POD_INFO.name}'s model), "
                "stacked. The same model taking very different memory in two deployments usually means "
                "different reservation settings, not different needs.",
                p.BYTES,
                [p.Query(_per("model", _usage(c.CONTAINER_MEMORY)), "{{model}}")],
                stack=True,
                span=12,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Kernel time by model (GPUs' worth)",
                "Time a kernel of each model's pods ran, summed over its pods (GPM SM activity for the only pod "
                "of a MIG instance): 1.0 is one GPU kept busy. Against the GPUs each model holds, it says which "
                "models earn their hardware; the SM activity panel says how much of the SMs that time used.",
                p.COUNT,
                [p.Query(_per("model", used(NODE, NAMESPACE, IN_POD)), "{{model}}")],
                span=12,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "SM activity by model (GPUs' worth)",
                "Share of the SMs each model's pods kept busy ($source: the device's GPM or DCGM SM activity split "
                "by kernel time), summed over its pods. Far below the kernel-time line: kernels that run long "
                "and do little (tiny kernels, launch-bound loops, polling).",
                p.COUNT,
                [
                    p.Query(
                        _per("model", _usage(c.CONTAINER_SM_ACTIVE, SOURCE), "model, source"), "{{model}} ({{source}})"
                    )
                ],
                span=12,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Memory bandwidth by model (GPUs' worth)",
                "Each model's share of DRAM bandwidth ($source), summed over its pods and GPUs, one line per "
                "source (nvml and gpm measure different things; never add them). Decode-heavy inference is "
                "bandwidth-bound: this, not SM activity, is its saturation signal.",
                p.COUNT,
                [
                    p.Query(
                        _per("model", _usage(c.CONTAINER_MEMORY_BANDWIDTH, SOURCE), "model, source"),
                        "{{model}} ({{source}})",
                    )
                ],
                span=12,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Replicas by model",
                f"Pods per model on the selected nodes ({c.POD_INFO.name}). Replicas that grow while per-replica "
                "activity stays low are an autoscaler scaling on the wrong signal.",
                p.COUNT,
                [p.Query(f"count by (model) ({sel(c.POD_INFO, *INFO)})", "{{model}}")],
                span=12,
            )
        )
    )


def _workload_row(d: dash.Dashboard) -> dash.Dashboard:
    info = f"max by (namespace, pod, workload_kind, workload) ({sel(c.POD_INFO, *INFO)})"

    def per_workload(expr: str) -> str:
        return f"sum by ({WORKLOAD}) ({expr} * on (namespace, pod) group_left (workload_kind, workload) {info})"

    return (
        d.with_row(p.row("Per workload"))
        .with_panel(
            p.table_panel(
                "Workloads",
                "Each workload (Deployment, StatefulSet, Job, … owning GPU pods): replicas, GPUs allocated, GPU "
                "memory held, kernel time and SM activity ($source) in GPUs' worth, now. A workload with many "
                "GPUs allocated and little activity is the first to right-size.",
                p.COUNT,
                [
                    p.Column(p.Query(f"count by ({WORKLOAD}) ({info})"), "replicas", p.COUNT),
                    p.Column(p.Query(per_workload(sel(r.ALLOC_POD, NAMESPACE))), "GPUs allocated", p.COUNT),
                    p.Column(p.Query(per_workload(_usage(c.CONTAINER_MEMORY))), "GPU memory", p.BYTES),
                    p.Column(p.Query(per_workload(used(NODE, NAMESPACE, IN_POD))), "kernel time (GPUs)", p.COUNT),
                    p.Column(
                        p.Query(per_workload(_usage(c.CONTAINER_SM_ACTIVE, SOURCE))), "SM activity (GPUs)", p.COUNT
                    ),
                ],
                labels=["namespace", "workload_kind", "workload"],
                sort_by="GPUs allocated",
            )
        )
        .with_panel(
            p.timeseries_panel(
                "GPU memory by workload",
                "GPU memory held by each workload's pods, stacked: which workloads fill the GPUs over time.",
                p.BYTES,
                [p.Query(per_workload(_usage(c.CONTAINER_MEMORY)), WORKLOAD_LEGEND)],
                stack=True,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Kernel time by workload (GPUs' worth)",
                "Time a kernel of each workload's pods ran, summed over its pods. Bursty lines are inference "
                "following traffic; flat lines near zero are reservations.",
                p.COUNT,
                [p.Query(per_workload(used(NODE, NAMESPACE, IN_POD)), WORKLOAD_LEGEND)],
            )
        )
        .with_panel(
            p.table_panel(
                "Busy but doing little",
                "Containers whose kernels run more than 15% of the time while the SMs they get stay below a "
                f"tenth of that ({r.SM_PER_KERNEL}): tiny kernels, launch-bound loops, polling. nvidia-smi shows "
                "their GPUs busy; batching the work, CUDA graphs or a smaller GPU share would free them. Fires "
                "GpuBusyButSmsIdle. Needs GPM or dcgm-exporter: kernel time alone cannot tell.",
                p.RATIO,
                [
                    p.Column(
                        p.Query(
                            f"max by ({BUSY_KEYS}) ({_usage(c.CONTAINER_KERNEL_ACTIVE)}) > 0.15 "
                            f"and on ({BUSY_KEYS}) ({sel(r.SM_PER_KERNEL, NAMESPACE)} < 0.1)"
                        ),
                        "kernel time",
                        p.RATIO,
                    ),
                    p.Column(
                        p.Query(f"max by ({BUSY_KEYS}) ({sel(r.SM_PER_KERNEL, NAMESPACE)} < 0.1)"),
                        "SM activity per kernel time",
                        p.RATIO,
                    ),
                ],
                labels=["namespace", "pod", "container", "gpu", "gpu_uuid"],
                sort_by="kernel time",
            )
        )
    )


def _vllm_row(d: dash.Dashboard) -> dash.Dashboard:
    generated = _tokens(c.External.VLLM_GENERATION_TOKENS)
    prompt = _tokens(c.External.VLLM_PROMPT_TOKENS)
    vllm_pods = pods_matching(*INFO)
    return (
        d.with_row(p.row("vLLM serving"))
        .with_panel(
            p.timeseries_panel(
                "Tokens per second by model",
                "Generated (output) and prompt (prefill) tokens per second over each model's vLLM servers "
                f"(vLLM's {c.External.VLLM_GENERATION_TOKENS} and {c.External.VLLM_PROMPT_TOKENS}). The work "
                "the GPUs held by inference actually do.",
                p.TOKENS_PER_S,
                [p.Query(generated, "{{model}} generated"), p.Query(prompt, "{{model}} prompt")],
            )
        )
        .with_panel(
            p.timeseries_panel(
                f"Cost per million generated tokens ({p.CURRENCY})",
                "GPUs allocated to each model's pods times $gpu_hour_price ($currency per GPU-hour), over the "
                "tokens they generate per hour, per million tokens. Compare with an API price; a cost that "
                "climbs at night is replicas kept for a peak.",
                p.MONEY,
                [
                    p.Query(
                        f"{GPUS_HELD_BY_MODEL} * {PRICE} / ({generated} * 3600) * 1e6",
                        f"{{{{model}}}} ({p.CURRENCY} per million tokens)",
                    )
                ],
            )
        )
        .with_panel(
            p.timeseries_panel(
                "KV cache usage by server",
                f"Share of the KV cache each vLLM server has in use (vLLM's {c.External.VLLM_KV_CACHE_USAGE[0]}, a 0–1 "
                "fraction). A cache that never passes a small share was reserved too large: see the vLLM "
                "memory dashboard for what --gpu-memory-utilization to set.",
                p.RATIO,
                [
                    p.Query(
                        f"max by (namespace, pod) ({external(c.External.VLLM_KV_CACHE_USAGE, NAMESPACE)}) {vllm_pods}",
                        "{{namespace}}/{{pod}}",
                    )
                ],
                span=12,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "p95 inter-token latency by server",
                f"95th percentile time between generated tokens per vLLM server over 5 minutes (recording rule "
                f"{r.ITL_P95}). Rising latency with flat traffic points at a noisy neighbour: check the Node "
                "and GPU dashboard.",
                p.SECONDS,
                [p.Query(f"{sel(r.ITL_P95, NAMESPACE)} {vllm_pods}", "{{namespace}}/{{pod}}")],
                span=12,
            )
        )
    )


def build() -> dash.Dashboard:
    d = (
        p.new_dashboard(
            UID,
            TITLE,
            "Per model and per workload: GPU memory, SM activity, bandwidth and replicas; for vLLM, tokens per "
            "second, cost per million tokens, KV cache usage and inter-token latency.",
        )
        .with_variable(p.datasource_variable())
        .with_variable(
            p.query_variable(
                "node",
                "Node",
                f"label_values({c.GPU_INFO.name}, {NODE_LABEL})",
                NODE_HELP,
            )
        )
        .with_variable(
            p.query_variable(
                "namespace",
                "Namespace",
                f"label_values({sel(c.POD_INFO, NODE)}, namespace)",
                "Namespaces with GPU pods on the selected nodes.",
            )
        )
        .with_variable(
            p.query_variable(
                "model",
                "Model",
                f"label_values({sel(c.POD_INFO, NODE, NAMESPACE)}, model)",
                "Models served or trained in the selected namespaces (the pod label, else parsed from the "
                "container's arguments).",
            )
        )
        .with_variable(p.source_variable())
        .with_variable(p.price_variable())
        .with_variable(p.currency_variable())
    )
    return _vllm_row(_workload_row(_model_row(d)))
