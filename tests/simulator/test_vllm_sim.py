"""Simulated vLLM servers: their /metrics and /logs agree with the budget the fake NVML's memory follows."""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from simulator.clock import SimClock
from simulator.node import SimulatedNode
from simulator.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from simulator.vllm import SimVllmServer
from tests.conftest import SCENARIOS, Sim, one_gpu

GiB = 2**30
MiB = 2**20
INFERENCE = SCENARIOS / "h100-inference-node.yaml"
MIG = SCENARIOS / "h100-8gpu-mig-node.yaml"


def vllm_block(**overrides: Any) -> dict[str, Any]:
    """A Llama-3.1-8B server at 0.9 of an 80 GiB H100 (overrides replace fields)."""
    block: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "gpu_memory_utilization": 0.9,
        "weights": "14.99GiB",
        "non_torch": "0.2GiB",
        "activation_peak": "1.2GiB",
        "cuda_graphs": "0.6GiB",
        "cuda_context": "0.5GiB",
        "kv_bytes_per_token": 131072,
        "max_model_len": 8192,
    }
    return block | overrides


def vllm_process(pid: int = 7, gpu: int = 0, **overrides: Any) -> dict[str, Any]:
    return {"pid": pid, "name": "vllm", "gpus": [gpu], "vllm": vllm_block(**overrides)}


def tp2_scenario(version: str = "0.11.0") -> dict[str, Any]:
    """Llama-3.1-70B at TP 2 in one pod; rank 1 profiles less non-torch memory than rank 0."""
    shared = {
        "model": "llama-70b",
        "version": version,
        "weights": "65.7GiB",
        "activation_peak": "0.9GiB",
        "cuda_context": "2GiB",
        "cuda_graphs": "0.8GiB",
        "kv_bytes_per_token": 163840,
        "max_model_len": 16384,
        "tensor_parallel": 2,
        "generation_tokens_per_s": 100,
    }
    return {
        "name": "tp2",
        "gpus": [{"index": 0}, {"index": 1}],
        "pods": [{"namespace": "llm", "name": "big-0", "containers": [{"name": "vllm", "devices": ["0", "1"]}]}],
        "processes": [
            {
                "pid": 100,
                "name": "vllm",
                "gpus": [0],
                "container": "llm/big-0/vllm",
                "vllm": vllm_block(**shared, rank=0, non_torch="0.55GiB"),
            },
            {
                "pid": 101,
                "name": "VllmWorkerProc",
                "gpus": [1],
                "container": "llm/big-0/vllm",
                "vllm": vllm_block(**shared, rank=1, non_torch="0.5GiB"),
            },
        ],
    }


@pytest.fixture
def node() -> Iterator[Callable[..., SimulatedNode]]:
    """``node(scenario, at=60.0)``: a simulated node on a manual clock, closed afterwards."""
    nodes: list[SimulatedNode] = []

    def make(scenario: Scenario | dict[str, Any], at: float = 60.0) -> SimulatedNode:
        parsed = scenario if isinstance(scenario, Scenario) else parse_scenario(scenario)
        clock = SimClock(manual=True, offset=at, start_wall=1_763_719_200.0)
        sim = SimulatedNode(parsed, clock)
        nodes.append(sim)
        return sim

    yield make
    for sim in nodes:
        sim.close()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def families(server: SimVllmServer) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(fetch(server.metrics_url))}


def sample_value(fams: dict[str, Any], family: str, sample: str | None = None) -> float:
    (value,) = [s.value for s in fams[family].samples if s.name == (sample or family)]
    return float(value)


def cache_config(fams: dict[str, Any]) -> dict[str, str]:
    (info,) = fams["vllm:cache_config_info"].samples
    return dict(info.labels)


def test_served_metrics_parse_and_cache_config_holds_blocks_times_page_bytes(
    node: Callable[..., SimulatedNode],
) -> None:
    sim = node(load_scenario(INFERENCE))
    servers = sim.start_vllm_servers()
    assert [(s.namespace, s.pod, s.model) for s in servers] == [
        ("llm", "vllm-llama-8b-6d9f7c5b8-x2k4p", "meta-llama/Llama-3.1-8B-Instruct"),
        ("llm", "vllm-qwen-1-5b-7b8c9d6f5-m7qzt", "Qwen/Qwen2.5-1.5B-Instruct"),  # TGI is not vLLM: no server
    ]
    for server in servers:
        fams = families(server)
        info = cache_config(fams)
        blocks, block_size = int(info["num_gpu_blocks"]), int(info["block_size"])
        assert blocks * block_size * server.spec.kv_bytes_per_token == int(info["kv_cache_memory_bytes"])
        assert blocks * block_size == int(info["kv_cache_size_tokens"])
        assert info["engine"] == "0" and "model_name" not in info
        assert info["gpu_memory_utilization"] == str(server.spec.gpu_memory_utilization)
        (usage,) = fams["vllm:kv_cache_usage_perc"].samples
        assert usage.labels == {"engine": "0", "model_name": server.model} and 0 <= usage.value <= 1
        itl = fams["vllm:inter_token_latency_seconds"]
        buckets = [s.value for s in itl.samples if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == sample_value(
            fams, "vllm:generation_tokens", "vllm:generation_tokens_total"
        )
    llama = cache_config(families(servers[0]))
    assert (llama["num_gpu_blocks"], llama["kv_cache_size_tokens"]) == ("28472", "455552")


@pytest.mark.parametrize("path", [INFERENCE, MIG], ids=lambda p: p.name)
def test_nvml_memory_of_each_vllm_process_is_weights_plus_kv_plus_overhead(
    path: Any, simulate: Callable[..., Sim]
) -> None:
    sim = simulate(load_scenario(path), start=120)
    vllm_procs = [p for p in sim.scenario.processes if p.vllm is not None]
    assert vllm_procs
    by_pid: dict[int, int | None] = {}
    for gpu in sim.reader.read().gpus:
        by_pid |= {p.pid: p.memory_bytes for p in gpu.processes}
        for inst in gpu.mig:
            by_pid |= {p.pid: p.memory_bytes for p in inst.processes}
    for proc in vllm_procs:
        spec, budget = proc.vllm, sim.scenario.vllm_budget(proc.pid)
        assert spec is not None and budget is not None
        kv = budget.num_gpu_blocks * spec.block_size * spec.kv_bytes_per_token
        padding = math.ceil(kv / MiB) * MiB - kv  # the KV tensors are allocated in whole MiB
        overhead = spec.cuda_context + spec.cuda_graphs + spec.non_torch + spec.activation_peak + padding
        assert budget.overhead_bytes == overhead
        assert sim.fake.process_memory(proc, 120) == spec.weights + kv + overhead
        assert by_pid[proc.pid] == spec.weights + kv + overhead  # what the exporter's NVML reader reports


def test_memory_ramps_from_context_to_weights_to_the_kv_reservation(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({**vllm_process(), "start": 100}))
    proc, budget = sim.scenario.processes[0], sim.scenario.vllm_budget(7)
    assert budget is not None and proc.vllm is not None
    spec = proc.vllm
    assert sim.fake.process_memory(proc, 100) == spec.cuda_context
    assert sim.fake.process_memory(proc, 100 + budget.weights_loaded_at) == spec.cuda_context + spec.weights
    before_kv = sim.fake.process_memory(proc, 100 + budget.kv_reserved_at - 0.01)
    assert before_kv < spec.cuda_context + spec.weights + spec.non_torch + spec.activation_peak + MiB
    after_kv = sim.fake.process_memory(proc, 100 + budget.kv_reserved_at)
    assert after_kv - before_kv > 50 * GiB  # the KV cache is reserved in one step
    assert sim.fake.process_memory(proc, 100 + budget.ready_at) == budget.nvml_bytes


def test_token_counters_grow_with_scenario_time_at_the_configured_rates(node: Callable[..., SimulatedNode]) -> None:
    sim = node(one_gpu(vllm_process(prompt_tokens_per_s=300, generation_tokens_per_s=120)), at=30)
    (server,) = sim.start_vllm_servers()
    first = families(server)
    sim.clock.advance(50)
    second = families(server)

    def grew(name: str) -> float:
        return sample_value(second, name, name + "_total") - sample_value(first, name, name + "_total")

    assert grew("vllm:prompt_tokens") == 300 * 50
    assert grew("vllm:generation_tokens") == 120 * 50
    assert sample_value(first, "vllm:generation_tokens", "vllm:generation_tokens_total") == 120 * (30 - server.ready_at)


def test_bursty_counters_follow_the_signal_mean(node: Callable[..., SimulatedNode]) -> None:
    sim = node(load_scenario(INFERENCE), at=100)
    llama = sim.start_vllm_servers()[0]
    before = llama.tokens(100)
    after = llama.tokens(200)  # five periods of 20 s: 35% at 850 tokens/s, 65% at 15
    assert after[1] - before[1] == pytest.approx(100 * (0.35 * 850 + 0.65 * 15), abs=1)
    assert after[0] - before[0] == pytest.approx(100 * (0.35 * 2400 + 0.65 * 40), abs=1)


def test_the_log_budget_lines_agree_with_the_metrics(node: Callable[..., SimulatedNode]) -> None:
    sim = node(load_scenario(INFERENCE))
    for server in sim.start_vllm_servers():
        log = fetch(server.logs_url)
        info = cache_config(families(server))
        spec, budget = server.spec, server.budgets[0]
        weights = re.search(r"Model loading took (\S+) GiB memory and [\d.]+ seconds", log)
        available = re.search(r"Available KV cache memory: ([\d.]+) GiB", log)
        size = re.search(r"GPU KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens", log)
        assert weights and available and size, log
        assert float(weights.group(1)) == round(spec.weights / GiB, 2)
        assert int(size.group(1).replace(",", "")) == int(info["kv_cache_size_tokens"])
        assert int(size.group(2).replace(",", "")) == spec.max_model_len
        kv_gib = int(info["kv_cache_memory_bytes"]) / GiB
        page_gib = spec.block_size * spec.kv_bytes_per_token / GiB
        assert kv_gib - 0.005 <= float(available.group(1)) <= kv_gib + page_gib + 0.005  # blocks fill the budget
        assert float(available.group(1)) == round(budget.kv_budget / GiB, 2)
        assert re.search(r"Graph capturing finished in \d+ secs, took 0\.\d\d GiB", log)
        line = next(x for x in log.splitlines() if "GPU KV cache size" in x)
        assert re.match(r"\(EngineCore_DP0 pid=\d+\) INFO 11-21 \d\d:\d\d:\d\d \[kv_cache_utils\.py:\d+\] ", line)


def test_tensor_parallel_logs_carry_both_ranks_and_the_server_takes_the_smaller_block_count(
    node: Callable[..., SimulatedNode],
) -> None:
    sim = node(tp2_scenario())
    (server,) = sim.start_vllm_servers()  # one server for the two worker processes, served by rank 0
    assert (server.pid, server.namespace, server.pod) == (100, "llm", "big-0")
    log = fetch(server.logs_url)
    loading = [x for x in log.splitlines() if "Model loading took" in x]
    assert [x.split(")")[0] for x in loading] == ["(Worker_TP0 pid=100", "(Worker_TP1 pid=101"]
    available = re.findall(r"\(Worker_TP(\d) pid=\d+\) .*Available KV cache memory: ([\d.]+) GiB", log)
    assert [rank for rank, _ in available] == ["0", "1"] and available[0][1] < available[1][1]
    per_rank = [int(b.kv_budget // (16 * 163840)) for b in server.budgets]
    info = cache_config(families(server))
    assert int(info["num_gpu_blocks"]) == min(per_rank) < max(per_rank)
    assert log.count("GPU KV cache size") == 1


def test_older_versions_use_their_own_names_labels_and_log_lines(node: Callable[..., SimulatedNode]) -> None:
    sim = node(
        {
            "name": "old",
            "gpus": [{"index": 0}, {"index": 1}],
            "processes": [
                vllm_process(pid=1, gpu=0, version="0.6.6", generation_tokens_per_s=50),
                vllm_process(pid=2, gpu=1, version="0.8.5", generation_tokens_per_s=50),
            ],
        }
    )
    v0, v1 = sim.start_vllm_servers()
    fams = families(v0)
    assert "vllm:gpu_cache_usage_perc" in fams and "vllm:time_per_output_token_seconds" in fams
    (usage,) = fams["vllm:gpu_cache_usage_perc"].samples
    assert usage.labels == {"model_name": v0.model}  # V0: no engine label
    assert "kv_cache_memory_bytes" not in cache_config(fams)
    log = fetch(v0.logs_url)
    blocks = re.search(r"^INFO \d\d-\d\d [\d:]+ \S+\.py:\d+\] # GPU blocks: (\d+), # CPU blocks: \d+$", log, re.M)
    assert blocks and blocks.group(1) == cache_config(fams)["num_gpu_blocks"]
    assert re.search(r"Loading model weights took 14\.99\d\d GB$", log, re.M)
    assert "gpu_memory_utilization (0.90) = 72.00GiB" in log
    assert "the rest of the memory reserved for KV Cache is 55.61GiB." in log
    fams = families(v1)
    (usage,) = fams["vllm:gpu_cache_usage_perc"].samples
    assert usage.labels == {"engine": "0", "model_name": v1.model}
    log = fetch(v1.logs_url)
    assert "Model loading took 14.9902 GiB and" in log and "Available KV cache memory" not in log
    assert re.search(r"\[kv_cache_utils\.py:\d+\] GPU KV cache size: 455,552 tokens$", log, re.M)


def test_inter_token_latency_rises_when_another_process_computes_on_the_gpu(
    node: Callable[..., SimulatedNode],
) -> None:
    neighbour = {
        "pid": 9,
        "name": "train",
        "gpus": [0],
        "memory": "2GiB",
        "sm": {"points": [[0, 0], [100, 0], [100, 1]]},
    }
    sim = node(one_gpu(vllm_process(generation_tokens_per_s=200, itl_seconds=0.02), neighbour), at=20)
    (server,) = sim.start_vllm_servers()

    def mean_itl_over(seconds: float) -> float:
        a = families(server)
        sim.clock.advance(seconds)
        b = families(server)
        name = "vllm:inter_token_latency_seconds"
        d_sum = sample_value(b, name, name + "_sum") - sample_value(a, name, name + "_sum")
        d_count = sample_value(b, name, name + "_count") - sample_value(a, name, name + "_count")
        return d_sum / d_count

    alone = mean_itl_over(60)  # 20 → 80: the neighbour is idle
    sim.clock.advance(40)
    shared = mean_itl_over(60)  # 120 → 180: the neighbour's kernels fill the GPU
    assert shared > 1.8 * alone


def test_metrics_answer_only_once_the_server_is_ready(node: Callable[..., SimulatedNode]) -> None:
    sim = node(one_gpu(vllm_process()), at=3)
    (server,) = sim.start_vllm_servers()
    with pytest.raises(urllib.error.HTTPError, match="503"):
        fetch(server.metrics_url)
    assert "Model loading took" not in fetch(server.logs_url)  # still loading the weights
    sim.clock.advance(10)
    assert "vllm:cache_config_info" in fetch(server.metrics_url)


def test_a_node_without_vllm_blocks_starts_no_servers(node: Callable[..., SimulatedNode]) -> None:
    assert node(one_gpu({"pid": 1, "memory": "1GiB"})).start_vllm_servers() == []


def test_the_shipped_servers_have_both_idle_and_full_kv_caches() -> None:
    peaks = {}
    for path in (INFERENCE, MIG):
        for proc in load_scenario(path).processes:
            if proc.vllm is not None and proc.vllm.rank == 0:
                peaks[proc.vllm.model] = max(proc.vllm.kv_usage.value(t) for t in range(0, 60))
    assert peaks["meta-llama/Llama-3.1-8B-Instruct"] <= 0.2  # a big reservation, mostly idle
    assert peaks["Qwen/Qwen2.5-1.5B-Instruct"] >= 0.95  # genuinely full


@pytest.mark.parametrize(
    ("process", "message"),
    [
        (vllm_process(weights="75GiB"), "process 7: vLLM budget leaves no room for the KV cache"),
        (vllm_process(max_model_len=1_000_000), "process 7: the KV cache holds 455552 tokens, fewer than"),
        ({**vllm_process(), "memory": "70GiB"}, "process 7: give either 'memory' or a 'vllm' block"),
        ({"pid": 7, "name": "x", "gpus": [0]}, "process 7: give its GPU 'memory'"),
        (vllm_process(tensor_parallel=2), "tensor_parallel 2 but worker ranks [0]"),
        (vllm_process(kv_usage=1.5), "kv_usage must stay within 0..1.0"),
    ],
)
def test_an_inconsistent_vllm_block_is_refused_naming_the_process(process: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match="scenario <scenario>") as err:
        parse_scenario(one_gpu(process))
    assert message in str(err.value)


def test_a_mig_server_budgets_from_the_instance_memory() -> None:
    scenario = load_scenario(MIG)
    (qwen,) = [p for p in scenario.processes if p.vllm is not None and p.vllm.model == "Qwen/Qwen2.5-7B-Instruct"]
    budget = scenario.vllm_budget(qwen.pid)
    assert budget is not None
    assert budget.total_gpu_memory == 40 * 10**9  # the 3g.40gb instance, not the 80 GiB GPU
    assert budget.requested == pytest.approx(0.85 * 40 * 10**9)
