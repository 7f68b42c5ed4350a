"""Gather what the split needs, per vLLM server and GPU: from Prometheus (aggregated in PromQL over the
window), from vLLM's start-up logs, and from model configs. What is missing is named, never invented."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from attribution.prometheus import PrometheusClient, PrometheusError, Sample
from attribution.sharing import COUNTED, SHARED, fallback_note, held, mig_fraction
from attribution.split import ServerGpu
from common import catalog as c
from common.fetch import redact
from common.units import gib

if TYPE_CHECKING:
    from attribution.vllm_log import VllmLogFacts

log = logging.getLogger("gpuattr.attribution")

T = TypeVar("T")
KV_USAGE = "|".join(c.External.VLLM_KV_CACHE_USAGE)
TOKENS = (c.External.VLLM_PROMPT_TOKENS, c.External.VLLM_GENERATION_TOKENS)
CACHE_CONFIG = c.External.VLLM_CACHE_CONFIG_INFO


@dataclass
class Collected:
    servers: list[ServerGpu]
    teams: dict[tuple[str, str], str] = field(default_factory=dict)
    tokens: dict[tuple[str, str], float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what is missing, for the report
    failed: dict[str, str] = field(default_factory=dict)  # input (query name) -> why it could not be read
    # pods that serve a model (pod_info) but publish no vLLM series: their log may show a failed start-up
    candidates: list[tuple[str, str, str]] = field(default_factory=list)  # (namespace, pod, model)
    failed_starts: list[dict[str, Any]] = field(default_factory=list)  # one per server whose log shows a failure
    workers: list[dict[str, Any]] = field(default_factory=list)  # one per worker of a server with several


def _key(labels: Mapping[str, str]) -> tuple[str, str]:
    return labels.get("namespace", ""), labels.get("pod", "")


def _int(value: str | None) -> int | None:
    if value in (None, "", "None"):
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    if value in (None, "", "None"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


ESSENTIAL = ("memory", "gpu_total", "pod_info", "kv_max", "cache_config")
"""The queries the published figures come from: each server's GPU memory, the GPUs' sizes, the model label of
every series, the KV cache's peak use and its allocation. Without any of them the split would publish
zeros, or series under other labels, where the last good figures were; the KV quantiles (shown in the
tables only) and the token counts (costs per token) are not essential."""


def queries(window: str) -> dict[str, str]:
    """The PromQL the job sends: one aggregate per input, whatever the number of samples."""
    usage = f'{{__name__=~"{KV_USAGE}"}}'
    allocated = f'last_over_time({c.CONTAINER_ALLOCATED.name}{{pod!=""}}[{window}])'
    advertised = f"last_over_time({c.GPU_ALLOCATABLE.name}[{window}])"
    return {
        "memory": (
            "max by (namespace, pod, gpu_uuid, mig_instance) "
            f'(max_over_time({c.CONTAINER_MEMORY.name}{{pod!=""}}[{window}]))'
        ),
        "gpu_total": f"max by (gpu_uuid, mig_instance) (max_over_time({c.GPU_MEMORY_TOTAL.name}[{window}]))",
        "pod_info": f"max by (namespace, pod, model, team) (last_over_time({c.POD_INFO.name}[{window}]))",
        "kv_p50": f"max by (namespace, pod) (quantile_over_time(0.5, {usage}[{window}]))",
        "kv_p95": f"max by (namespace, pod) (quantile_over_time(0.95, {usage}[{window}]))",
        "kv_max": f"max by (namespace, pod) (max_over_time({usage}[{window}]))",
        "cache_config": f"last_over_time({CACHE_CONFIG}[{window}])",
        # each allocation's share of its device: 1/N for N replicas the node advertises (time-slicing, MPS,
        # a shared MIG instance), else 1/N for N containers holding it, marked by which; the MIG profile gives
        # the instance's share of its GPU
        "allocated": f"max by (namespace, pod, gpu_uuid, mig_instance, mig_profile, sharing, {COUNTED}) "
        f"({held(allocated, advertised, mark=True)})",
        # increase() drops the metric name, so the two counters would collide in one vector (Prometheus
        # refuses it with 422): each is told apart by a label of its own, then both are summed per pod.
        "tokens": "sum by (namespace, pod) ("
        + " or ".join(f'label_replace(increase({n}[{window}]), "counter", "{n}", "", "")' for n in TOKENS)
        + ")",
    }


def from_prometheus(client: PrometheusClient, window: str, at: float | None = None) -> Collected:
    """One row per vLLM server (a pod with vLLM's KV metrics or cache config) and GPU it holds memory on."""
    results: dict[str, list[Sample]] = {}
    problems: list[str] = []
    failed: dict[str, str] = {}
    for name, expr in queries(window).items():
        try:
            results[name] = client.query(expr, at)
        except PrometheusError as exc:
            results[name] = []
            problems.append(f"{name}: {exc}")
            failed[name] = str(exc).replace(repr(expr), name)  # the query is long; its name says which
            log.info("%s", exc)  # the run's summary names what failed, once (the report lists each)
    memory: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in results["memory"]:
        memory[_key(s.labels)].append(s)
    gpu_total = {
        (s.labels.get("gpu_uuid", ""), s.labels.get("mig_instance", "")): int(s.value) for s in results["gpu_total"]
    }
    info = {_key(s.labels): s.labels for s in results["pod_info"]}
    kv = {name: {_key(s.labels): s.value for s in results[name]} for name in ("kv_p50", "kv_p95", "kv_max")}
    config = {_key(s.labels): s.labels for s in results["cache_config"]}
    tokens = {_key(s.labels): s.value for s in results["tokens"]}
    shares: dict[tuple[str, str, str, str], tuple[float | None, float]] = {}  # -> (MIG share, replicas)
    by_holders: set[tuple[str, str]] = set()  # shared devices counted by their holders: nothing advertised
    for s in results["allocated"]:
        where = (*_key(s.labels), s.labels.get("gpu_uuid", ""), s.labels.get("mig_instance", ""))
        profile = s.labels.get("mig_profile", "")
        shares[where] = (mig_fraction(profile), 1 / s.value if s.value > 0 else 1.0)
        if s.labels.get(COUNTED) == "holders" and s.labels.get("sharing") in SHARED:
            by_holders.add(where[2:])
    if by_holders:
        problems.append(fallback_note(len(by_holders)))
    odd = sorted({s.labels.get("mig_profile", "") for s in results["allocated"]} - {""})
    odd = [p for p in odd if mig_fraction(p) is None]
    if odd:
        problems.append(f"MIG profiles not understood, costed as whole GPUs: {', '.join(odd)}")
    vllm_pods = sorted(set(kv["kv_max"]) | set(config))
    servers: list[ServerGpu] = []
    for key in vllm_pods:
        namespace, pod = key
        if not namespace or not pod:
            problems.append(
                "vLLM series without namespace/pod labels: scrape vLLM pods with Kubernetes service discovery"
            )
            continue
        placed = memory.get(key, [])
        if not placed:
            problems.append(f"{namespace}/{pod}: vLLM metrics but no GPU memory series from the exporter")
        cfg = config.get(key, {})
        model = info.get(key, {}).get("model") or ""
        for s in placed or [Sample({"gpu_uuid": "", "mig_instance": ""}, float("nan"))]:
            gpu = (s.labels.get("gpu_uuid", ""), s.labels.get("mig_instance", ""))
            mig_share, replicas = shares.get((namespace, pod, *gpu), (1.0, 1.0))
            servers.append(
                ServerGpu(
                    namespace=namespace,
                    pod=pod,
                    model=model,
                    gpu_uuid=gpu[0] + (f"/{gpu[1]}" if gpu[1] else ""),
                    gpu_memory_bytes=gpu_total.get(gpu),
                    total_bytes=None if s.value != s.value else int(s.value),
                    kv_usage_p50=kv["kv_p50"].get(key),
                    kv_usage_p95=kv["kv_p95"].get(key),
                    kv_usage_max=kv["kv_max"].get(key),
                    kv_allocated_bytes=_int(cfg.get("kv_cache_memory_bytes")),
                    num_gpu_blocks=_int(cfg.get("num_gpu_blocks")),
                    block_size=_int(cfg.get("block_size")),
                    gpu_memory_utilization=_float(cfg.get("gpu_memory_utilization")),
                    tensor_parallel=max(1, len(placed)),
                    mig_share=1.0 if mig_share is None else mig_share,
                    replicas=max(1, round(replicas)),
                )
            )
    teams = {k: v.get("team", "") for k, v in info.items()}
    candidates = [
        (namespace, pod, labels.get("model") or "")
        for (namespace, pod), labels in sorted(info.items())
        if namespace and pod and labels.get("model") and (namespace, pod) not in set(vllm_pods)
    ]
    # Thanos, Mimir and Prometheus with a failing remote read answer "success" with warnings such as
    # "partial response": the figures may be low, and the report must say so
    problems += [f"{redact(client.url)} warned: {w}" for w in dict.fromkeys(client.warnings)]
    return Collected(servers, teams, tokens, problems, failed, candidates)


def progress(items: list[T], what: str, every: int = 50) -> Iterator[T]:
    """Yield ``items``, reporting progress on standard error when the run is long and a person watches."""
    show = len(items) >= every and sys.stderr.isatty()
    for i, item in enumerate(items, 1):
        if show and (i % every == 0 or i == len(items)):
            print(f"\r{what}: {i}/{len(items)}", end="" if i < len(items) else "\n", file=sys.stderr, flush=True)
        yield item


def kubernetes_logs(
    api_host: str | None = None, *, limit_bytes: int = 4 * 2**20, timeout_s: float = 30.0
) -> Callable[[str, str], str | None]:
    """Start-up logs from the Kubernetes API (pod logs), for ``add_logs(read=...)``. The first part of the log
    is what matters (vLLM prints its memory lines at start-up): ``limit_bytes`` bounds what is read (asked of
    the API server, and kept to should it send more). ``timeout_s`` bounds each pod's request as a whole,
    however slowly the server sends. A log not read in full is named in a warning and read as None."""
    from kubernetes import client

    from common.kube import make_api_client

    core = client.CoreV1Api(make_api_client(api_host))

    def read(namespace: str, pod: str) -> str | None:
        deadline = time.monotonic() + timeout_s
        outcome: list[bytes | Exception] = []

        def request() -> None:
            try:
                response = core.read_namespaced_pod_log(
                    pod, namespace, limit_bytes=limit_bytes, _preload_content=False, _request_timeout=timeout_s
                )
                outcome.append(_read_until(response, deadline, limit_bytes))
            except Exception as exc:  # the client raises ApiException, urllib3 and socket errors alike
                outcome.append(exc)

        # In a thread, so that a server trickling even the answer's head cannot hold the job past the
        # deadline (urllib3's time-out is per read); the thread ends by itself at urllib3's time-out then.
        worker = threading.Thread(target=request, name=f"pod log {namespace}/{pod}", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()) + 0.25)  # a body cut at the deadline ends just after
        got = outcome[0] if outcome else None
        if isinstance(got, bytes):
            return got.decode("utf-8", errors="replace")
        status = getattr(got, "status", None)  # an ApiException's; 0 when there was no answer
        if got is None or time.monotonic() >= deadline:
            why = f"no complete answer within {timeout_s:g} s"
        elif isinstance(status, int) and status > 0:
            why = f"HTTP {status} {getattr(got, 'reason', None) or ''}".rstrip()
        else:
            why = str(got) or type(got).__name__
        log.warning("cannot read the log of pod %s/%s from the Kubernetes API: %s", namespace, pod, why)
        return None

    return read


def _read_until(response: Any, deadline: float, limit: int) -> bytes:
    """At most ``limit`` bytes of a urllib3 response, read before ``deadline``: a timer shuts the socket
    down then, which ends a read however slowly the server sends."""

    def cut() -> None:
        with contextlib.suppress(Exception):  # already released, or no socket to shut down
            response.shutdown()

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = response.read1(min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if time.monotonic() >= deadline:  # what the shut-down socket gave may be cut short
            raise TimeoutError("deadline passed")
        return b"".join(chunks)
    finally:
        timer.cancel()
        response.close()  # not back to the pool with unread bytes
        response.release_conn()


def _log_file(logs_dir: Path, namespace: str, pod: str) -> Path | None:
    for name in (f"{namespace}_{pod}.log", f"{namespace}/{pod}.log", f"{pod}.log"):
        path = logs_dir / name
        if path.is_file():
            return path
    return None


def _read_log(
    logs_dir: Path | None, read: Callable[[str, str], str | None] | None, namespace: str, pod: str
) -> tuple[str | None, str]:
    """A server's start-up log (from ``logs_dir``, else ``read``) and a name for it; None when there is none."""
    if logs_dir is not None:
        path = _log_file(logs_dir, namespace, pod)
        if path is not None:
            return path.read_text(encoding="utf-8", errors="replace"), str(path)
    return (read(namespace, pod) if read is not None else None), f"{namespace}/{pod}"


def add_logs(collected: Collected, logs_dir: Path | None, read: Callable[[str, str], str | None] | None = None) -> None:
    """Weights and the KV budget from each server's start-up log: a file ``<namespace>_<pod>.log`` in
    ``logs_dir``, or ``read(namespace, pod)`` (e.g. the Kubernetes API's pod logs).

    A log that shows a failed start-up (the KV cache does not fit) gives a ``failed_starts`` row with the
    figures read and what would have fitted, never a KV allocation; so does the log of a pod that serves a
    model without vLLM series (``candidates``), or a ``<namespace>_<pod>.log`` in ``logs_dir`` of no known
    server. A server with several workers (TP/PP) gives a ``workers`` row each: its available KV memory,
    tokens or blocks, and whether it set the server's block count."""
    from attribution.vllm_log import VllmLogError, parse_log

    seen: dict[tuple[str, str], VllmLogFacts | None] = {}
    for server in progress(collected.servers, "reading start-up logs"):
        key = (server.namespace, server.pod)
        if key not in seen:
            text, source = _read_log(logs_dir, read, *key)
            if text is None:
                seen[key] = None
                collected.problems.append(f"{source}: no start-up log; weights from the model config or an estimate")
                continue
            try:
                seen[key] = parsed = parse_log(text, source)
            except VllmLogError as exc:
                seen[key] = None
                collected.problems.append(str(exc))
            else:
                _add_startup(collected, parsed, (server.namespace, server.pod, server.model), source)
        facts = seen[key]
        if facts is None:
            continue
        server.weights_bytes_log = facts.weights_bytes
        server.max_model_len = facts.max_model_len
        server.activation_peak_bytes = facts.activation_peak_bytes
        server.non_torch_bytes = facts.non_torch_bytes
        server.cuda_graph_bytes = facts.cuda_graph_bytes
        if server.gpu_memory_utilization is None:
            server.gpu_memory_utilization = facts.gpu_memory_utilization
        stages = {w["stage"] for w in facts.workers if w.get("stage") is not None}
        if len(stages) > 1 and server.pipeline_parallel == 1:  # the GPUs counted are TP × PP ranks
            server.pipeline_parallel = max(stages) + 1
            if server.tensor_parallel % server.pipeline_parallel == 0:
                server.tensor_parallel //= server.pipeline_parallel
        if facts.failed_to_start is not None:  # the KV figures are what was available, not an allocation
            server.notes.append(f"its start-up log shows a failed start ({facts.failed_to_start}): see failed_starts")
            continue
        if server.kv_allocated_bytes is None:
            server.kv_allocated_bytes = facts.kv_cache_bytes
        if server.num_gpu_blocks is None:
            server.num_gpu_blocks = facts.num_gpu_blocks
    others: list[tuple[str, str, str]] = [c for c in collected.candidates if c[:2] not in seen]
    if logs_dir is not None:  # logs of pods the inputs do not know, e.g. a server that never served
        known = set(seen) | {c[:2] for c in others}
        for path in sorted(logs_dir.glob("*_*.log")):
            namespace, _, pod = path.stem.partition("_")
            if namespace and pod and (namespace, pod) not in known:
                others.append((namespace, pod, ""))
    for namespace, pod, model in others:
        text, source = _read_log(logs_dir, read, namespace, pod)
        if text is None:
            continue
        try:
            facts = parse_log(text, source)
        except VllmLogError:
            continue  # not a vLLM server, or one that printed nothing yet
        if facts.failed_to_start is not None:
            _add_startup(collected, facts, (namespace, pod, model), source)


def _add_startup(collected: Collected, facts: VllmLogFacts, server: tuple[str, str, str], source: str) -> None:
    """The failed start-up and the per-worker figures of one server's log (``server``: namespace, pod, model),
    as rows of ``collected``."""
    namespace, pod, model = server
    workers = list(facts.workers)
    if facts.failed_to_start is not None:
        available = [w["available_kv_cache_bytes"] for w in workers if w.get("available_kv_cache_bytes") is not None]
        collected.failed_starts.append(
            {
                "namespace": namespace,
                "pod": pod,
                "model": model,
                "log": source,
                "vllm_version": facts.vllm_version,
                "reason": facts.failed_to_start,
                "weights_bytes": facts.weights_bytes,
                "kv_available_bytes": min(available) if available else None,
                "gpu_memory_utilization": facts.gpu_memory_utilization,
                "max_model_len": facts.max_model_len,
                "kv_cache_needed_bytes": facts.kv_cache_needed_bytes,
                "suggested_gpu_memory_utilization": facts.suggested_gpu_memory_utilization,
                "suggested_max_model_len": facts.suggested_max_model_len,
                "suggested_kv_cache_memory_bytes": facts.suggested_kv_cache_memory_bytes,
                "suggestion": startup_suggestion(facts),
                "notes": "; ".join(facts.notes),
            }
        )
    if len(workers) > 1:
        limiting = facts.limiting_worker
        for worker in workers:
            label = str(worker["worker"])
            collected.workers.append(
                {
                    "namespace": namespace,
                    "pod": pod,
                    "model": model,
                    "worker": label,
                    "stage": worker.get("stage"),
                    "weights_bytes": worker.get("weights_bytes"),
                    "available_kv_cache_bytes": worker.get("available_kv_cache_bytes"),
                    "kv_cache_tokens": worker.get("kv_cache_tokens"),
                    "num_gpu_blocks": worker.get("num_gpu_blocks"),
                    "sets_block_count": None
                    if limiting is None
                    else (limiting == label or limiting.endswith(f"({label})")),
                }
            )


def startup_suggestion(facts: VllmLogFacts) -> str:
    """What would have made a failed start-up fit, as flags, from the figures its log holds."""
    options = []
    if facts.suggested_gpu_memory_utilization is not None:
        options.append(f"--gpu-memory-utilization {facts.suggested_gpu_memory_utilization}")
    if facts.suggested_max_model_len is not None:
        options.append(f"--max-model-len {facts.suggested_max_model_len}")
    if facts.suggested_kv_cache_memory_bytes is not None:
        size = facts.suggested_kv_cache_memory_bytes
        options.append(f"--kv-cache-memory-bytes {size} ({gib(size)})")
    if not options:
        return "no setting computed from the log fits: see the notes"
    return "fits with " + " or ".join(options)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def add_model_configs(collected: Collected, configs_dir: Path | None) -> None:
    """KV bytes per token and weights from each model's ``config.json`` (``<dir>/<org>/<name>/`` or
    ``<dir>/<org>__<name>/``), and exact weights from safetensors headers found beside it."""
    if configs_dir is None:
        return
    from attribution.model_memory import UnsupportedModel, kv_sizing, load_config, weight_sizing

    for server in progress(collected.servers, "sizing models"):
        if not server.model:
            continue
        candidates = [configs_dir / server.model, configs_dir / _SAFE.sub("__", server.model)]
        model_dir = next((p for p in candidates if (p / "config.json").is_file()), None)
        if model_dir is None:
            collected.problems.append(f"{server.model}: no config.json under {configs_dir}")
            continue
        try:
            config = load_config(model_dir)
            sizing = kv_sizing(
                config,
                tensor_parallel=server.tensor_parallel,
                pipeline_parallel=server.pipeline_parallel,
                source=str(model_dir / "config.json"),
            )
            server.kv_bytes_per_token = sizing.kv_bytes_per_token
            if sizing.state_bytes_per_seq:  # a Mamba / linear-attention hybrid: state per sequence, hybrid pages
                server.kv_state_bytes_per_seq = sizing.state_bytes_per_seq
                server.kv_block_bytes = sizing.block_bytes
                server.kv_block_size_model = sizing.block_size
            weights = weight_sizing(config, model_dir)
            server.weights_bytes_model, server.weights_model_method = weights.weight_bytes, weights.method
        except (UnsupportedModel, ValueError, OSError) as exc:
            collected.problems.append(f"{server.model}: {exc}")
