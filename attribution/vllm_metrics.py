"""A vLLM ``/metrics`` page: per engine, the KV cache configuration and how full it is.

``vllm:cache_config_info`` is a gauge fixed at 1 whose labels are every field of vLLM's cache config; the
label set changes with the version, so it is kept whole (``"None"`` becomes None). In V1 it carries an
``engine`` label (the data-parallel index) and no ``model_name``; the other series carry both, so engines
are joined on ``engine``. A V0 page has no ``engine`` label at all and gives a single engine.
Metric names follow both vLLM generations (``docs/reference/vllm-memory.md`` §1): the KV usage is
``vllm:kv_cache_usage_perc`` or, before 0.9, ``vllm:gpu_cache_usage_perc`` (both 0..1 fractions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

from common.catalog import External
from common.fetch import HTML_ANSWER, FetchError, looks_like_html
from common.fetch import fetch as fetch_url

# vLLM's series this module reads: (our field, the names that carry it, newest first).
CACHE_CONFIG_INFO = External.VLLM_CACHE_CONFIG_INFO
_SAMPLES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": External.VLLM_KV_CACHE_USAGE,
    "requests_running": External.VLLM_REQUESTS_RUNNING,
    "requests_waiting": External.VLLM_REQUESTS_WAITING,
    "preemptions_total": External.VLLM_PREEMPTIONS,
    "prompt_tokens_total": (External.VLLM_PROMPT_TOKENS,),
    "generation_tokens_total": (External.VLLM_GENERATION_TOKENS,),
    "inter_token_latency_sum_s": tuple(f"{name}_sum" for name in External.VLLM_INTER_TOKEN_LATENCY),
    "inter_token_latency_count": tuple(f"{name}_count" for name in External.VLLM_INTER_TOKEN_LATENCY),
}
_WANTED = {name: (key, rank) for key, names in _SAMPLES.items() for rank, name in enumerate(names)}
ENGINE_LABEL = "engine"
MODEL_LABEL = "model_name"


class VllmMetricsError(ValueError):
    """A page that could not be fetched or is not a vLLM ``/metrics`` page; the message names the source."""


@dataclass(frozen=True)
class VllmEngine:
    """One vLLM engine (a V1 data-parallel rank, or the single V0 engine) as its ``/metrics`` shows it.

    A figure the page does not carry is None.
    """

    model_name: str | None
    engine: str | None  # V1 data-parallel index label; None on a V0 page
    cache_config: Mapping[str, str | None]  # every label of vllm:cache_config_info, "None" -> None
    num_gpu_blocks: int | None  # KV blocks per GPU
    block_size: int | None  # tokens per block (for hybrid models, the smallest over layer groups)
    kv_cache_memory_bytes: int | None  # KV bytes per GPU (recent V1 only)
    kv_cache_size_tokens: int | None  # tokens the KV cache holds (recent V1 only)
    gpu_memory_utilization: float | None  # fraction 0..1
    cache_dtype: str | None  # "auto" means the model's dtype
    kv_cache_usage: float | None  # fraction 0..1 of the KV cache in use
    requests_running: float | None  # requests
    requests_waiting: float | None  # requests
    preemptions_total: float | None  # counter, preemptions
    prompt_tokens_total: float | None  # counter, tokens
    generation_tokens_total: float | None  # counter, tokens
    inter_token_latency_sum_s: float | None = None  # histogram sum, seconds (time_per_output_token before 0.11)
    inter_token_latency_count: float | None = None  # histogram count, tokens


def _label_value(value: str) -> str | None:
    return None if value == "None" else value


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return None
        return int(number) if math.isfinite(number) and number == int(number) else None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@dataclass
class _Engine:
    model_name: str | None = None
    cache_config: dict[str, str | None] | None = None
    values: dict[str, tuple[int, float]] = field(default_factory=dict)  # field -> (name rank, value)

    def add(self, key: str, rank: int, value: float) -> None:
        """Keep the newest name's value; samples of one name (other labels) add up."""
        seen = self.values.get(key)
        if seen is None or rank < seen[0]:
            self.values[key] = (rank, value)
        elif rank == seen[0]:
            self.values[key] = (rank, seen[1] + value)

    def merge(self, other: _Engine) -> None:
        """Fill what this engine lacks from ``other`` (series without an engine label on a V1 page)."""
        self.model_name = self.model_name or other.model_name
        self.cache_config = self.cache_config if self.cache_config is not None else other.cache_config
        for key, value in other.values.items():
            self.values.setdefault(key, value)

    def useful(self) -> bool:
        return self.cache_config is not None or bool(self.values)

    def freeze(self, engine: str | None) -> VllmEngine:
        config = self.cache_config or {}

        def value(key: str) -> float | None:
            seen = self.values.get(key)
            return None if seen is None or math.isnan(seen[1]) else seen[1]

        return VllmEngine(
            model_name=self.model_name,
            engine=engine,
            cache_config=MappingProxyType(dict(config)),
            num_gpu_blocks=_int(config.get("num_gpu_blocks")),
            block_size=_int(config.get("block_size")),
            kv_cache_memory_bytes=_int(config.get("kv_cache_memory_bytes")),
            kv_cache_size_tokens=_int(config.get("kv_cache_size_tokens")),
            gpu_memory_utilization=_float(config.get("gpu_memory_utilization")),
            cache_dtype=config.get("cache_dtype"),
            kv_cache_usage=value("kv_cache_usage"),
            requests_running=value("requests_running"),
            requests_waiting=value("requests_waiting"),
            preemptions_total=value("preemptions_total"),
            prompt_tokens_total=value("prompt_tokens_total"),
            generation_tokens_total=value("generation_tokens_total"),
            inter_token_latency_sum_s=value("inter_token_latency_sum_s"),
            inter_token_latency_count=value("inter_token_latency_count"),
        )


def _engine_order(engine: str | None) -> tuple[int, int, str]:
    if engine is None:
        return (0, 0, "")
    return (1, int(engine), "") if engine.isdigit() else (2, 0, engine)


def parse_metrics(text: str, source: str = "<metrics>") -> list[VllmEngine]:
    """The vLLM engines of a ``/metrics`` page, in engine order.

    Raises VllmMetricsError naming ``source`` when the page is not Prometheus text or has no ``vllm:`` series.
    """
    if looks_like_html(text):
        raise VllmMetricsError(f"{source}: {HTML_ANSWER.format(what='Prometheus text')}")
    engines: dict[str | None, _Engine] = {}
    saw_vllm = False
    try:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("vllm:"):
                continue
            saw_vllm = True
            for sample in family.samples:
                labels = sample.labels
                engine_label = labels.get(ENGINE_LABEL)
                if sample.name == CACHE_CONFIG_INFO:
                    engine = engines.setdefault(engine_label, _Engine())
                    engine.model_name = engine.model_name or labels.get(MODEL_LABEL)
                    engine.cache_config = {k: _label_value(v) for k, v in labels.items()}
                    continue
                wanted = _WANTED.get(sample.name)
                if wanted is None:
                    continue
                engine = engines.setdefault(engine_label, _Engine())
                engine.model_name = engine.model_name or labels.get(MODEL_LABEL)
                engine.add(wanted[0], wanted[1], float(sample.value))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        raise VllmMetricsError(f"{source}: not Prometheus text: {str(exc)[:200]}") from exc
    if not saw_vllm:
        raise VllmMetricsError(f"{source}: no vllm: metrics on the page (is it a vLLM server's /metrics?)")
    unlabelled = engines.get(None)
    labelled = [key for key in engines if key is not None]
    if unlabelled is not None and len(labelled) == 1:  # e.g. cache_config_info with engine, the rest without
        engines[labelled[0]].merge(unlabelled)
        del engines[None]
    return [
        engine.freeze(key)
        for key, engine in sorted(engines.items(), key=lambda kv: _engine_order(kv[0]))
        if engine.useful()
    ]


def fetch(url: str, timeout_s: float = 5.0, max_bytes: int = 64 * 2**20) -> str:
    """The body of ``url`` (http or https), read within ``timeout_s`` seconds in all and at most ``max_bytes``.

    Any failure (refused, HTTP error, timeout, too large) raises VllmMetricsError naming the URL.
    """
    try:
        answer = fetch_url(url, timeout_s=timeout_s, max_bytes=max_bytes, headers={"Accept": "text/plain"})
    except FetchError as exc:
        detail = f"page larger than {max_bytes:,} bytes" if exc.reason == "too_large" else exc.detail
        raise VllmMetricsError(f"{exc.url}: {detail}") from exc
    return answer.text()
