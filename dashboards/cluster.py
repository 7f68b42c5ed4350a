"""Cluster efficiency: GPUs allocated against GPUs' worth used, what the difference costs, and who holds it."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, table
from grafana_foundation_sdk.builders import dashboard as dash

from alerts import rules as r
from common import catalog as c
from dashboards import panels as p
from dashboards.promql import NAMESPACE, PRICE, WHOLE_GPU, or_zero, pod_labels, sel

UID = "gpuattr-cluster-efficiency"
TITLE = "GPU attribution / Cluster efficiency"

ALLOC_NS = sel(r.ALLOC_NAMESPACE, NAMESPACE)
USED_NS = sel(r.SM_NAMESPACE, NAMESPACE)
ALLOC_POD = sel(r.ALLOC_POD, NAMESPACE)
USED_POD = sel(r.SM_POD, NAMESPACE)


def unused_pod(*matchers: str) -> str:
    """GPUs allocated to each pod that its SM activity does not use (never below 0: a pod that uses more than
    it was allocated, e.g. by time-slicing, does not offset another's idle GPU)."""
    alloc, used = sel(r.ALLOC_POD, *matchers), sel(r.SM_POD, *matchers)
    return f"clamp_min({alloc} - on (namespace, pod) {or_zero(used, alloc, 'namespace, pod')}, 0)"


UNUSED_POD = unused_pod(NAMESPACE)

HOURS = "$__interval_ms / 3600000"
"""Turns a sum of samples taken every ``$__interval`` into hours."""

DEVICE = "instance, gpu, gpu_uuid, mig_instance"
"""One whole GPU or MIG instance of one node."""
GPU_OR_MIG = f"max by ({DEVICE}) ({c.GPU_SM_ACTIVE.name})"
"""Device SM activity, one series per whole GPU or MIG instance (each carries one source)."""


def _gpu_hours(expr: str, by: str = "") -> str:
    """``expr`` (GPUs, per pod) integrated over the dashboard's time range, in GPU-hours."""
    grouping = f" by ({by})" if by else ""
    return f"(sum{grouping} (sum_over_time(({expr})[$__range:$__interval])) * {HOURS})"


def _unused_by(label: str, *info: str, pods: str = UNUSED_POD) -> str:
    """Unused GPUs per pod, carrying ``label`` (namespace is there already; others come from pod info)."""
    if label == "namespace" and not info:
        return pods
    return f"{pods} {pod_labels(label, *info)}"


def _ranking(label: str, *info: str) -> str:
    return f"sort_desc(topk(10, {_gpu_hours(_unused_by(label, *info), label)}))"


WASTE_WHY = (
    "Allocated but unused = GPUs the kubelet allocated to a pod minus the GPUs' worth its kernels kept busy "
    "(per-container SM activity, nvml on whole GPUs, gpm on MIG instances), never below zero per pod, "
    "integrated over the time range. A MIG instance or a time-sliced replica counts as one allocation."
)


def _summary_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(p.row("Allocation against use"))
        .with_panel(
            p.stat_panel(
                "GPUs allocated",
                "GPUs, MIG instances and time-sliced replicas the kubelet has allocated to containers now "
                "(recording rule " + r.ALLOC_NAMESPACE + "). This is what the cluster pays for.",
                p.COUNT,
                p.Query(f"sum({ALLOC_NS})"),
            )
        )
        .with_panel(
            p.stat_panel(
                "GPUs' worth used",
                "Sum of per-container kernel time now (" + r.SM_NAMESPACE + "): 1.0 is one GPU's kernels "
                "running all the time. Compare with GPUs allocated to see how much of the allocation works.",
                p.COUNT,
                p.Query(f"sum({USED_NS})"),
                decimals=2,
            )
        )
        .with_panel(
            p.stat_panel(
                "Share of the allocation used",
                "GPU-hours used (SM activity) over GPU-hours allocated in the time range. Below 30% for a day "
                "fires GpuAllocationUnderusedByNamespace/ByTeam; a cluster-wide number this low means "
                "allocations are sized for peaks or held by idle pods.",
                p.RATIO,
                p.Query(f"{_gpu_hours(USED_POD)} / {_gpu_hours(ALLOC_POD)}"),
            )
        )
        .with_panel(
            p.stat_panel(
                "Allocated but unused GPU-hours",
                WASTE_WHY + " The GPU-hours the cluster paid for and did not use over the time range.",
                p.COUNT,
                p.Query(_gpu_hours(UNUSED_POD)),
                decimals=1,
            )
        )
        .with_panel(
            p.stat_panel(
                f"Cost of unused allocations ({p.CURRENCY})",
                "Allocated but unused GPU-hours over the time range times $gpu_hour_price ($currency per GPU-hour): "
                "what idle allocations cost in this period.",
                p.MONEY,
                p.Query(f"{_gpu_hours(UNUSED_POD)} * {PRICE}"),
                decimals=0,
            )
        )
        .with_panel(
            p.stat_panel(
                f"Cost of all allocations ({p.CURRENCY})",
                "All GPU-hours allocated over the time range times $gpu_hour_price ($currency): the GPU bill this "
                "view covers, against which the cost of unused allocations is a share.",
                p.MONEY,
                p.Query(f"{_gpu_hours(ALLOC_POD)} * {PRICE}"),
                decimals=0,
            )
        )
        .with_panel(
            p.timeseries_panel(
                "GPUs allocated against GPUs' worth used",
                "Allocated GPUs (kubelet allocations) against the GPUs' worth their containers kept busy "
                "(per-container kernel time; GPM on MIG instances), and the allocated-but-unused difference "
                "summed per pod. The gap between the two lines is the headroom you pay for.",
                p.COUNT,
                [
                    p.Query(f"sum({ALLOC_NS})", "allocated"),
                    p.Query(f"sum({USED_NS})", "used (kernel time)"),
                    p.Query(f"sum({UNUSED_POD})", "allocated but unused"),
                ],
            )
        )
        .with_panel(
            p.timeseries_panel(
                "Allocated but unused GPUs by namespace",
                WASTE_WHY + " Stacked per namespace: which namespaces hold the idle GPUs, and since when.",
                p.COUNT,
                [p.Query(f"sum by (namespace) ({UNUSED_POD})", "{{namespace}}")],
                stack=True,
            )
        )
    )


def _busy_row(d: dash.Dashboard) -> dash.Dashboard:
    return (
        d.with_row(p.row("How busy the GPUs are"))
        .with_panel(
            p.heatmap_panel(
                "SM activity of every GPU and MIG instance over time",
                "Each column counts GPUs (and MIG instances) by how busy their SMs were at that time "
                f"({c.GPU_SM_ACTIVE.name}, one series per device from its best source). A dark band near "
                "0% is hardware that is powered, allocated or not, and doing nothing.",
                p.RATIO,
                p.Query(GPU_OR_MIG, "{{instance}} GPU {{gpu}} {{mig_instance}}"),
                bucket_size="0.1",
            )
        )
        .with_panel(
            p.histogram_panel(
                "GPUs by average SM activity over the time range",
                "How many GPUs (and MIG instances) averaged 0–10%, 10–20%, … SM activity over the time range. "
                "A fleet with most GPUs in the lowest buckets is over-provisioned or badly packed.",
                p.PERCENT,
                p.Query(
                    f"100 * avg by ({DEVICE}) (avg_over_time({c.GPU_SM_ACTIVE.name}[$__range]))",
                    "{{instance}} GPU {{gpu}} {{mig_instance}}",
                ),
                bucket_size=10,
            )
        )
        .with_panel(
            p.stat_panel(
                "Whole GPUs idle now",
                "Whole GPUs (not MIG instances) whose SM activity is below 1% now, allocated or not: hardware "
                "that could be drained, shared or given back.",
                p.COUNT,
                p.Query(f"count({sel(c.GPU_SM_ACTIVE, WHOLE_GPU)} < 0.01) or vector(0)"),
                span=6,
            )
        )
        .with_panel(
            p.stat_panel(
                "GPUs and MIG instances reporting",
                "Devices with an SM activity series now (whole GPUs plus MIG instances): the denominator of "
                "the heatmap and the histogram.",
                p.COUNT,
                p.Query(f"count({GPU_OR_MIG})"),
                span=6,
            )
        )
    )


def _owners_row(d: dash.Dashboard) -> dash.Dashboard:
    def ranking(owner: str, label: str, *info: str) -> bargauge.Panel:
        return p.bargauge_panel(
            f"Top {owner} by unused GPU-hours",
            WASTE_WHY + f" The ten {owner} with the most allocated-but-unused GPU-hours over the time range: "
            "where right-sizing or scale-to-zero pays first.",
            p.COUNT,
            [p.Query(_ranking(label, *info), f"{{{{{label}}}}}")],
        )

    def owners(owner: str, label: str, alloc_rule: str, used_rule: str, *matchers: str, note: str = "") -> table.Panel:
        alloc = _gpu_hours(sel(alloc_rule, *matchers), label)
        used = or_zero(_gpu_hours(sel(used_rule, *matchers), label), alloc, label)
        unused = _gpu_hours(_unused_by(label, pods=unused_pod(*matchers)), label)
        return p.table_panel(
            f"Allocation, use and unused cost ({p.CURRENCY}) by {owner}",
            f"Per {owner}: GPU-hours allocated and GPU-hours used (SM activity) over the time range (recording "
            f"rules {alloc_rule} and {used_rule}), the share used, and the allocated-but-unused GPU-hours "
            "(summed per pod, so one pod's overuse does not hide another's idle GPU) with their cost at "
            "$gpu_hour_price, in $currency. Sorted by cost: who to talk to first." + note,
            p.COUNT,
            [
                p.Column(p.Query(alloc), "GPU-hours allocated", p.COUNT),
                p.Column(p.Query(used), "GPU-hours used", p.COUNT),
                p.Column(p.Query(f"{used} / {alloc}"), "share used", p.RATIO),
                p.Column(p.Query(unused), "unused GPU-hours", p.COUNT),
                p.Column(p.Query(f"{unused} * {PRICE}"), "unused cost", p.MONEY),
            ],
            labels=[label],
            span=12,
            sort_by="unused cost",
        )

    return (
        d.with_row(p.row("Who holds GPUs without using them"))
        .with_panel(ranking("namespaces", "namespace"))
        .with_panel(ranking("teams", "team"))
        .with_panel(ranking("models", "model", 'model!=""'))
        .with_panel(owners("namespace", "namespace", r.ALLOC_NAMESPACE, r.SM_NAMESPACE, NAMESPACE))
        .with_panel(
            owners("team", "team", r.ALLOC_TEAM, r.SM_TEAM, note=" Teams span namespaces: all namespaces count here.")
        )
    )


def _classes_row(d: dash.Dashboard) -> dash.Dashboard:
    by_class = pod_labels("workload_class")
    return (
        d.with_row(p.row("Workload classes"))
        .with_panel(
            p.timeseries_panel(
                "GPUs allocated and used by workload class",
                "Allocated GPUs and GPUs' worth used (per-container SM activity) per workload class: "
                f"inference, training, batch, experimentation ({c.POD_INFO.name}'s workload_class, from the "
                "gpuattr.io/workload-class label or inferred from the owner). Training should track its "
                "allocation closely; inference and notebooks usually do not.",
                p.COUNT,
                [
                    p.Query(f"sum by (workload_class) ({ALLOC_POD} {by_class})", "{{workload_class}} allocated"),
                    p.Query(f"sum by (workload_class) ({USED_POD} {by_class})", "{{workload_class}} used"),
                ],
            )
        )
        .with_panel(
            p.bargauge_panel(
                "Share of the allocation used, by workload class",
                "GPU-hours used (SM activity) over GPU-hours allocated per workload class in the time range: "
                "which kinds of work make good use of what they hold.",
                p.RATIO,
                [
                    p.Query(
                        f"sort_desc({_gpu_hours(f'{USED_POD} {by_class}', 'workload_class')}"
                        f" / {_gpu_hours(f'{ALLOC_POD} {by_class}', 'workload_class')})",
                        "{{workload_class}}",
                    )
                ],
                span=6,
                max_value=1,
            )
        )
        .with_panel(
            p.bargauge_panel(
                "Unused GPU-hours by workload class",
                WASTE_WHY + " Per workload class: experimentation and inference pods typically hold GPUs "
                "between bursts of work.",
                p.COUNT,
                [
                    p.Query(
                        f"sort_desc({_gpu_hours(_unused_by('workload_class'), 'workload_class')})", "{{workload_class}}"
                    )
                ],
                span=6,
            )
        )
    )


def _review_row(d: dash.Dashboard) -> dash.Dashboard:
    """The last capacity review's headline figures (``gpuattr review --pushgateway``)."""

    team = 'dimension="team"'

    def latest(metric: str) -> str:
        return f"max by (name) ({sel(metric, team)})"

    return (
        d.with_row(p.row("Capacity review (last `gpuattr review`)"))
        .with_panel(
            p.stat_panel(
                "GPUs the consolidation plan would free",
                "From the last capacity review: right-sized footprints (peak memory plus headroom, peak SM) packed "
                "with time-slicing where the workload classes allow it, training left on its GPUs. The GPUs that "
                "plan would give back; the review's report says which workloads move and which it refused.",
                p.COUNT,
                p.Query(f"max({c.REVIEW_GPUS_FREEABLE.name})"),
                span=6,
            )
        )
        .with_panel(
            p.table_panel(
                "Teams: allocated against used over the review's window",
                "From the last capacity review, per team: GPUs allocated on average, GPUs' worth of SM activity used "
                "on average, and GPU-hours allocated while idle, over the review's window (not this dashboard's "
                "time range). A team holding many GPUs and using few is the first conversation to have.",
                p.COUNT,
                [
                    p.Column(p.Query(latest(c.REVIEW_GPUS_ALLOCATED.name)), "GPUs allocated", p.COUNT),
                    p.Column(p.Query(latest(c.REVIEW_GPUS_USED.name)), "GPUs' worth used", p.COUNT),
                    p.Column(p.Query(latest(c.REVIEW_IDLE_GPU_HOURS.name)), "idle GPU-hours", p.COUNT),
                ],
                labels=["name"],
                span=18,
                sort_by="GPUs allocated",
            )
        )
    )


def build() -> dash.Dashboard:
    d = (
        p.new_dashboard(
            UID,
            TITLE,
            "GPUs allocated against GPUs' worth used across the cluster, the cost of the difference, and the "
            "namespaces, teams, models and workload classes that hold it.",
        )
        .with_variable(p.datasource_variable())
        .with_variable(
            p.query_variable(
                "namespace",
                "Namespace",
                f"label_values({c.POD_INFO.name}, namespace)",
                f"Namespaces of GPU pods ({c.POD_INFO.name}). Team panels are cluster-wide.",
            )
        )
        .with_variable(p.price_variable())
        .with_variable(p.currency_variable())
    )
    for add in (_summary_row, _busy_row, _owners_row, _classes_row, _review_row):
        d = add(d)
    return d
