"""One-shot mode: no Prometheus, just the servers' vLLM ``/metrics`` and the node exporter, read now.

The KV usage is a single reading, so p50, p95 and max are the same value: a snapshot, not a window.
"""

from __future__ import annotations

from collections.abc import Sequence

from attribution.collect import Collected
from attribution.split import ServerGpu
from common import catalog as c


def from_endpoints(specs: Sequence[str], exporter_url: str, *, timeout_s: float = 10.0) -> Collected:
    from attribution.vllm_metrics import VllmMetricsError, fetch, parse_metrics
    from common.exposition import scrape
    from common.fetch import FetchError

    problems: list[str] = ["one-shot mode: KV usage is a single reading (p50 = p95 = max)"]
    try:
        exporter = scrape(exporter_url, timeout_s=timeout_s)
    except FetchError as exc:  # without the exporter there is nothing to attribute: the job reports and stops
        raise ValueError(f"--exporter-url {exc}") from exc
    memory: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for labels, value in exporter.get(c.CONTAINER_MEMORY.name, []):
        gpu = labels.get("gpu_uuid", "") + (f"/{labels['mig_instance']}" if labels.get("mig_instance") else "")
        memory.setdefault((labels.get("namespace", ""), labels.get("pod", "")), []).append((gpu, int(value)))
    totals = {
        labels["gpu_uuid"] + (f"/{labels['mig_instance']}" if labels.get("mig_instance") else ""): int(v)
        for labels, v in exporter.get(c.GPU_MEMORY_TOTAL.name, [])
    }
    info = {(lbl["namespace"], lbl["pod"]): lbl for lbl, _ in exporter.get(c.POD_INFO.name, [])}
    servers: list[ServerGpu] = []
    tokens: dict[tuple[str, str], float] = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        namespace, slash, pod = name.partition("/")
        if not sep or not slash:
            raise ValueError(f"--vllm: expected NAMESPACE/POD=URL, got {spec!r}")
        try:
            engines = parse_metrics(fetch(url, timeout_s=timeout_s), url)
        except VllmMetricsError as exc:
            problems.append(str(exc))
            continue
        if not engines:
            problems.append(f"{url}: no vLLM engine on the page")
            continue
        engine = engines[0]
        placed = memory.get((namespace, pod), [])
        if not placed:
            problems.append(f"{namespace}/{pod}: the exporter shows no GPU memory for this pod")
        model = info.get((namespace, pod), {}).get("model") or engine.model_name or ""
        tokens[(namespace, pod)] = (engine.prompt_tokens_total or 0) + (engine.generation_tokens_total or 0)
        for gpu, used in placed or [("", -1)]:
            servers.append(
                ServerGpu(
                    namespace=namespace,
                    pod=pod,
                    model=model,
                    gpu_uuid=gpu,
                    gpu_memory_bytes=totals.get(gpu),
                    total_bytes=used if used >= 0 else None,
                    kv_usage_p50=engine.kv_cache_usage,
                    kv_usage_p95=engine.kv_cache_usage,
                    kv_usage_max=engine.kv_cache_usage,
                    kv_allocated_bytes=engine.kv_cache_memory_bytes,
                    num_gpu_blocks=engine.num_gpu_blocks,
                    block_size=engine.block_size,
                    gpu_memory_utilization=engine.gpu_memory_utilization,
                    tensor_parallel=max(1, len(placed)),
                )
            )
    teams = {k: v.get("team", "") for k, v in info.items()}
    return Collected(servers, teams, tokens, problems)
