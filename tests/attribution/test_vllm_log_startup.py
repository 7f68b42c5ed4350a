"""vLLM start-up logs the first reader missed or misread: 0.10's block count, failed starts, other backends, the
utilization as vLLM prints its arguments, nested process tags, profiling-time overrides, pipeline stages, wrapped
or stripped lines and ``--explain``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from attribution.vllm_log import VllmLogFacts, main, parse_file, parse_log
from common.units import GiB

LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
LEGACY = (
    "vllm_version",
    "weights_bytes",
    "kv_cache_bytes",
    "kv_cache_tokens",
    "num_gpu_blocks",
    "max_concurrency",
    "max_concurrency_tokens",
    "gpu_memory_utilization",
    "total_gpu_memory_bytes",
    "non_torch_bytes",
    "activation_peak_bytes",
    "cuda_graph_bytes",
    "block_size",
)
PREFIX = "(EngineCore_DP0 pid=80) INFO 11-20 10:00:17 [x.py:1] "


def gib(value: float) -> int:
    return round(value * GiB)


def _facts(name: str) -> VllmLogFacts:
    return parse_file(LOGS / name)


def _line_of(name: str, needle: str) -> int:
    """The 1-based number of the first line of a fixture that holds ``needle``."""
    lines = (LOGS / name).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if needle in line)


# --- 0.10's block count ---------------------------------------------------------------------------------


def test_the_0_10_cache_config_info_line_gives_the_block_count() -> None:
    facts = _facts("v1-0.10-cache-config-blocks.log")
    assert facts.num_gpu_blocks == 22128
    assert facts.kv_cache_tokens == 354_048  # 22,128 blocks of 16 tokens


def test_the_cache_config_info_block_count_wins_over_a_worker_block_line() -> None:
    log = (
        "INFO 08-01 10:00:12 [kv_cache_utils.py:1] # GPU blocks: 30000\n"
        "INFO 08-01 10:00:28 [loggers.py:137] Engine 000: vllm cache_config_info with initialization after "
        "num_gpu_blocks is: 29000\n"
    )
    assert parse_log(log).num_gpu_blocks == 29000


# --- start-up failures ------------------------------------------------------------------------------------


def test_a_v1_start_that_does_not_fit_reports_the_failure_and_what_would_fit() -> None:
    facts = _facts("v1-failed-kv-needed.log")
    assert facts.failed_to_start is not None and "does not fit" in facts.failed_to_start
    assert "131,072 tokens" in facts.failed_to_start and "16.00 GiB" in facts.failed_to_start
    assert facts.max_model_len == 131_072
    assert facts.kv_cache_needed_bytes == 16 * GiB
    assert facts.suggested_kv_cache_memory_bytes == 16 * GiB
    assert facts.suggested_max_model_len == 85_248  # vLLM's own estimate
    assert facts.kv_cache_bytes == gib(10.41)
    # the GPU's total memory is not in a V1 log: the shortfall is said in GiB, no fraction invented
    assert facts.suggested_gpu_memory_utilization is None
    assert any("5.59 GiB more" in note and "total memory" in note for note in facts.notes)


def test_a_v0_start_whose_max_model_len_exceeds_the_kv_cache_gets_each_remedy_computed() -> None:
    facts = _facts("v0-failed-max-seq-len.log")
    assert facts.failed_to_start is not None and "49,152" in facts.failed_to_start
    assert facts.max_model_len == 65_536
    # 6 GiB hold 49,152 tokens: 131,072 B a token, so 65,536 tokens need 8 GiB, 2 GiB more than available;
    # 2 GiB of the 79.10 GiB GPU is 0.0253 of utilization above 0.90: 0.93 rounded up.
    assert facts.kv_cache_needed_bytes == 8 * GiB
    assert facts.suggested_kv_cache_memory_bytes == 8 * GiB
    assert facts.suggested_gpu_memory_utilization == 0.93
    assert facts.suggested_max_model_len == 49_152
    assert facts.num_gpu_blocks == 3072


def test_no_memory_for_blocks_is_a_failure_with_the_least_utilization_that_leaves_any() -> None:
    facts = _facts("v0-failed-no-blocks.log")
    assert facts.failed_to_start is not None and "no memory" in facts.failed_to_start
    assert facts.num_gpu_blocks == 0
    assert facts.suggested_gpu_memory_utilization == 0.92  # 0.90 + 0.35 / 23.55, rounded up
    assert facts.suggested_max_model_len is None and facts.suggested_kv_cache_memory_bytes is None
    assert any("bytes per token are not in the log" in note for note in facts.notes)


def test_a_negative_block_count_is_read_as_a_failure() -> None:
    facts = parse_log("INFO 03-01 10:00:12 executor_base.py:111] # cuda blocks: -12, # CPU blocks: 2048\n")
    assert facts.num_gpu_blocks == -12
    assert facts.failed_to_start is not None and "-12" in facts.failed_to_start


def test_the_error_line_alone_is_enough_to_read_the_failure() -> None:
    line = (
        "ValueError: To serve at least one request with the model's max seq len (32768), 4.00 GiB KV cache is "
        "needed, which is larger than the available KV cache memory (3.00 GiB)."
    )
    facts = parse_log(f"Traceback (most recent call last):\n{line}\n")
    assert facts.failed_to_start is not None
    assert facts.kv_cache_needed_bytes == 4 * GiB and facts.kv_cache_bytes == 3 * GiB
    # no estimate printed: 3 GiB at 131,072 B a token hold 24,576 tokens
    assert facts.suggested_max_model_len == 24_576


@pytest.mark.parametrize(
    ("free", "fraction"),
    [("85.92", 0.7), ("58.33-58.44", 0.91)],  # one GPU; the range of several
)
def test_too_little_free_memory_at_start_up_is_a_failure_with_the_utilization_that_fits(
    free: str, fraction: float
) -> None:
    total = "121.69" if free == "85.92" else "63.98"
    line = (
        f"(EngineCore pid=253) ValueError: Free memory on device cuda:0 ({free}/{total} GiB) on startup is less "
        "than desired GPU memory utilization (0.92, 111.95 GiB). Decrease GPU memory utilization or reduce GPU "
        "memory used by other processes."
    )
    facts = parse_log(line)
    assert facts.failed_to_start is not None and "less than the 111.95 GiB" in facts.failed_to_start
    assert facts.gpu_memory_utilization == 0.92
    assert facts.suggested_gpu_memory_utilization == fraction  # what is free, as a fraction, rounded down


def test_a_tp_failure_printed_by_the_engine_core_is_no_extra_rank() -> None:
    log = (
        "(Worker_TP0 pid=301) INFO 10-01 10:00:17 [gpu_worker.py:299] Available KV cache memory: 10.41 GiB\n"
        "(Worker_TP1 pid=302) INFO 10-01 10:00:17 [gpu_worker.py:299] Available KV cache memory: 10.52 GiB\n"
        "(EngineCore_DP0 pid=80) ERROR 10-01 10:00:17 [core.py:708] ValueError: To serve at least one request "
        "with the model's max seq len (131072), 16.00 GiB KV cache is needed, which is larger than the available "
        "KV cache memory (10.41 GiB).\n"
    )
    facts = parse_log(log)
    assert facts.ranks == 2 and facts.failed_to_start is not None
    assert facts.suggested_max_model_len == 85_278  # 10.41 GiB at 131,072 B a token, in whole tokens


def test_a_utilization_above_one_is_never_suggested() -> None:
    log = (
        "INFO 05-01 10:00:12 [worker.py:1] the current vLLM instance can use total_gpu_memory (23.55GiB) x "
        "gpu_memory_utilization (0.90) = 21.19GiB\n"
        "INFO 05-01 10:00:12 [worker.py:1] model weights take 14.99GiB; non_torch_memory takes 0.10GiB; PyTorch "
        "activation peak memory takes 1.10GiB; the rest of the memory reserved for KV Cache is 5.00GiB.\n"
        "ValueError: The model's max seq len (131072) is larger than the maximum number of tokens that can be "
        "stored in KV cache (40960). Try increasing `gpu_memory_utilization` or decreasing `max_model_len`.\n"
    )
    facts = parse_log(log)
    assert facts.failed_to_start is not None
    assert facts.suggested_gpu_memory_utilization is None
    assert any("no --gpu-memory-utilization fits" in note for note in facts.notes)
    assert facts.suggested_max_model_len == 40_960


def test_a_successful_start_has_no_failure_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(LOGS / "v1-0.11-plus.log"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failed_to_start"] is None and out["suggested_gpu_memory_utilization"] is None
    assert "sources" not in out  # only with --explain


def test_the_table_shows_a_failed_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(LOGS / "v0-failed-max-seq-len.log")]) == 0
    out = capsys.readouterr().out
    assert "FAILED TO START" in out and "0.93" in out and "49,152" in out


# --- other backends --------------------------------------------------------------------------------------


def test_the_xpu_kv_cache_memory_line_gives_the_kv_bytes() -> None:
    facts = _facts("xpu-kv-cache-memory.log")
    assert facts.kv_cache_bytes == 12 * GiB
    assert facts.kv_cache_tokens == 98_304
    assert any("--kv-cache-memory-bytes" in note for note in facts.notes)


@pytest.mark.parametrize(
    ("line", "blocks"),
    [
        ("INFO 03-01 10:00:12 executor_base.py:111] # GPU blocks: 4000, # CPU blocks: 512", 4000),  # ROCm, V0
        ("INFO 03-01 10:00:12 executor_base.py:111] # XPU blocks: 4100, # CPU blocks: 512", 4100),
        ("INFO 03-01 10:00:12 executor_base.py:111] # HPU blocks: 4200, # CPU blocks: 512", 4200),
        ("INFO 03-01 10:00:12 executor_base.py:111] # TPU blocks: 4300, # CPU blocks: 512", 4300),
        ("INFO 03-01 10:00:12 executor_base.py:111] # CPU blocks: 4400", 4400),  # the CPU build
    ],
)
def test_each_devices_block_line_is_read(line: str, blocks: int) -> None:
    assert parse_log(line).num_gpu_blocks == blocks


# --- the utilization as vLLM prints it -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "utilization"),
    [
        ("DEBUG 03-12 03:19:03 launcher.py:59] python3 -m vllm.entrypoints.openai.api_server --model m "
         "--gpu-memory-utilization=0.85 --port 8000", 0.85),
        ("INFO 03-12 03:19:03 [cli_args.py:1] args: --model m --gpu-memory-utilization 0.87 --enforce-eager", 0.87),
        ("INFO 03-12 03:19:03 [utils.py:1] non-default args: {'model': 'm', 'gpu_memory_utilization': 0.85}", 0.85),
        ("INFO 03-12 03:19:03 [config.py:1] CacheConfig(block_size=16, gpu_memory_utilization=0.86)", 0.86),
        ("INFO 03-08 16:44:29 [gpu_worker.py:490] In v0.19, CUDA graph memory profiling will be enabled by default "
         "(VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1). To try it now, set VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1 "
         "and increase --gpu-memory-utilization from 0.9000 to 0.9690 to maintain the same effective KV cache size.",
         0.9),
        ("INFO 05-14 00:04:17 [gpu_worker.py:475] CUDA graph memory profiling is enabled. The current "
         "--gpu-memory-utilization=0.8200 is equivalent to --gpu-memory-utilization=0.8048 without CUDA graph "
         "memory profiling. To maintain the same effective KV cache size as before, increase "
         "--gpu-memory-utilization to 0.8352.", 0.82),
    ],
)  # fmt: skip
def test_the_utilization_is_read_as_vllm_prints_its_arguments(line: str, utilization: float) -> None:
    facts = parse_log(f"{line}\n{PREFIX}Available KV cache memory: 2.00 GiB\n")
    assert facts.gpu_memory_utilization == utilization


def test_vllms_suggested_utilization_is_a_note_not_the_utilization() -> None:
    line = "increase --gpu-memory-utilization from 0.9000 to 0.9690 to maintain the same effective KV cache size."
    facts = parse_log(f"{PREFIX}{line}\n{PREFIX}Available KV cache memory: 2.00 GiB\n")
    assert facts.gpu_memory_utilization == 0.9
    assert any("0.969" in note for note in facts.notes)


# --- nested process tags -----------------------------------------------------------------------------------


def test_nested_tags_tell_each_worker_apart_and_the_smallest_kv_memory_wins() -> None:
    facts = _facts("tp2-v1-ray-nested.log")
    assert facts.ranks == 2
    assert facts.kv_cache_bytes == gib(21.40)  # not the last worker's 22.75
    assert facts.cuda_graph_bytes == gib(0.74)
    assert facts.limiting_worker is not None and "RayWorkerWrapper pid=201" in facts.limiting_worker
    assert [w["available_kv_cache_bytes"] for w in facts.workers] == [gib(21.40), gib(22.75)]
    assert any("the smallest" in note for note in facts.notes)


def test_the_engine_core_alone_and_its_ray_worker_are_two_processes() -> None:
    log = (
        "(EngineCore_0 pid=1) INFO 08-20 10:00:14 [a.py:1] Model loading took 7.5000 GiB and 6.1 seconds\n"
        "(EngineCore_0 pid=1) (RayWorkerWrapper pid=2, ip=10.0.0.2) INFO 08-20 10:00:14 [a.py:1] Model loading "
        "took 7.5000 GiB and 6.1 seconds\n"
    )
    facts = parse_log(log)
    assert facts.ranks == 2
    assert {w["worker"] for w in facts.workers} == {
        "EngineCore_0 pid=1",
        "EngineCore_0 pid=1 > RayWorkerWrapper pid=2 ip=10.0.0.2",
    }


# --- profiling-time overrides ----------------------------------------------------------------------------


def test_an_override_printed_while_graphs_are_profiled_is_not_the_block_count() -> None:
    log = (
        f"{PREFIX}non-default args: {{'block_size': 16, 'num_gpu_blocks_override': 512}}\n"
        f"{PREFIX}Overriding num_gpu_blocks=0 with num_gpu_blocks_override=512\n"
        f"{PREFIX}Estimated CUDA graph memory: 0.61 GiB total\n"
        f"{PREFIX}Available KV cache memory: 58.42 GiB\n"
        f"{PREFIX}GPU KV cache size: 478,576 tokens\n"
    )
    facts = parse_log(log)
    assert facts.num_gpu_blocks == 478_576 // 16
    assert facts.kv_cache_bytes == gib(58.42)
    assert any("profiled" in note for note in facts.notes)


def test_the_real_override_after_the_budget_still_counts() -> None:
    log = (
        f"{PREFIX}Overriding num_gpu_blocks=0 with num_gpu_blocks_override=512\n"
        f"{PREFIX}Available KV cache memory: 58.42 GiB\n"
        f"{PREFIX}Overriding num_gpu_blocks=29911 with num_gpu_blocks_override=512\n"
    )
    facts = parse_log(log)
    assert facts.num_gpu_blocks == 512
    assert facts.kv_cache_bytes == round(512 * gib(58.42) / 29911)


# --- pipeline parallelism ---------------------------------------------------------------------------------


def test_the_stage_with_the_fewest_tokens_sets_the_count_even_with_more_memory() -> None:
    facts = _facts("pp2-v1-stages.log")
    assert facts.kv_cache_tokens == 314_560
    assert facts.limiting_worker is not None and "PP1" in facts.limiting_worker
    note = next(note for note in facts.notes if "sets the block count" in note)
    assert "stage PP0 has less memory" in note and "fewer bytes per token" in note
    # stage 1 holds all of its 24 GiB: the count is its own; stage 0 holds less than its 20 GiB
    assert facts.kv_cache_bytes == 24 * GiB
    assert [(w["stage"], w["kv_cache_tokens"]) for w in facts.workers] == [(0, 436_896), (1, 314_560)]


def test_the_stage_with_the_least_memory_is_named_when_it_also_fits_the_fewest() -> None:
    text = (LOGS / "pp2-v1-stages.log").read_text().replace("24.00 GiB", "14.00 GiB")
    text = text.replace("314,560 tokens", "183,488 tokens")
    facts = parse_log(text)
    assert facts.limiting_worker is not None and "PP1" in facts.limiting_worker
    assert any("and has the least available memory" in note for note in facts.notes)


def test_stages_whose_counts_the_log_does_not_tie_to_them_are_not_guessed() -> None:
    lines = (LOGS / "pp2-v1-stages.log").read_text().splitlines()
    text = "\n".join(line for line in lines if "436,896" not in line)  # one KV size for two stages
    facts = parse_log(text)
    assert facts.limiting_worker is None
    assert any("which one it is is unknown" in note for note in facts.notes)


# --- wrapped and stripped lines --------------------------------------------------------------------------

_PREFIX_RE = re.compile(r"^(?:\([^)]*\) )*(?:INFO|DEBUG|WARNING) \d\d-\d\d [\d:]+ \[?[\w.]+:\d+\] ")


def _wrap(text: str, width: int) -> str:
    out: list[str] = []
    for line in text.splitlines():
        out += [line[i : i + width] for i in range(0, max(len(line), 1), width)]
    return "\n".join(out)


@pytest.mark.parametrize(
    "name",
    ["v0.7.3-v0-budget.log", "v1-0.11-plus.log", "v0.6.4-profiling-results.log", "tp2-v1-blocks-interleaved.log"],
)
@pytest.mark.parametrize("width", [37, 60, 80, 100, 133])
def test_a_log_wrapped_at_a_fixed_width_reads_the_same_figures(name: str, width: int) -> None:
    original = _facts(name)
    wrapped = parse_log(_wrap((LOGS / name).read_text(), width))
    assert [getattr(wrapped, key) for key in (*LEGACY, "ranks")] == [
        getattr(original, key) for key in (*LEGACY, "ranks")
    ], width


def test_a_figure_cut_short_is_lost_alone() -> None:
    name = "v0.7.3-v0-budget.log"
    text = (LOGS / name).read_text().replace("per request: 54.31x", "per request: 5")
    original, cut = _facts(name), parse_log(text)
    assert cut.max_concurrency is None and cut.max_concurrency_tokens is None  # the one figure of that line
    others = [key for key in LEGACY if not key.startswith("max_concurrency")]
    assert [getattr(cut, key) for key in others] == [getattr(original, key) for key in others]


@pytest.mark.parametrize("name", ["v0.7.3-v0-budget.log", "v1-0.11-plus.log", "v1-0.10-two-line-kv.log"])
def test_a_log_with_its_prefixes_stripped_reads_the_same_figures(name: str) -> None:
    text = "\n".join(_PREFIX_RE.sub("", line) for line in (LOGS / name).read_text().splitlines())
    original, stripped = _facts(name), parse_log(text)
    assert [getattr(stripped, key) for key in LEGACY] == [getattr(original, key) for key in LEGACY]


def test_a_wrapped_word_is_joined_with_a_space() -> None:
    log = (
        "INFO 01-10 10:00:12 worker.py:241] model weights take 7.50GiB; non_torch_memory takes 1.35GiB; PyTorch "
        "activation peak memory takes 1.24GiB; the rest of the memory reserved for KV Cache is\n"
        "61.10GiB.\n"
    )
    facts = parse_log(log)
    assert facts.kv_cache_bytes == gib(61.10) and facts.non_torch_bytes == gib(1.35)


# --- --explain ---------------------------------------------------------------------------------------------


def test_explain_gives_each_figure_its_line_per_worker(capsys: pytest.CaptureFixture[str]) -> None:
    name = "tp2-v1-worker-tags.log"
    assert main([str(LOGS / name), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "  Worker_TP1 pid=302:\n" in out  # a heading per worker, its table below
    tp1 = out.split("  Worker_TP1 pid=302:\n", 1)[1].split("\n  Worker", 1)[0].split("\n  EngineCore", 1)[0]
    available = _line_of(name, "(Worker_TP1 pid=302) INFO 11-20 10:00:17")
    assert re.search(rf"^\s+{available}\s+available_kv\s+21\.40 GiB$", tp1, re.MULTILINE), tp1
    assert "22.75 GiB" not in tp1  # the other worker's figure is under its own heading


def test_explain_in_json_lists_sources_and_each_worker_keeps_its_lines(capsys: pytest.CaptureFixture[str]) -> None:
    name = "tp2-v1-worker-tags.log"
    assert main([str(LOGS / name), "--json", "--explain"]) == 0
    out = json.loads(capsys.readouterr().out)
    tokens = [s for s in out["sources"] if s["figure"] == "kv_cache_tokens"]
    assert tokens == [
        {
            "figure": "kv_cache_tokens",
            "worker": "EngineCore_DP0 pid=80",
            "line": _line_of(name, "GPU KV cache size"),
            "value": 350_608,
        }
    ]
    by_worker = {w["worker"]: w for w in out["workers"]}
    assert by_worker["Worker_TP0 pid=301"]["lines"]["available_kv_cache_bytes"] == _line_of(name, "22.75 GiB")
    assert by_worker["Worker_TP1 pid=302"]["available_kv_cache_bytes"] == gib(21.40)
