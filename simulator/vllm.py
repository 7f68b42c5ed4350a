"""Simulated vLLM servers beside the simulated node: their ``/metrics`` and their start-up logs.

Each server in a scenario (the processes with a ``vllm`` block; a tensor-parallel server's ranks together)
gets a real HTTP server on 127.0.0.1. ``/metrics`` is vLLM's page for that version, computed from the
scenario clock at request time: ``vllm:cache_config_info`` from the budget the scenario derived (the same
one the fake NVML's process memory follows), KV cache usage and request gauges from the block's signals,
token counters integrated from its rate signals since the server became ready, and an inter-token latency
histogram whose latency grows with the SM activity of the *other* processes the fake NVML has on the
server's GPUs. ``/logs`` is the servers' log so far (all ranks interleaved) in that version's formats.

Version rules (simulation choices drawn from ``docs/reference/vllm-memory.md``): the V1 engine from 0.8
(``engine`` label; V0 before, ``model_name`` only); ``kv_cache_usage_perc`` from 0.9 (``gpu_cache_usage_perc``
before); ``inter_token_latency_seconds`` from 0.11 (``time_per_output_token_seconds`` before); the computed
``kv_cache_memory_bytes`` / ``kv_cache_size_tokens`` labels of ``cache_config_info`` from 0.11.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulator.fake_nvml import FakeNvmlLibrary, _Target
from simulator.scenario import GIB, ProcessSpec, Scenario, VllmBudget, VllmSpec
from simulator.signals import Signal

__all__ = ["SimVllmServer", "vllm_servers"]

Version = tuple[int, int, int]
_V1_SINCE: Version = (0, 8, 0)  # VLLM_USE_V1 on by default
_KV_USAGE_RENAMED: Version = (0, 9, 0)
_ITL_RENAMED: Version = (0, 11, 0)
_CACHE_SIZE_LABELS_SINCE: Version = (0, 11, 0)
_AVAILABLE_KV_LINE_SINCE: Version = (0, 9, 2)
_ONE_LINE_KV_SIZE_SINCE: Version = (0, 11, 0)
_MODEL_LOADING_MEMORY_SINCE: Version = (0, 11, 0)  # "Model loading took %s GiB memory and %.6f seconds"
_LOADING_SECONDS_SINCE: Version = (0, 7, 3)  # the weights line gains its seconds
_BRACKETED_FILE_SINCE: Version = (0, 8, 0)  # "[file.py:N]" rather than "file.py:N]"
_PROCESS_TAGS_SINCE: Version = (0, 10, 2)  # "(APIServer pid=…)", "(EngineCore_DP0 pid=…)", "(Worker_TP1 pid=…)"
_ENGINE_STATS_PREFIX_SINCE: Version = (0, 10, 0)  # "Engine 000: Avg prompt throughput…"
_BUDGET_LINES_SINCE: Version = (0, 6, 6)  # V0's three budget lines
_PROFILING_RESULTS_SINCE: Version = (0, 6, 4)  # V0's one "Memory profiling results" line (0.6.4, 0.6.5)
_CUDA_BLOCKS_SINCE: Version = (0, 7, 0)  # "# CUDA blocks" rather than "# GPU blocks"
_NON_DEFAULT_ARGS_SINCE: Version = (0, 10, 0)  # "non-default args: {…}" and "Using max model len N"

_ITL_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TPOT_V0_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_ITL_SPREAD = 0.35  # sigma of the log-normal spread of inter-token gaps around their median
_ITL_KV_SLOWDOWN = 0.3  # a full KV cache (big batches) makes each step this much slower
_ITL_STEP_S = 2.0  # scenario seconds per integration cell of the latency histogram
_STATS_INTERVAL_S = 10.0  # vLLM logs its throughput line every 10 s
_STATS_LINES_KEPT = 30  # the log keeps the last this many throughput lines
_CPU_BLOCKS = 2048  # V0's swap space of 4 GiB in CPU blocks, as vLLM logs it
_DEFAULT_PORT = 8000  # what the server says it listens on in its pod


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}" if inner else ""


def _integral(signal: Signal, t0: float, t1: float) -> float:
    """∫ signal dt over [t0, t1] (0 for an empty interval)."""
    return signal.mean(t0, t1) * (t1 - t0) if t1 > t0 else 0.0


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


@dataclass(frozen=True)
class _Line:
    t: float  # scenario seconds
    order: int  # ties at one instant keep the order they were written in
    text: str  # everything after the timestamp's file reference
    tag: str  # process tag, e.g. "(Worker_TP1 pid=40233) ", or ""
    source: str  # "file.py:N"
    level: str = "INFO"


class SimVllmServer:
    """One simulated vLLM server: ``/metrics`` (served by rank 0's process) and ``/logs`` (all ranks)."""

    def __init__(self, budgets: list[VllmBudget], scenario: Scenario, nvml: FakeNvmlLibrary) -> None:
        if not budgets:
            raise ValueError("a vLLM server needs at least one worker")
        self.budgets = budgets
        self.scenario = scenario
        self.nvml = nvml
        by_pid = {p.pid: p for p in scenario.processes}
        self.processes: list[ProcessSpec] = [by_pid[b.pid] for b in budgets]
        self._lock = threading.Lock()
        self._itl_cells = 0  # whole integration cells already summed into the accumulators
        self._itl_buckets = [0.0] * len(self.buckets)
        self._itl_sum_s = 0.0
        self._itl_count = 0.0
        source = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                t = source.nvml.clock.now()
                if path == "/metrics":
                    if not source.ready(t):
                        self.send_error(503, "vLLM is not serving (starting up or stopped)")
                        return
                    self._reply(source.render_metrics(t), "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/logs":
                    self._reply(source.render_logs(t), "text/plain; charset=utf-8")
                else:
                    self.send_error(404, "the simulated vLLM serves /metrics and /logs")

            def _reply(self, text: str, content_type: str) -> None:
                body = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        port = self.spec.metrics_port or 0
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise OSError(
                f"simulated vLLM server of process {self.budgets[0].pid}: cannot listen on 127.0.0.1:{port}: {exc}"
            ) from exc
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"sim-vllm-{self.pid}", daemon=True)

    # -- identity ---------------------------------------------------------------------------------------
    @property
    def spec(self) -> VllmSpec:
        """Rank 0's block: the server's configuration and traffic."""
        return self.budgets[0].spec

    @property
    def pid(self) -> int:
        """Rank 0's process."""
        return self.budgets[0].pid

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def version(self) -> Version:
        return self.spec.version_tuple

    def _container_part(self, index: int) -> str:
        container = self.processes[0].container
        return container.split("/")[index] if container else ""

    @property
    def namespace(self) -> str:
        return self._container_part(0)

    @property
    def pod(self) -> str:
        return self._container_part(1)

    @property
    def container(self) -> str:
        return self._container_part(2)

    @property
    def url(self) -> str:
        """Base URL: ``{url}/metrics`` and ``{url}/logs``."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def metrics_url(self) -> str:
        return self.url + "/metrics"

    @property
    def logs_url(self) -> str:
        return self.url + "/logs"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    # -- time ---------------------------------------------------------------------------------------------
    @property
    def ready_at(self) -> float:
        """Scenario second the last rank finished start-up and the API server began to answer."""
        return max(p.start + b.ready_at for p, b in zip(self.processes, self.budgets, strict=True))

    def ready(self, t: float) -> bool:
        return t >= self.ready_at and all(p.stop is None or t < p.stop for p in self.processes)

    def _serving_until(self, t: float) -> float:
        stops = [p.stop for p in self.processes if p.stop is not None]
        return min([t, *stops])

    def _wall(self, t: float) -> float:
        clock = self.nvml.clock
        return clock.wall() - clock.now() + t

    # -- /metrics -----------------------------------------------------------------------------------------
    @property
    def v1(self) -> bool:
        return self.version >= _V1_SINCE

    @property
    def buckets(self) -> tuple[float, ...]:
        return _ITL_BUCKETS_S if self.version >= _V1_SINCE else _TPOT_V0_BUCKETS_S

    def _base_labels(self) -> dict[str, str]:
        return {"engine": "0", "model_name": self.model} if self.v1 else {"model_name": self.model}

    def tokens(self, t: float) -> tuple[int, int]:
        """(prompt, generation) tokens processed from becoming ready until scenario second t."""
        end = self._serving_until(t)
        prompt = _integral(self.spec.prompt_tokens_per_s, self.ready_at, end)
        generated = _integral(self.spec.generation_tokens_per_s, self.ready_at, end)
        return math.floor(prompt), math.floor(generated)

    def _others_activity(self, t0: float, t1: float) -> float:
        """Highest, over the server's GPUs, SM activity (0..1) of the processes there that are not its own."""
        own = {p.pid for p in self.processes}
        mid = (t0 + t1) / 2
        busiest = 0.0
        for proc in self.processes:
            target = _Target(proc.gpus[0], proc.mig)
            others = sum(
                p.sm.mean(t0, t1) * p.sm_fraction for p in self.nvml.processes_on(target, mid) if p.pid not in own
            )
            busiest = max(busiest, min(1.0, others))
        return busiest

    def median_itl_s(self, t0: float, t1: float) -> float:
        """Median inter-token latency over [t0, t1]: slower when others compute on the GPU, or batches are big."""
        spec = self.spec
        kv = min(1.0, max(0.0, float(spec.kv_usage.mean(t0, t1))))
        return (
            spec.itl_seconds * (1 + spec.itl_contention * self._others_activity(t0, t1)) * (1 + _ITL_KV_SLOWDOWN * kv)
        )

    def _itl_cell(self, t0: float, t1: float) -> tuple[list[float], float, float]:
        tokens = _integral(self.spec.generation_tokens_per_s, t0, t1)
        if tokens <= 0:
            return [0.0] * len(self.buckets), 0.0, 0.0
        median = self.median_itl_s(t0, t1)
        shares = [_normal_cdf((math.log(le) - math.log(median)) / _ITL_SPREAD) for le in self.buckets]
        return [tokens * s for s in shares], tokens * median * math.exp(_ITL_SPREAD**2 / 2), tokens

    def itl_histogram(self, t: float) -> tuple[list[float], float, float]:
        """(cumulative bucket counts, sum in seconds, count) of inter-token gaps until scenario second t."""
        start, end = self.ready_at, self._serving_until(t)
        if end <= start:
            return [0.0] * len(self.buckets), 0.0, 0.0
        whole = int((end - start) // _ITL_STEP_S)
        with self._lock:
            while self._itl_cells < whole:  # whole cells are summed once, so answers never depend on who asked when
                a = start + self._itl_cells * _ITL_STEP_S
                counts, seconds, n = self._itl_cell(a, a + _ITL_STEP_S)
                self._itl_buckets = [x + y for x, y in zip(self._itl_buckets, counts, strict=True)]
                self._itl_sum_s += seconds
                self._itl_count += n
                self._itl_cells += 1
            buckets, total_s, count = list(self._itl_buckets), self._itl_sum_s, self._itl_count
            done = start + self._itl_cells * _ITL_STEP_S
        counts, seconds, n = self._itl_cell(done, end)
        return [x + y for x, y in zip(buckets, counts, strict=True)], total_s + seconds, count + n

    def cache_config_labels(self) -> dict[str, str]:
        """The labels of ``vllm:cache_config_info``: vLLM's cache config of this version, values as strings."""
        spec, budget = self.spec, self.budgets[0]
        labels = {
            "block_size": str(spec.block_size),
            "cache_dtype": "auto",
            "cpu_offload_gb": "0",
            "enable_prefix_caching": "True" if self.v1 else "False",
            "gpu_memory_utilization": str(spec.gpu_memory_utilization),
            "is_attention_free": "False",
            "num_cpu_blocks": "None" if self.v1 else str(_CPU_BLOCKS),
            "num_gpu_blocks": str(budget.num_gpu_blocks),
            "num_gpu_blocks_override": "None",
            "sliding_window": "None",
            "swap_space_bytes": str(4 * GIB),
        }
        if self.v1:
            labels |= {"engine": "0", "calculate_kv_scales": "False", "prefix_caching_hash_algo": "builtin"}
        if self.version >= _CACHE_SIZE_LABELS_SINCE:
            labels |= {
                "prefix_caching_hash_algo": "sha256",
                "kv_cache_memory_bytes": str(budget.kv_cache_memory_bytes),
                "kv_cache_size_tokens": str(budget.kv_cache_size_tokens),
                "kv_cache_max_concurrency": str(budget.max_concurrency),
                "effective_attention_block_size": str(spec.block_size),
                "kv_sharing_fast_prefill": "False",
                "mamba_cache_dtype": "auto",
            }
        return labels

    def render_metrics(self, t: float | None = None) -> str:
        """The ``/metrics`` page at scenario second ``t`` (now by default)."""
        t = self.nvml.clock.now() if t is None else t
        spec, base = self.spec, self._base_labels()
        created = self._wall(self.ready_at)
        lines: list[str] = []

        def family(name: str, kind: str, doc: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
            lines.extend((f"# HELP {name} {doc}", f"# TYPE {name} {kind}"))
            lines.extend(f"{sample}{_labels(lb)} {_fmt(v)}" for sample, lb, v in samples)

        def counter(name: str, doc: str, value: float) -> None:
            family(name + "_total", "counter", doc, [(name + "_total", base, value)])
            if self.v1:
                family(name + "_created", "gauge", doc, [(name + "_created", base, created)])

        running = round(max(0.0, spec.requests_running.value(t)))
        waiting = round(max(0.0, spec.requests_waiting.value(t)))
        family(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            [("vllm:num_requests_running", base, running)],
        )
        family(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            [("vllm:num_requests_waiting", base, waiting)],
        )
        kv_name = "vllm:kv_cache_usage_perc" if self.version >= _KV_USAGE_RENAMED else "vllm:gpu_cache_usage_perc"
        kv = min(1.0, max(0.0, spec.kv_usage.value(t)))
        family(kv_name, "gauge", "KV-cache usage. 1 means 100 percent usage.", [(kv_name, base, kv)])
        prompt, generated = self.tokens(t)
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", prompt)
        counter("vllm:generation_tokens", "Number of generation tokens processed.", generated)
        itl = (
            "vllm:inter_token_latency_seconds" if self.version >= _ITL_RENAMED else "vllm:time_per_output_token_seconds"
        )
        doc = (
            "Histogram of inter-token latency in seconds."
            if self.version >= _ITL_RENAMED
            else "Histogram of time per output token in seconds."
        )
        counts, total_s, _ = self.itl_histogram(t)
        samples: list[tuple[str, dict[str, str], float]] = [
            (f"{itl}_bucket", {**base, "le": _fmt(le)}, min(math.floor(n), generated))
            for le, n in zip(self.buckets, counts, strict=True)
        ]
        samples += [
            (f"{itl}_bucket", {**base, "le": "+Inf"}, generated),
            (f"{itl}_count", base, generated),
            (f"{itl}_sum", base, total_s),
        ]
        family(itl, "histogram", doc, samples)
        if self.v1:
            family(itl + "_created", "gauge", doc, [(itl + "_created", base, created)])
        info_labels = self.cache_config_labels()
        family(
            "vllm:cache_config_info",
            "gauge",
            "Information of the LLMEngine CacheConfig",
            [("vllm:cache_config_info", info_labels, 1.0)],
        )
        return "\n".join(lines) + "\n"

    # -- /logs --------------------------------------------------------------------------------------------
    def _tags(self) -> tuple[str, str, Callable[[int], str]]:
        """(API server tag, engine tag, rank → worker tag) of this version's log prefixes."""
        v, tp, pids = self.version, self.spec.tensor_parallel, [b.pid for b in self.budgets]
        api_pid, engine_pid = max(1, pids[0] - 31), (pids[0] if tp == 1 else max(1, pids[0] - 12))
        if v >= _PROCESS_TAGS_SINCE:
            engine = f"(EngineCore_DP0 pid={engine_pid}) "
            if tp == 1:
                return f"(APIServer pid={api_pid}) ", engine, lambda rank: engine
            return f"(APIServer pid={api_pid}) ", engine, lambda rank: f"(Worker_TP{rank} pid={pids[rank]}) "
        if v >= _V1_SINCE:
            if tp == 1:
                return "", "", lambda rank: ""
            return "", "", lambda rank: f"(VllmWorker rank={rank} pid={pids[rank]}) "
        return "", "", lambda rank: "" if rank == 0 else f"(VllmWorkerProcess pid={pids[rank]}) "

    def log_lines(self) -> list[_Line]:
        """Every line the server writes from start-up on (throughput lines excluded), in time order."""
        v, spec = self.version, self.spec
        api, engine, worker = self._tags()
        start = self.processes[0].start
        out: list[_Line] = []

        def add(t: float, tag: str, source: str, text: str, level: str = "INFO") -> None:
            out.append(_Line(t, len(out), text, tag, source, level))

        args = {"model_tag": spec.model, "model": spec.model, "max_model_len": spec.max_model_len}
        if spec.tensor_parallel > 1:
            args["tensor_parallel_size"] = spec.tensor_parallel
        if spec.gpu_memory_utilization != 0.9:
            args["gpu_memory_utilization"] = spec.gpu_memory_utilization
        version = ".".join(str(x) for x in v)
        add(start, api, "api_server.py:1839", f"vLLM API server version {version}")
        if v >= _NON_DEFAULT_ARGS_SINCE:
            add(start, api, "utils.py:233", f"non-default args: {args}")
            add(start + 0.2, api, "model.py:1510", f"Using max model len {spec.max_model_len}")
        config = (
            f"model='{spec.model}', tokenizer='{spec.model}', dtype=torch.bfloat16, max_seq_len={spec.max_model_len}, "
            f"tensor_parallel_size={spec.tensor_parallel}, pipeline_parallel_size=1, kv_cache_dtype=auto, "
            f"device_config=cuda, served_model_name={spec.model}, enable_prefix_caching={self.v1}"
        )
        if self.v1:
            add(start + 0.5, engine, "core.py:77", f"Initializing a V1 LLM engine (v{version}) with config: {config}")
        else:
            add(
                start + 0.5,
                engine,
                "llm_engine.py:234",
                f"Initializing an LLM engine (v{version}) with config: {config}",
            )
        ranks = list(zip(self.processes, self.budgets, strict=True))
        for proc, b in ranks:
            rank, tag = b.spec.rank, worker(b.spec.rank)
            tp = spec.tensor_parallel
            if self.v1:
                add(
                    proc.start + 0.8,
                    tag,
                    "parallel_state.py:1208",
                    f"rank {rank} in world size {tp} is assigned as DP rank 0, PP rank 0, "
                    f"TP rank {rank}, EP rank {rank}",
                )
                add(proc.start + 0.9, tag, "gpu_model_runner.py:2602", f"Starting to load model {spec.model}...")
            loaded_s = b.spec.load_seconds - 0.9
            weights_gib = b.spec.weights / GIB
            if v >= _MODEL_LOADING_MEMORY_SINCE:
                text = f"Model loading took {round(weights_gib, 2)} GiB memory and {loaded_s:.6f} seconds"
            elif self.v1:
                text = f"Model loading took {weights_gib:.4f} GiB and {loaded_s:.6f} seconds"
            elif v >= _LOADING_SECONDS_SINCE:
                text = f"Loading model weights took {weights_gib:.4f} GB and {loaded_s:.6f} seconds"
            else:
                text = f"Loading model weights took {weights_gib:.4f} GB"
            add(
                proc.start + b.weights_loaded_at,
                tag,
                "gpu_model_runner.py:2653" if self.v1 else "model_runner.py:1099",
                text,
            )
            profiled = proc.start + b.kv_reserved_at
            if self.v1 and v >= _AVAILABLE_KV_LINE_SINCE:
                add(profiled, tag, "gpu_worker.py:298", f"Available KV cache memory: {b.kv_budget / GIB:.2f} GiB")
            elif not self.v1 and v >= _BUDGET_LINES_SINCE:
                add(
                    profiled, tag, "worker.py:241", f"Memory profiling takes {b.spec.profile_seconds * 0.5:.2f} seconds"
                )
                add(
                    profiled,
                    tag,
                    "worker.py:241",
                    f"the current vLLM instance can use total_gpu_memory ({b.total_gpu_memory / GIB:.2f}GiB) x "
                    f"gpu_memory_utilization ({spec.gpu_memory_utilization:.2f}) = {b.requested / GIB:.2f}GiB",
                )
                add(
                    profiled,
                    tag,
                    "worker.py:241",
                    f"model weights take {weights_gib:.2f}GiB; non_torch_memory takes {b.spec.non_torch / GIB:.2f}GiB; "
                    f"PyTorch activation peak memory takes {b.spec.activation_peak / GIB:.2f}GiB; the rest of the "
                    f"memory reserved for KV Cache is {b.kv_budget / GIB:.2f}GiB.",
                )
            elif not self.v1 and v >= _PROFILING_RESULTS_SINCE:
                s = b.spec
                initial = (s.cuda_context + s.weights) / GIB
                add(
                    profiled,
                    tag,
                    "worker.py:262",
                    f"Memory profiling results: total_gpu_memory={b.total_gpu_memory / GIB:.2f}GiB "
                    f"initial_memory_usage={initial:.2f}GiB "
                    f"peak_torch_memory={(s.weights + s.activation_peak) / GIB:.2f}GiB "
                    f"memory_usage_post_profile={initial + s.non_torch / GIB:.2f}GiB "
                    f"non_torch_memory={s.non_torch / GIB:.2f}GiB kv_cache_size={b.kv_budget / GIB:.2f}GiB "
                    f"gpu_memory_utilization={spec.gpu_memory_utilization:.2f}",
                )
        b0 = self.budgets[0]
        reserved = max(p.start + b.kv_reserved_at for p, b in ranks)
        tokens, conc = b0.kv_cache_size_tokens, b0.max_concurrency
        if self.v1:
            size = f"GPU KV cache size: {tokens:,} tokens"
            most = f"Maximum concurrency for {spec.max_model_len:,} tokens per request: {conc:.2f}x"
            if v >= _ONE_LINE_KV_SIZE_SINCE:
                add(reserved, engine, "kv_cache_utils.py:1087", f"{size}, {most}")
            else:
                add(reserved, engine, "kv_cache_utils.py:634", size)
                add(reserved, engine, "kv_cache_utils.py:637", most)
        else:
            kind = "CUDA" if v >= _CUDA_BLOCKS_SINCE else "GPU"
            executor = "executor_base.py:111" if v >= _CUDA_BLOCKS_SINCE else "distributed_gpu_executor.py:57"
            add(reserved, engine, executor, f"# {kind} blocks: {b0.num_gpu_blocks}, # CPU blocks: {_CPU_BLOCKS}")
            if v >= _PROFILING_RESULTS_SINCE:
                add(
                    reserved,
                    engine,
                    executor.replace(":111", ":116").replace(":57", ":61"),
                    f"Maximum concurrency for {spec.max_model_len} tokens per request: {conc:.2f}x",
                )
        for proc, b in ranks:
            add(
                proc.start + b.ready_at,
                worker(b.spec.rank),
                "gpu_model_runner.py:3480" if self.v1 else "model_runner.py:1535",
                f"Graph capturing finished in {b.spec.graph_seconds:.0f} secs, took {b.spec.cuda_graphs / GIB:.2f} GiB",
            )
        ready = self.ready_at
        init_s = ready - start - b0.spec.load_seconds
        add(
            ready,
            engine,
            "core.py:210" if self.v1 else "llm_engine.py:431",
            f"init engine (profile, create kv cache, warmup model) took {init_s:.2f} seconds",
        )
        port = spec.metrics_port or _DEFAULT_PORT
        add(ready, api, "api_server.py:1912", f"Starting vLLM API server 0 on http://0.0.0.0:{port}")
        return sorted(out, key=lambda line: (line.t, line.order))

    def _stats_lines(self, t: float) -> list[_Line]:
        """vLLM's periodic throughput lines up to scenario second t (the last ones only)."""
        spec, v = self.spec, self.version
        end = self._serving_until(t)
        count = int((end - self.ready_at) // _STATS_INTERVAL_S)
        first = max(1, count - _STATS_LINES_KEPT + 1)
        api, _, _ = self._tags()
        out = []
        for k in range(first, count + 1):
            b = self.ready_at + k * _STATS_INTERVAL_S
            a = b - _STATS_INTERVAL_S
            prompt, gen = spec.prompt_tokens_per_s.mean(a, b), spec.generation_tokens_per_s.mean(a, b)
            running = round(max(0.0, spec.requests_running.value(b)))
            waiting = round(max(0.0, spec.requests_waiting.value(b)))
            kv = 100 * min(1.0, max(0.0, spec.kv_usage.value(b)))
            rates = f"Avg prompt throughput: {prompt:.1f} tokens/s, Avg generation throughput: {gen:.1f} tokens/s"
            if self.v1:
                prefix = "Engine 000: " if v >= _ENGINE_STATS_PREFIX_SINCE else ""
                text = (
                    f"{prefix}{rates}, Running: {running} reqs, Waiting: {waiting} reqs, "
                    f"GPU KV cache usage: {kv:.1f}%, Prefix cache hit rate: 0.0%"
                )
                source = "loggers.py:123"
            else:
                text = (
                    f"{rates}, Running: {running} reqs, Swapped: 0 reqs, Pending: {waiting} reqs, "
                    f"GPU KV cache usage: {kv:.1f}%, CPU KV cache usage: 0.0%."
                )
                source = "metrics.py:467"
            out.append(_Line(b, k, text, api, source))
        return out

    def _format(self, line: _Line) -> str:
        stamp = time.strftime("%m-%d %H:%M:%S", time.gmtime(self._wall(line.t)))
        source = f"[{line.source}]" if self.version >= _BRACKETED_FILE_SINCE else f"{line.source}]"
        return f"{line.tag}{line.level} {stamp} {source} {line.text}"

    def render_logs(self, t: float | None = None) -> str:
        """The server's log (every rank's lines interleaved) as written up to scenario second ``t``."""
        t = self.nvml.clock.now() if t is None else t
        lines = [line for line in self.log_lines() if line.t <= t] + self._stats_lines(t)
        return "".join(self._format(line) + "\n" for line in lines)


def vllm_servers(scenario: Scenario, nvml: FakeNvmlLibrary) -> list[SimVllmServer]:
    """One (not yet started) simulated server per vLLM server of the scenario; none without ``vllm`` blocks."""
    return [SimVllmServer(budgets, scenario, nvml) for budgets in scenario.vllm_servers()]
