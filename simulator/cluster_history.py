"""Synthetic month of a GPU cluster as the exporter (one per node) and vLLM would have exposed it, in
OpenMetrics text for ``promtool tsdb create-blocks-from openmetrics``: for the review's integration test.

The cluster is built so the review has known truths (``cluster()`` with its defaults, 50 nodes of 8 GPUs):

- team ``research`` (training, Jobs) holds 64 GPUs and keeps 20 GPUs' worth of SMs busy (0.3125 per GPU);
- team ``search`` (inference, vLLM Deployments) holds 32 GPUs at SM 0.7 on average (a daily wave) for two
  models: 24 GPUs serving 60 % of the tokens with 95 % of first tokens under 0.5 s, 8 GPUs serving 40 % with
  80 % under 0.5 s;
- team ``notebooks`` (experimentation, StatefulSets) holds 24 GPUs with memory but SM 0 (idle but allocated);
- team ``data`` (batch, Jobs) holds 40 GPUs at SM 0.25 until the last 7 days of the history, then 0.5;
- the other 240 GPUs are allocated to nobody.

Its vLLM servers expose their KV cache reservation and usage (``kv_cache_bytes``, ``kv_peak``) as every vLLM
does (``cache_config_info``, ``kv_cache_usage_perc``): the Llama-70B replicas (TP 4) reserve 34 GiB of KV per
GPU beside 33 GiB of weights and use at most 45 % of it, the Qwen-7B ones 54 GiB and 30 %. Workloads may also
share a GPU (``gpu_group``: time-slicing, MPS or MIG instances of one GPU), for the tests of shared costing;
the default cluster does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

from common import catalog as c
from common.units import GiB

WEEK_S = 7 * 86400
DAY_S = 86400

VLLM_TTFT = c.External.VLLM_TTFT
"""vLLM's time-to-first-token histogram (not in the exporter's catalog: vLLM serves it)."""
TTFT_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds of the TTFT histogram's finite buckets, in seconds (then +Inf)."""
TTFT_FAST_SPLIT = (0.3, 0.7, 1.0)
"""Cumulative share of the fast requests (TTFT ≤ 0.5 s) under 0.1, 0.25 and 0.5 s."""
TTFT_SLOW_SPLIT = (0.6, 0.9)
"""Cumulative share of the slow requests (TTFT > 0.5 s) under 1 and 2.5 s; the rest above 2.5 s."""
TTFT_FAST_MEAN_S = 0.2
TTFT_SLOW_MEAN_S = 1.2
ITL_BUCKETS_S = tuple(b / 5 for b in TTFT_BUCKETS_S)
"""Upper bounds of the inter-token latency histogram's finite buckets: the TTFT's over 5, filled with the same
shares, so the share of tokens within 0.1 s is the share of first tokens within 0.5 s."""
TOKENS_PER_REQUEST = 250.0
"""Generated tokens per request: a server's request rate is its token rate over this."""
PROMPT_TOKENS_PER_GENERATED = 4.0
"""Prompt tokens processed per generated token (the same for every server, so shares agree)."""
INFERENCE_WAVE = 0.2
"""Amplitude of the daily wave of inference SM activity around its mean (whole days average to the mean)."""
GPU_MEMORY_BYTES = 80 * GiB
DRIVER_VERSION = "550.90.07"
EXPORTER_PORT = 9835


@dataclass(frozen=True)
class Workload:
    """One pod of the cluster and the GPUs it holds; ``sm`` and ``memory_fraction`` are per GPU."""

    namespace: str
    pod: str
    container: str
    team: str
    workload_class: str  # inference, training, batch, experimentation
    workload_kind: str  # Deployment, Job, StatefulSet
    workload: str
    model: str  # served model; empty for pods that serve none
    gpus: int
    sm: float  # SM activity per GPU, 0..1 (the mean of a daily wave for inference)
    memory_fraction: float  # share of each GPU's memory the container holds, 0..1
    gpu_model: str = "NVIDIA H100 80GB HBM3"
    tokens_per_s: float = 0.0  # generated tokens per second (vLLM servers only)
    ttft_fast_share: float | None = None  # share of requests whose first token came within 0.5 s
    sm_before_last_week: float | None = None  # SM per GPU before the history's last 7 days; None: ``sm`` all along
    sharing: str = "exclusive"  # the allocation's sharing label: exclusive, time-slicing, mps, mig, mig-shared
    gpu_group: str = ""  # pods with the same group share one GPU (time-slicing, MPS, or MIG instances of it)
    mig_profile: str = ""  # the MIG instance the pod holds (e.g. 3g.40gb), each pod of a group its own
    kv_cache_bytes: int = 0  # vLLM's KV cache reservation per GPU (cache_config_info); 0: not exposed
    kv_peak: float = 0.0  # the highest KV cache usage (0..1), held all along
    advertised: int = 0
    """Device IDs the node advertises for the pod's GPU (or MIG instance): N for a GPU shared as N replicas,
    held or not, published as gpuattr_gpu_allocatable_units; 0: not published (an agent or kubelet without
    it), so the job and the review count the GPU's holders instead."""

    def sm_at(self, t: float, end: float) -> float:
        """SM activity per GPU at unix time ``t`` of a history that ends at ``end``."""
        if self.sm_before_last_week is not None and t <= end - WEEK_S:
            return self.sm_before_last_week
        if self.workload_class == "inference" and self.sm > 0:
            return self.sm + INFERENCE_WAVE * math.sin(2 * math.pi * (t % DAY_S) / DAY_S)
        return self.sm


def cluster(nodes: int = 50, gpus_per_node: int = 8) -> list[Workload]:
    """The pods of the cluster (deterministic). The workloads are fixed; ``nodes``/``gpus_per_node`` only
    check that they fit (160 GPUs in 4- and 1-GPU pods)."""
    out: list[Workload] = []
    for job in "abcd":  # 4 torchrun jobs of 4 workers of 4 GPUs: 64 GPUs, 20 GPUs' worth of SMs
        for i in range(4):
            out.append(
                Workload(
                    namespace="research",
                    pod=f"pretrain-{job}-worker-{i}",
                    container="trainer",
                    team="research",
                    workload_class="training",
                    workload_kind="Job",
                    workload=f"pretrain-{job}",
                    model="",
                    gpus=4,
                    sm=20 / 64,
                    memory_fraction=0.92,
                )
            )
    for i in range(6):  # 24 GPUs, 6000 tokens/s, 95 % of first tokens within 0.5 s
        out.append(
            Workload(
                namespace="llm",
                pod=f"llama-70b-7c9d5f6b8-{i:05d}",
                container="vllm",
                team="search",
                workload_class="inference",
                workload_kind="Deployment",
                workload="llama-70b",
                model="meta-llama/Llama-3.3-70B-Instruct",
                gpus=4,
                sm=0.7,
                memory_fraction=0.9,
                tokens_per_s=1000.0,
                ttft_fast_share=0.95,
                kv_cache_bytes=34 * 2**30,
                kv_peak=0.45,
            )
        )
    for i in range(8):  # 8 GPUs, 4000 tokens/s, 80 % of first tokens within 0.5 s
        out.append(
            Workload(
                namespace="llm",
                pod=f"qwen-7b-5f8b4d9c7-{i:05d}",
                container="vllm",
                team="search",
                workload_class="inference",
                workload_kind="Deployment",
                workload="qwen-7b",
                model="Qwen/Qwen2.5-7B-Instruct",
                gpus=1,
                sm=0.7,
                memory_fraction=0.9,
                tokens_per_s=500.0,
                ttft_fast_share=0.80,
                kv_cache_bytes=54 * 2**30,
                kv_peak=0.30,
            )
        )
    for i in range(24):  # 24 notebooks holding memory, no kernels
        out.append(
            Workload(
                namespace="notebooks",
                pod=f"nb-user{i:02d}-0",
                container="notebook",
                team="notebooks",
                workload_class="experimentation",
                workload_kind="StatefulSet",
                workload=f"nb-user{i:02d}",
                model="",
                gpus=1,
                sm=0.0,
                memory_fraction=0.25,
            )
        )
    for i in range(10):  # 40 GPUs, 10 GPUs' worth of SMs before the last week, 20 in it
        out.append(
            Workload(
                namespace="data",
                pod=f"embed-corpus-{i}",
                container="worker",
                team="data",
                workload_class="batch",
                workload_kind="Job",
                workload="embed-corpus",
                model="",
                gpus=4,
                sm=0.5,
                memory_fraction=0.6,
                sm_before_last_week=0.25,
            )
        )
    placement(out, nodes, gpus_per_node)  # raises when they do not fit
    return out


def placement(workloads: Sequence[Workload], nodes: int, gpus_per_node: int) -> dict[str, list[tuple[int, int]]]:
    """(node, GPU index) pairs of each pod, spread round-robin over the nodes (deterministic);
    ValueError names the first pod that fits nowhere."""
    free = [list(range(gpus_per_node)) for _ in range(nodes)]
    out: dict[str, list[tuple[int, int]]] = {}
    groups: dict[str, list[tuple[int, int]]] = {}
    cursor = 0
    for w in workloads:
        if w.gpu_group in groups:  # shares the GPU of its group's first pod
            out[f"{w.namespace}/{w.pod}"] = groups[w.gpu_group]
            continue
        for k in range(nodes):
            node = (cursor + k) % nodes
            if len(free[node]) >= w.gpus:
                out[f"{w.namespace}/{w.pod}"] = [(node, free[node].pop(0)) for _ in range(w.gpus)]
                if w.gpu_group:
                    groups[w.gpu_group] = out[f"{w.namespace}/{w.pod}"]
                cursor = node + 1
                break
        else:
            raise ValueError(f"pod {w.namespace}/{w.pod} needs {w.gpus} GPUs on one node; no node has them free")
    return out


def gpu_uuid(node: int, gpu: int) -> str:
    """A unique, stable UUID for GPU ``gpu`` of node ``node``."""
    return f"GPU-{node:08x}-{gpu:04x}-4000-8000-{node * 64 + gpu:012x}"


def instance(node: int) -> str:
    """The scrape target of node ``node``'s exporter (the ``instance`` label)."""
    return f"node-{node:02d}:{EXPORTER_PORT}"


def _render(names: Iterable[str], values: dict[str, str]) -> str:
    """``k="v",...`` for exactly ``names`` (the catalog's label set, checked) plus ``instance``."""
    names = tuple(names)
    if set(values) != {*names, "instance"}:
        raise ValueError(f"labels {sorted(values)} are not {sorted(names)} plus instance")
    return ",".join(f'{k}="{values[k]}"' for k in (*names, "instance"))


def _go_float(value: float) -> str:
    """``le`` as prometheus_client writes it (``1.0``, ``0.25``), the form vLLM's /metrics serves."""
    return repr(float(value))


def _times(start: float, end: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((end - start) // step) + 1)]


def write_openmetrics(
    out: TextIO,
    workloads: Sequence[Workload],
    start: float,
    end: float,
    step: float = 1800.0,
    *,
    nodes: int = 50,
    gpus_per_node: int = 8,
    itl: bool = True,
) -> None:
    """Exporter and vLLM series of ``workloads`` on ``nodes`` × ``gpus_per_node`` GPUs from ``start`` to
    ``end`` (unix seconds) every ``step`` seconds, each family contiguous, each series in time order.
    ``itl``: whether vLLM servers expose their inter-token latency histogram."""
    where = placement(workloads, nodes, gpus_per_node)
    mig: dict[str, tuple[str, str]] = {}  # pod -> (MIG instance, profile)
    for w in workloads:
        if w.mig_profile:
            taken = sum(1 for v in workloads if v.gpu_group == w.gpu_group and f"{v.namespace}/{v.pod}" in mig)
            mig[f"{w.namespace}/{w.pod}"] = (str(taken + 1), w.mig_profile)
    times = _times(start, end, step)
    stamps = [f"{t:.0f}" if t == int(t) else f"{t:.3f}" for t in times]

    def family(name: str, kind: str = "gauge") -> None:
        out.write(f"# TYPE {name} {kind}\n")

    def constant(name: str, labels: str, value: str) -> None:
        out.write("".join(f"{name}{{{labels}}} {value} {s}\n" for s in stamps))

    def varying(name: str, labels: str, values: Iterable[float], counter: bool = False) -> None:
        fmt = ".3f" if counter else ".6g"  # counters grow to 1e10: keep every unit
        out.write("".join(f"{name}{{{labels}}} {v:{fmt}} {s}\n" for v, s in zip(values, stamps, strict=True)))

    def usage_labels(w: Workload, node: int, gpu: int, **extra: str) -> dict[str, str]:
        instance_id, profile = mig.get(f"{w.namespace}/{w.pod}", ("", ""))
        return {
            "gpu": str(gpu),
            "gpu_uuid": gpu_uuid(node, gpu),
            "mig_instance": instance_id,
            "mig_profile": profile,
            "namespace": w.namespace,
            "pod": w.pod,
            "container": w.container,
            "instance": instance(node),
            **extra,
        }

    pods = [(w, where[f"{w.namespace}/{w.pod}"]) for w in workloads]
    models = {(node, gpu): w.gpu_model for w, gpus in pods for node, gpu in gpus}
    instances = {  # (node, GPU) -> its MIG instances: (instance, profile)
        (node, gpu): sorted(v for k, v in mig.items() if where[k] == [(node, gpu)])
        for w, gpus in pods
        for node, gpu in gpus
        if f"{w.namespace}/{w.pod}" in mig
    }

    m = c.GPU_INFO
    family(m.family)
    for node in range(nodes):
        for gpu in range(gpus_per_node):
            labels = {
                "gpu": str(gpu),
                "gpu_uuid": gpu_uuid(node, gpu),
                "gpu_model": models.get((node, gpu), "NVIDIA H100 80GB HBM3"),
                "driver_version": DRIVER_VERSION,
                "mig_mode": "enabled" if (node, gpu) in instances else "disabled",
                "instance": instance(node),
            }
            constant(m.name, _render(m.labels, labels), "1")
    m = c.GPU_MEMORY_TOTAL
    family(m.family)
    for node in range(nodes):
        for gpu in range(gpus_per_node):
            labels = {
                "gpu": str(gpu),
                "gpu_uuid": gpu_uuid(node, gpu),
                "mig_instance": "",
                "mig_profile": "",
                "instance": instance(node),
            }
            constant(m.name, _render(m.labels, labels), str(GPU_MEMORY_BYTES))
            for instance_id, profile in instances.get((node, gpu), []):
                labels.update(mig_instance=instance_id, mig_profile=profile)
                constant(m.name, _render(m.labels, labels), str(mig_memory_bytes(profile)))
    m = c.POD_INFO
    family(m.family)
    for w, gpus in pods:
        labels = {
            "namespace": w.namespace,
            "pod": w.pod,
            "workload_kind": w.workload_kind,
            "workload": w.workload,
            "model": w.model,
            "workload_class": w.workload_class,
            "team": w.team,
            "instance": instance(gpus[0][0]),
        }
        constant(m.name, _render(m.labels, labels), "1")
    m = c.CONTAINER_ALLOCATED
    family(m.family)
    for w, gpus in pods:
        for node, gpu in gpus:
            resource = f"nvidia.com/mig-{w.mig_profile}" if w.mig_profile else "nvidia.com/gpu"
            labels = usage_labels(w, node, gpu, resource=resource, sharing=w.sharing)
            constant(m.name, _render(m.labels, labels), "1")
    m = c.GPU_ALLOCATABLE
    family(m.family)
    advertised: dict[str, int] = {}  # rendered labels -> units, one series per device however many hold it
    for w, gpus in pods:
        for node, gpu in gpus if w.advertised > 0 else []:
            device = {k: v for k, v in usage_labels(w, node, gpu).items() if k not in c.K8S}
            resource = f"nvidia.com/mig-{w.mig_profile}" if w.mig_profile else "nvidia.com/gpu"
            advertised[_render(m.labels, {**device, "resource": resource, "sharing": w.sharing})] = w.advertised
    for labels_text, units in advertised.items():
        constant(m.name, labels_text, str(units))
    m = c.CONTAINER_KERNEL_ACTIVE
    family(m.family)
    for w, gpus in pods:
        values = [w.sm_at(t, end) for t in times]
        for node, gpu in gpus:
            varying(m.name, _render(m.labels, usage_labels(w, node, gpu, process="", source="nvml")), values)
    m = c.CONTAINER_MEMORY
    family(m.family)
    for w, gpus in pods:
        for node, gpu in gpus:
            value = str(int(GPU_MEMORY_BYTES * w.memory_fraction))
            constant(m.name, _render(m.labels, usage_labels(w, node, gpu, process="")), value)

    servers = [w for w in workloads if w.tokens_per_s > 0]

    def vllm_labels(w: Workload) -> str:
        return f'engine="0",model_name="{w.model}",namespace="{w.namespace}",pod="{w.pod}"'

    for name, per_token in (
        (c.External.VLLM_GENERATION_TOKENS, 1.0),
        (c.External.VLLM_PROMPT_TOKENS, PROMPT_TOKENS_PER_GENERATED),
    ):
        family(name.removesuffix("_total"), "counter")
        for w in servers:
            varying(name, vllm_labels(w), (w.tokens_per_s * per_token * (t - start) for t in times), True)
    histograms: list[tuple[str, tuple[float, ...], float]] = [(VLLM_TTFT, TTFT_BUCKETS_S, 1 / TOKENS_PER_REQUEST)]
    if itl:  # one observation per generated token
        histograms.append((c.External.VLLM_INTER_TOKEN_LATENCY[0], ITL_BUCKETS_S, 1.0))
    for name, bounds, per_token in histograms:
        family(name, "histogram")
        scale = bounds[0] / TTFT_BUCKETS_S[0]
        for w in servers:
            fast = 1.0 if w.ttft_fast_share is None else w.ttft_fast_share
            below = [fast * s for s in TTFT_FAST_SPLIT] + [fast + (1 - fast) * s for s in TTFT_SLOW_SPLIT] + [1.0]
            requests = [w.tokens_per_s * per_token * (t - start) for t in times]
            for le, share in zip((*(_go_float(b) for b in bounds), "+Inf"), below, strict=True):
                varying(f"{name}_bucket", f'{vllm_labels(w)},le="{le}"', (share * n for n in requests), True)
            varying(f"{name}_count", vllm_labels(w), requests, True)
            mean_s = (fast * TTFT_FAST_MEAN_S + (1 - fast) * TTFT_SLOW_MEAN_S) * scale
            varying(f"{name}_sum", vllm_labels(w), (mean_s * n for n in requests), True)
    kv = [w for w in servers if w.kv_cache_bytes > 0]
    if kv:
        family(c.External.VLLM_KV_CACHE_USAGE[0])
        for w in kv:
            constant(c.External.VLLM_KV_CACHE_USAGE[0], vllm_labels(w), f"{w.kv_peak:.6g}")
        family(c.External.VLLM_CACHE_CONFIG_INFO)
        for w in kv:
            config = f'block_size="16",cache_dtype="auto",gpu_memory_utilization="{w.memory_fraction:g}"'
            config += f',kv_cache_memory_bytes="{w.kv_cache_bytes}",num_gpu_blocks="{w.kv_cache_bytes // 2**21}"'
            constant(c.External.VLLM_CACHE_CONFIG_INFO, f"{config},{vllm_labels(w)}", "1")
    out.write("# EOF\n")


def mig_memory_bytes(profile: str) -> int:
    """The memory of a MIG instance of ``profile`` (``3g.40gb``: 40 GiB, rounded as the profile's name is)."""
    return int(profile.split(".")[1].removesuffix("gb").split("+")[0]) * GiB
