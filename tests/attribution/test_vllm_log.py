"""vLLM's start-up log: the real CPU server's log, constructed logs in every documented format and prefix."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.vllm_log import LINE_CAP, VllmLogError, VllmLogFacts, main, parse_file, parse_log
from common.units import GiB, MiB
from tests.conftest import VLLM_FIXTURES

LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
REAL = VLLM_FIXTURES


def gib(value: float) -> int:
    return round(value * GiB)


@pytest.fixture
def serve_log() -> Path:
    return REAL / "serve.log"


def _facts(name: str) -> VllmLogFacts:
    return parse_file(LOGS / name)


def _without_notes(facts: VllmLogFacts) -> dict[str, Any]:
    """The figures every version of the JSON had (the newer fields have tests of their own)."""
    out = facts.to_json()
    return {key: out[key] for key in NOTHING}


NOTHING: dict[str, Any] = {
    "vllm_version": None,
    "weights_bytes": None,
    "kv_cache_bytes": None,
    "kv_cache_tokens": None,
    "num_gpu_blocks": None,
    "max_concurrency": None,
    "max_concurrency_tokens": None,
    "gpu_memory_utilization": None,
    "total_gpu_memory_bytes": None,
    "non_torch_bytes": None,
    "activation_peak_bytes": None,
    "cuda_graph_bytes": None,
    "block_size": None,
    "ranks": 1,
}


# --- the real log ------------------------------------------------------------------------------------


def test_the_real_cpu_server_log_gives_every_figure_it_holds(serve_log: Path) -> None:
    facts = parse_file(serve_log)
    assert _without_notes(facts) == {
        **NOTHING,
        "vllm_version": "0.32.0",  # the banner and "Initializing a V1 LLM engine (v0.32.0)"
        "kv_cache_bytes": GiB,  # "Explicitly set (1.0/9.96) GiB for KV cache on node 0."
        "kv_cache_tokens": 1_048_576,  # "CPU KV cache size: 1,048,576 tokens"
        "max_concurrency": 1024.0,
        "max_concurrency_tokens": 1024,
    }
    assert any("CPU build" in note for note in facts.notes)


def test_the_real_log_agrees_with_the_model_config_at_1024_bytes_per_token(serve_log: Path) -> None:
    facts = parse_log(serve_log.read_text(), str(serve_log))
    assert facts.kv_cache_bytes is not None and facts.kv_cache_tokens is not None
    assert facts.kv_cache_bytes // facts.kv_cache_tokens == 1024


def test_the_real_log_lacks_weights_and_budget_so_they_are_null_in_json(serve_log: Path) -> None:
    out = json.loads(json.dumps(parse_file(serve_log).to_json()))
    for name in ("weights_bytes", "num_gpu_blocks", "gpu_memory_utilization", "total_gpu_memory_bytes", "block_size"):
        assert out[name] is None


# --- one constructed log per documented format ----------------------------------------------------------

EXPECTED: dict[str, dict[str, Any]] = {
    "v0.4-gpu-blocks.log": {
        "vllm_version": "0.4.0.post1",
        "weights_bytes": gib(12.5523),
        "num_gpu_blocks": 7406,
        "block_size": 16,
        "kv_cache_tokens": 7406 * 16,
        "gpu_memory_utilization": 0.9,
    },
    "v0.6.4-profiling-results.log": {
        "vllm_version": "0.6.4",
        "weights_bytes": gib(14.9888),
        "kv_cache_bytes": gib(54.31),
        "num_gpu_blocks": 27806,
        "max_concurrency": 54.31,
        "max_concurrency_tokens": 8192,
        "gpu_memory_utilization": 0.9,
        "total_gpu_memory_bytes": gib(79.10),
        "non_torch_bytes": gib(0.65),
        "activation_peak_bytes": gib(16.23) - gib(14.9888),  # peak_torch_memory includes the weights
        "cuda_graph_bytes": gib(0.53),
    },
    "v0.7.3-v0-budget.log": {
        "vllm_version": "0.7.3",
        "weights_bytes": gib(14.9888),  # the 4-decimal "took" line, not the budget's 14.99
        "kv_cache_bytes": gib(54.31),
        "num_gpu_blocks": 27806,
        "max_concurrency": 54.31,
        "max_concurrency_tokens": 8192,
        "gpu_memory_utilization": 0.9,
        "total_gpu_memory_bytes": gib(79.10),
        "non_torch_bytes": gib(0.65),
        "activation_peak_bytes": gib(1.24),
        "cuda_graph_bytes": gib(0.53),
    },
    "v0.8.5-v0-cuda-blocks.log": {
        "vllm_version": "0.8.5",
        "weights_bytes": gib(14.2487),
        "kv_cache_bytes": gib(51.10),
        "num_gpu_blocks": 29901,
        "block_size": 32,
        "kv_cache_tokens": 29901 * 32,
        "max_concurrency": 29.2,
        "max_concurrency_tokens": 32768,
        "gpu_memory_utilization": 0.85,
        "total_gpu_memory_bytes": gib(79.10),
        "non_torch_bytes": gib(0.49),
        "activation_peak_bytes": gib(1.40),
    },
    "v1-0.10-two-line-kv.log": {
        "vllm_version": "0.10.1",
        "weights_bytes": gib(14.9889),
        "kv_cache_bytes": gib(43.22),
        "kv_cache_tokens": 354_048,
        "max_concurrency": 43.22,
        "max_concurrency_tokens": 8192,
        "non_torch_bytes": gib(0.34),  # DEBUG "non-torch forward increase memory"
        "activation_peak_bytes": gib(1.42),  # DEBUG "torch peak memory increase"
        "cuda_graph_bytes": gib(0.49),
    },
    "v1-0.11-plus.log": {
        "vllm_version": "0.11.0",
        "weights_bytes": gib(14.9889),
        "kv_cache_bytes": gib(58.42),
        "kv_cache_tokens": 478_576,
        "num_gpu_blocks": 478_576 // 16,
        "block_size": 16,
        "max_concurrency": 3.65,
        "max_concurrency_tokens": 131_072,
        "gpu_memory_utilization": 0.95,
        "non_torch_bytes": gib(0.87),
        "activation_peak_bytes": gib(1.31),
        "cuda_graph_bytes": gib(0.57),  # the pool's actual size beats "took 0.58" and the 0.61 estimate
    },
    "kubernetes-cri.log": {
        "vllm_version": "0.12.0",
        "weights_bytes": gib(15.2346),
        "kv_cache_bytes": gib(55.07),
        "kv_cache_tokens": 451_136,  # the line split into CRI partial (P) parts is joined
        "max_concurrency": 13.77,
        "max_concurrency_tokens": 32_768,
        "cuda_graph_bytes": gib(0.51),
    },
    "structured-logfmt.log": {
        "vllm_version": "0.8.4",
        "weights_bytes": gib(4.6120),
        "kv_cache_bytes": gib(13.75),
        "num_gpu_blocks": 16020,
        "block_size": 16,
        "kv_cache_tokens": 16020 * 16,
        "max_concurrency": 62.58,
        "max_concurrency_tokens": 4096,
        "gpu_memory_utilization": 0.9,
        "total_gpu_memory_bytes": gib(22.05),
        "non_torch_bytes": gib(0.09),
        "activation_peak_bytes": gib(1.40),
    },
    "compose-ansi-tp2.log": {
        "vllm_version": "0.7.3",
        "weights_bytes": gib(7.4951),
        "kv_cache_bytes": gib(31.26),
        "num_gpu_blocks": 32010,
        "max_concurrency": 62.52,
        "max_concurrency_tokens": 8192,
        "gpu_memory_utilization": 0.92,
        "total_gpu_memory_bytes": gib(44.53),  # ANSI bold inside the parentheses is stripped
        "non_torch_bytes": gib(1.21),
        "activation_peak_bytes": gib(0.98),
        "ranks": 2,
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_documented_format_gives_its_figures_and_nothing_else(name: str) -> None:
    assert _without_notes(_facts(name)) == {**NOTHING, **EXPECTED[name]}


def test_reading_a_file_and_reading_its_text_agree() -> None:
    for path in LOGS.glob("*.log"):
        assert parse_file(path) == parse_log(path.read_text(), str(path)), path


def test_every_constructed_log_says_it_was_constructed() -> None:
    for path in LOGS.glob("*.log"):
        assert "Constructed, not captured" in path.read_text().splitlines()[0], path


def test_a_field_the_log_lacks_is_none_and_null_in_json_never_zero() -> None:
    facts = _facts("v0.4-gpu-blocks.log")
    assert facts.kv_cache_bytes is None and facts.cuda_graph_bytes is None  # "Graph capturing finished in 5 secs."
    out = json.loads(json.dumps(facts.to_json()))
    assert out["kv_cache_bytes"] is None and out["max_concurrency"] is None and out["non_torch_bytes"] is None
    assert 0 not in (v for k, v in out.items() if k != "ranks")


def test_derived_block_and_token_counts_say_so() -> None:
    assert "kv_cache_tokens = num_gpu_blocks x block_size" in _facts("v0.4-gpu-blocks.log").notes
    assert "num_gpu_blocks = kv_cache_tokens / block_size" in _facts("v1-0.11-plus.log").notes


def test_overridden_blocks_give_the_kv_bytes_of_the_override() -> None:
    facts = _facts("v1-override.log")
    assert facts.num_gpu_blocks == 2048 and facts.kv_cache_tokens == 32_768
    # 58.42 GiB held 29,911 blocks of 2 MiB; 2,048 of them are 4 GiB (to the log's 0.01 GiB rounding).
    assert facts.kv_cache_bytes == pytest.approx(2048 * 2 * MiB, rel=1e-4)
    assert any("overridden (29911 -> 2048)" in note for note in facts.notes)


# --- tensor parallelism -------------------------------------------------------------------------------


def test_interleaved_tp2_workers_take_the_minimum_block_count_and_say_ranks_disagree() -> None:
    facts = _facts("tp2-v1-blocks-interleaved.log")
    assert facts.ranks == 2
    assert facts.num_gpu_blocks == 9472
    assert facts.max_concurrency == 9.25
    # 20.00 GiB held 10,240 blocks: 2 MiB a block; the smaller rank's 9,472 blocks are 18.5 GiB.
    assert facts.kv_cache_bytes == 9472 * 2 * MiB
    assert any(note.startswith("block counts differ by rank (9472-10240)") for note in facts.notes)
    assert any("Available KV cache memory differs by rank (18.50-20.00 GiB)" in note for note in facts.notes)
    assert facts.non_torch_bytes == gib(3.12)
    assert any(note.startswith("non-torch memory differs by rank") for note in facts.notes)


def test_tp2_over_ray_tells_the_driver_from_the_tagged_worker() -> None:
    facts = _facts("tp2-v0-ray.log")
    assert facts.ranks == 2
    assert facts.num_gpu_blocks == 62289
    assert facts.kv_cache_bytes == gib(60.83)  # the smaller rank sets the block count
    assert facts.weights_bytes == gib(7.4951)
    assert any("kv_cache_bytes is the smallest" in note for note in facts.notes)


def test_tp2_with_worker_tp_tags_takes_the_smaller_available_kv_memory() -> None:
    facts = _facts("tp2-v1-worker-tags.log")
    assert (facts.ranks, facts.kv_cache_tokens, facts.kv_cache_bytes) == (2, 350_608, gib(21.40))
    assert facts.cuda_graph_bytes == gib(0.70)


def test_token_counts_per_rank_give_bytes_per_token_from_the_larger_rank() -> None:
    log = "\n".join(
        [
            "(VllmWorker rank=0 pid=11) INFO 08-01 10:00:15 [gpu_worker.py:1] Available KV cache memory: 20.00 GiB",
            "(VllmWorker rank=1 pid=12) INFO 08-01 10:00:15 [gpu_worker.py:1] Available KV cache memory: 18.50 GiB",
            "(EngineCore_0 pid=10) INFO 08-01 10:00:15 [kv_cache_utils.py:1] GPU KV cache size: 327,680 tokens",
            "(EngineCore_0 pid=10) INFO 08-01 10:00:15 [kv_cache_utils.py:1] GPU KV cache size: 303,104 tokens",
        ]
    )
    facts = parse_log(log)
    assert facts.kv_cache_tokens == 303_104
    assert facts.kv_cache_bytes == 303_104 * 65_536
    assert any("KV cache size differs by rank (303,104-327,680 tokens)" in note for note in facts.notes)


# --- prefixes -------------------------------------------------------------------------------------------

LINE = "GPU KV cache size: 1,234,567 tokens"
ESC = "\x1b"


@pytest.mark.parametrize(
    "line",
    [
        LINE,
        f"INFO 11-21 10:00:00 kv_cache_utils.py:12] {LINE}",
        f"INFO 11-21 10:00:00 [kv_cache_utils.py:12] {LINE}",
        f"(VllmWorkerProcess pid=77) INFO 11-21 10:00:00 kv_cache_utils.py:12] {LINE}",
        f"(RayWorkerWrapper pid=77, ip=10.0.0.3) INFO 11-21 10:00:00 kv_cache_utils.py:12] {LINE}",
        f"(EngineCore_DP0 pid=77) INFO 11-21 10:00:00 [kv_cache_utils.py:12] {LINE}",
        f"(Worker_TP1 pid=77) INFO 11-21 10:00:00 [kv_cache_utils.py:12] {LINE}",
        f"{ESC}[32mINFO{ESC}[0m 11-21 10:00:00 [x.py:12] GPU KV cache size: {ESC}[1m1,234,567{ESC}[0m tokens",
        f"svc-1  | INFO 11-21 10:00:00 [kv_cache_utils.py:12] {LINE}",
        f"svc-1  | 2026-11-21T10:00:00.123456789Z (EngineCore_DP0 pid=7) INFO 11-21 10:00:00 [x.py:1] {LINE}",
        f"2026-11-21T10:00:00.123Z stdout F (EngineCore_DP0 pid=7) INFO 11-21 10:00:00 [x.py:1] {LINE}",
        f"2026-11-21T10:00:00.123+01:00 stderr F INFO 11-21 10:00:00 [x.py:1] {LINE}",
        f'ts=2026-11-21T10:00:00Z level=INFO logger=vllm msg="{LINE}"',
        f'level=INFO msg="INFO 11-21 10:00:00 [kv_cache_utils.py:12] {LINE}" pid=7',
        json.dumps({"level": "INFO", "pid": 7, "msg": LINE}),
        json.dumps({"severity": "INFO", "message": f"(EngineCore_DP0 pid=7) INFO 11-21 10:00:00 [x.py:1] {LINE}"}),
        f"INFO 11-21 10:00:00 [kv_cache_utils.py:12] {LINE}\r",
    ],
)
def test_the_kv_token_line_is_read_under_every_prefix(line: str) -> None:
    assert parse_log(f"unrelated line\n{line}\nanother").kv_cache_tokens == 1_234_567


def test_cri_partial_lines_are_joined_per_stream() -> None:
    log = (
        "2026-11-21T10:00:17.001Z stdout P INFO 11-21 10:00:17 [kv_cache_utils.py:1] GPU KV cache si\n"
        "2026-11-21T10:00:17.002Z stderr F WARNING 11-21 10:00:17 [x.py:1] Available KV cache memory: 2.00 GiB\n"
        "2026-11-21T10:00:17.003Z stdout P ze: 8,\n"
        "2026-11-21T10:00:17.004Z stdout F 192 tokens\n"
    )
    facts = parse_log(log)
    assert (facts.kv_cache_tokens, facts.kv_cache_bytes) == (8192, 2 * GiB)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("", "(VllmWorkerProcess pid=12) "),
        ("(RayWorkerWrapper pid=5, ip=10.0.0.1) ", "(RayWorkerWrapper pid=5, ip=10.0.0.2) "),
        ("(Worker_TP0 pid=301) ", "(Worker_TP1 pid=302) "),
        ("(VllmWorker rank=0 pid=201) ", "(VllmWorker rank=1 pid=202) "),
        ("svc-a  | ", "svc-b  | "),
    ],
)
def test_each_process_that_prints_memory_lines_counts_as_a_rank(first: str, second: str) -> None:
    line = "INFO 11-21 10:00:00 [gpu_model_runner.py:1] Model loading took 7.5000 GiB memory and 5.1 seconds"
    facts = parse_log(f"{first}{line}\n{second}{line}\n{first}{line}")
    assert facts.ranks == 2
    assert facts.weights_bytes == gib(7.5)


def test_two_tags_of_one_process_are_one_rank() -> None:
    log = (
        "(VllmWorker-0 pid=9) INFO 11-21 10:00:00 [a.py:1] Model loading took 1.0000 GiB memory and 1.0 seconds\n"
        "(Worker pid=9) INFO 11-21 10:00:00 [b.py:1] Available KV cache memory: 2.00 GiB\n"
    )
    assert parse_log(log).ranks == 1


def test_the_same_number_in_a_tag_free_and_an_ansi_log_reads_the_same() -> None:
    plain = (LOGS / "v0.7.3-v0-budget.log").read_text()
    coloured = plain.replace("INFO", f"{ESC}[32mINFO{ESC}[0m").replace("GiB", f"{ESC}[1mGiB{ESC}[0m")
    assert parse_log(coloured) == parse_log(plain)


def test_a_structured_message_is_unquoted_and_unescaped() -> None:
    log = 'level=INFO msg="non-default args: {\\"block_size\\": 32} \\\\ done"\nlevel=INFO msg="# GPU blocks: 10"\n'
    facts = parse_log(log)
    assert (facts.block_size, facts.num_gpu_blocks, facts.kv_cache_tokens) == (32, 10, 320)


# --- versions, counts and builds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ("INFO 06-01 10:00:00 api_server.py:1] vLLM API server version 0.5.0.post1", "0.5.0.post1"),
        (
            "INFO 06-01 10:00:00 [api_server.py:1] Starting vLLM API server on http://0.0.0.0:8000, version 0.9.1",
            "0.9.1",
        ),
        ("INFO 06-01 10:00:00 [core.py:1] Initializing a V1 LLM engine (v0.10.0) with config: model='m'", "0.10.0"),
        ("INFO 06-01 10:00:00 llm_engine.py:1] Initializing an LLM engine (v0.3.3) with config: model='m'", "0.3.3"),
        ("level=INFO vllm_version=0.9.2 msg=starting", "0.9.2"),
        (json.dumps({"msg": "starting", "vllm_version": "0.13.1"}), "0.13.1"),
        ("(APIServer pid=1) INFO 11-21 08:22:38 [api_utils.py:347]  ▄▄ ▄█ █  version 0.32.0", "0.32.0"),
    ],
)
def test_the_version_is_read_from_each_style_of_line(line: str, version: str) -> None:
    facts = parse_log(f"{line}\nINFO 06-01 10:00:01 [x.py:1] # GPU blocks: 100, # CPU blocks: 10")
    assert facts.vllm_version == version


def test_a_cuda_version_line_is_not_the_vllm_version() -> None:
    assert parse_log("CUDA version 12.4\n# GPU blocks: 100, # CPU blocks: 10").vllm_version is None


def test_the_cpu_builds_block_and_token_lines_count_as_the_kv_cache() -> None:
    assert parse_log("INFO 01-01 10:00:00 cpu_executor.py:1] # CPU blocks: 2730").num_gpu_blocks == 2730
    assert parse_log("INFO 01-01 10:00:00 [x.py:1] CPU KV cache size: 65,536 tokens").kv_cache_tokens == 65_536
    # The second half of the GPU line is swap space, not the KV cache.
    assert parse_log("# GPU blocks: 900, # CPU blocks: 2730").num_gpu_blocks == 900


def test_the_cpu_builds_auto_set_line_gives_the_kv_bytes() -> None:
    line = (
        "(Worker pid=19850) INFO 06-13 20:03:57 [cpu_worker.py:235] Auto set (1.48/18.0) GiB for KV cache on node 0,"
        " with 5.4 GiB requested memory for the worker. 3.92 GiB memory was consumed by non-kv usages."
    )
    facts = parse_log(line)
    assert facts.kv_cache_bytes == gib(1.48) and facts.total_gpu_memory_bytes is None


def test_a_negative_available_kv_memory_is_kept_and_explained() -> None:
    facts = parse_log("INFO 11-21 10:00:00 [gpu_worker.py:1] Available KV cache memory: -1.25 GiB")
    assert facts.kv_cache_bytes == -gib(1.25)
    assert any("negative" in note for note in facts.notes)


# --- errors and the command line ------------------------------------------------------------------------


def test_a_log_without_any_memory_line_is_an_error_naming_the_source() -> None:
    with pytest.raises(VllmLogError, match=r"^pod/vllm-0: no vLLM memory line"):
        parse_log("INFO 11-21 10:00:00 [api_server.py:1] vLLM API server version 0.9.0\nhello", "pod/vllm-0")


def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.log"
    with pytest.raises(VllmLogError, match=r"nope\.log: cannot read"):
        parse_file(missing)


def test_the_command_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(LOGS / "v0.7.3-v0-budget.log")]) == 0
    out = capsys.readouterr().out
    assert "0.7.3" in out and "54.31 GiB" in out and "27,806" in out


def test_the_command_prints_json_with_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(LOGS / "v0.4-gpu-blocks.log"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_gpu_blocks"] == 7406 and out["kv_cache_bytes"] is None and out["source"].endswith(".log")


def test_the_command_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("nothing about memory\n")
    assert main([str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    assert main([str(tmp_path / "absent.log")]) == 2
    assert "absent.log" in capsys.readouterr().err


def test_the_json_flag_can_come_from_gpuattr_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUATTR_JSON", "true")
    assert main([str(LOGS / "v0.4-gpu-blocks.log")]) == 0
    assert json.loads(capsys.readouterr().out)["num_gpu_blocks"] == 7406
    monkeypatch.setenv("GPUATTR_JSON", "false")
    assert main([str(LOGS / "v0.4-gpu-blocks.log")]) == 0
    assert capsys.readouterr().out.startswith("vLLM memory facts from ")


def test_a_bad_environment_value_is_one_line_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUATTR_JSON", "maybe")
    assert main([str(LOGS / "v0.4-gpu-blocks.log")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["gpuattr vllm-log: error: GPUATTR_JSON: expected true or false, got 'maybe'"]


# --- size -----------------------------------------------------------------------------------------------

MEMORY_LINE = "(EngineCore_DP0 pid=7) INFO 11-21 10:00:17 [kv_cache_utils.py:1] GPU KV cache size: 8,192 tokens\n"


def test_a_10_mb_line_is_examined_only_up_to_the_cap() -> None:
    text = "x" * (10 * MiB) + "\n" + MEMORY_LINE + "GPU KV cache size: 1 tokens".rjust(LINE_CAP + 100, "y")
    tracemalloc.start()
    try:
        facts = parse_log(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert facts.kv_cache_tokens == 8192  # the line past the cap is not read
    assert peak < 2 * MiB  # a few capped lines, never a copy of the 10 MB one


def test_a_10_mb_line_in_a_file_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "long.log"
    path.write_text("GPU KV cache size: 1 tokens " + "z" * (10 * MiB) + "\n" + MEMORY_LINE)
    tracemalloc.start()
    try:
        facts = parse_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert facts.kv_cache_tokens == 1  # the start of the long line is read, then the min with 8,192
    assert peak < 2 * MiB


def test_a_100_mb_log_is_scanned_line_by_line() -> None:
    noise = (
        "(APIServer pid=1) INFO 11-21 08:25:04 [loggers.py:335] Engine 000: Avg prompt throughput: 3.0 tokens/s, "
        "Running: 0 reqs, Waiting: 0 reqs, GPU KV cache usage: 0.0%\n"
        'INFO:     127.0.0.1:38710 - "POST /v1/completions HTTP/1.1" 200 OK\n'
    )
    text = MEMORY_LINE + noise * (100 * MiB // len(noise)) + MEMORY_LINE.replace("8,192", "4,096")
    assert len(text) >= 100 * MiB
    assert parse_log(text).kv_cache_tokens == 4096


# --- anything at all ------------------------------------------------------------------------------------

FRAGMENTS = [
    "Model loading took ",
    "Loading model weights took ",
    " GiB",
    "GB",
    "# GPU blocks: ",
    "# CPU blocks: ",
    ", # CPU blocks: ",
    "Available KV cache memory: ",
    "GPU KV cache size: ",
    " tokens",
    "Maximum concurrency for ",
    " tokens per request: ",
    "x",
    "Overriding num_gpu_blocks=",
    " with num_gpu_blocks_override=",
    "Memory profiling results: ",
    "peak_torch_memory=",
    "total_gpu_memory (",
    ") x gpu_memory_utilization (",
    "reserved for KV Cache is ",
    "Explicitly set (",
    "/",
    ") GiB for KV cache",
    "Graph capturing finished in ",
    " secs, took ",
    "(Worker_TP1 pid=",
    ")",
    'level=INFO msg="',
    '"',
    "\\",
    "{",
    "2026-11-21T10:00:00Z stdout P ",
    "svc-1  | ",
    "\x1b[",
    "vllm_version=",
    "1e999",
    "-0",
    "0",
    "1,024",
    "99999999999999999999",
    ".5",
    "\n",
    "\r",
    "█ version ",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=20)), max_size=40).map("".join))
def test_any_text_gives_facts_or_the_no_memory_line_error(text: str) -> None:
    message = ""
    try:
        facts = parse_log(text, "fuzz")
    except VllmLogError as exc:
        message = str(exc)
    else:
        assert facts.ranks >= 1
        json.dumps(facts.to_json(), allow_nan=False)
    assert message in {"", "fuzz: no vLLM memory line (weights, KV cache, blocks or memory profile)"}
