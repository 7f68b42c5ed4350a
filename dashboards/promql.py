"""PromQL building blocks shared by the dashboards: selectors, template-variable matchers and pod joins.

Metric names come from ``common.catalog`` and recording-rule names from ``alerts.rules``; this module only
assembles them. Grafana substitutes ``$node``, ``$namespace``, ``$model``, ``$gpu``, ``$pod``, ``$source`` and
``$gpu_hour_price`` before the query reaches Prometheus.
"""

from __future__ import annotations

from common import catalog as c

NODE_LABEL = "instance"
"""The label that names a series' GPU node: both scrape configurations of ``deploy/`` (the plain scrape job
and the prometheus-operator ServiceMonitor) set it to the exporter pod's node name, so series survive an
exporter rollout and the ``node`` variable lists node names, not pod addresses."""

NODE_HELP = (
    f"GPU nodes by name: the {NODE_LABEL} label, which the scrape job and the ServiceMonitor of deploy/ set to "
    "the exporter pod's node."
)

# Matchers on template variables (multi-value variables are regexes: Grafana sends ``(a|b)`` or ``.*``).
NODE = f'{NODE_LABEL}=~"$node"'
NAMESPACE = 'namespace=~"$namespace"'
MODEL = 'model=~"$model"'
GPU = 'gpu_uuid=~"$gpu"'
POD = 'pod=~"$pod"'
SOURCE = 'source=~"$source"'
IN_POD = 'pod!=""'
WHOLE_GPU = 'mig_instance=""'
MIG_ONLY = 'mig_instance!=""'

KERNEL_SOURCES = 'source=~"nvml|mps"'
GPM = 'source="gpm"'
"""Per-container kernel time: NVML's per-process figure, or the MPS server's for its only client."""


def used(*matchers: str) -> str:
    """Per-container activity that means "GPUs' worth used" (as in the recording rules): kernel time on whole
    GPUs, the instance's GPM SM activity for the only container of a MIG instance; never both for one."""
    return (
        f"({sel(c.CONTAINER_KERNEL_ACTIVE, *matchers, KERNEL_SOURCES)} "
        f"or {sel(c.CONTAINER_SM_ACTIVE, *matchers, MIG_ONLY, GPM)})"
    )


PRICE = "$gpu_hour_price"
"""Price of one GPU for one hour, in the dashboard's ``$currency`` (dashboard variables)."""


def sel(metric: c.Metric | str, *matchers: str) -> str:
    """``name{m1, m2}`` for a catalog metric, a recording rule or an external name."""
    name = metric.name if isinstance(metric, c.Metric) else metric
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def pod_labels(labels: str, *info_matchers: str) -> str:
    """``* on (namespace, pod) group_left (labels) …`` : copies pod metadata (model, team, workload, class)
    from the pod info series onto a per-pod vector; pods that ``info_matchers`` exclude drop out."""
    return (
        f"* on (namespace, pod) group_left ({labels}) "
        f"max by (namespace, pod, {labels}) ({sel(c.POD_INFO, *info_matchers)})"
    )


def pods_matching(*info_matchers: str) -> str:
    """``and on (namespace, pod) <pod info>{…}``: keeps the series of pods the variables select."""
    return f"and on (namespace, pod) {sel(c.POD_INFO, *info_matchers)}"


def or_zero(expr: str, like: str, on: str) -> str:
    """``expr``, or 0 for every series of ``like`` that ``expr`` lacks (a holder that never ran counts as
    0 used, not as missing)."""
    return f"({expr} or on ({on}) {like} * 0)"


def external(names: str | tuple[str, ...], *matchers: str) -> str:
    """One selector per name an external exporter has used over its releases, joined with ``or``."""
    if isinstance(names, str):
        return sel(names, *matchers)
    return "(" + " or ".join(sel(name, *matchers) for name in names) + ")"
