"""The job on the start-up cases the log parser reads: a server that failed to start, a Mamba hybrid whose KV
pool holds state per sequence, and a TP/PP server whose workers disagree on the KV they have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from attribution.collect import Collected, add_logs, add_model_configs, from_prometheus
from attribution.job import run
from attribution.prometheus import Sample
from attribution.report import html_report, terminal, to_json, write_files
from attribution.split import ServerGpu

GiB = 2**30
LOGS = Path(__file__).parent / "fixtures" / "logs"
CONFIGS = Path(__file__).parent / "fixtures" / "configs"


def _server(pod: str, model: str = "org/model-8b", **overrides: object) -> ServerGpu:
    base: dict[str, object] = {
        "namespace": "llm",
        "pod": pod,
        "model": model,
        "gpu_uuid": f"GPU-{pod}",
        "gpu_memory_bytes": 80 * GiB,
        "total_bytes": 72 * GiB,
        "kv_usage_p50": 0.1,
        "kv_usage_p95": 0.2,
        "kv_usage_max": 0.3,
        "gpu_memory_utilization": 0.9,
    }
    base.update(overrides)
    return ServerGpu(**base)  # type: ignore[arg-type]


def _logs(tmp_path: Path, **logs: str) -> Path:
    """A --logs folder: pod name -> a fixture log (or the text of one)."""
    folder = tmp_path / "logs"
    folder.mkdir()
    for pod, log in logs.items():
        target = folder / f"llm_{pod.replace('_', '-')}.log"
        if (LOGS / log).is_file():
            shutil.copy(LOGS / log, target)
        else:
            target.write_text(log, encoding="utf-8")
    return folder


def test_a_server_that_failed_to_start_is_shown_with_its_figures_and_what_fits(tmp_path: Path) -> None:
    # one running server, one pod that serves a model but never published vLLM series (its log shows why),
    # and a log of a pod no input knows, that failed too
    folder = _logs(
        tmp_path,
        vllm_ok="v1-0.11-plus.log",
        vllm_long="v1-failed-kv-needed.log",
        vllm_stray="v0-failed-max-seq-len.log",
    )
    collected = Collected([_server("vllm-ok")], candidates=[("llm", "vllm-long", "org/model-8b")])
    add_logs(collected, folder)
    result = run(collected, window="1h", headroom=0.2, price=2.0)

    rows = {row["pod"]: row for row in result.failed_starts.to_dict("records")}
    assert set(rows) == {"vllm-long", "vllm-stray"}
    long = rows["vllm-long"]
    assert "one request of 131,072 tokens needs 16.00 GiB" in long["reason"]
    assert long["max_model_len"] == 131_072
    assert long["kv_cache_needed_bytes"] == 16 * GiB
    assert long["kv_available_bytes"] == round(10.41 * GiB)
    assert long["suggested_max_model_len"] == 85_248
    assert long["suggested_kv_cache_memory_bytes"] == 16 * GiB
    assert long["model"] == "org/model-8b" and long["vllm_version"] == "0.11.0"
    assert "--max-model-len 85248" in long["suggestion"] and "--kv-cache-memory 17179869184" in long["suggestion"]
    assert "must give 5.59 GiB more" in long["notes"]
    assert rows["vllm-stray"]["suggested_max_model_len"] == 49_152
    # the running server is split as before; the failed ones are not in the split
    assert list(result.split["pod"]) == ["vllm-ok"]

    out = json.loads(to_json(result))
    assert {r["pod"] for r in out["failed_starts"]} == {"vllm-long", "vllm-stray"}
    text = terminal(result)
    assert "Failed to start" in text and "llm/vllm-long: the KV cache does not fit" in text
    assert "llm/vllm-long" in html_report(result) and "--max-model-len 85248" in html_report(result)
    written = {p.name for p in write_files(result, tmp_path / "out", ["csv", "json"])}
    assert {"failed_starts.csv", "failed_starts.json"} <= written
    assert "vllm-long" in (tmp_path / "out" / "failed_starts.csv").read_text(encoding="utf-8")


def test_a_failed_start_up_log_gives_no_kv_allocation_to_a_server_with_older_metrics(tmp_path: Path) -> None:
    # metrics from an earlier run, the log of the restarted container that failed: the "available" figure is
    # not an allocation
    collected = Collected([_server("vllm-long")])
    add_logs(collected, _logs(tmp_path, vllm_long="v1-failed-kv-needed.log"))
    result = run(collected, window="1h", headroom=0.2, price=2.0)
    row = result.split.iloc[0]
    assert row["kv_allocated_bytes"] is None or str(row["kv_allocated_bytes"]) == "<NA>"
    assert "failed start" in row["assumptions"]
    assert list(result.failed_starts["pod"]) == ["vllm-long"]


def test_a_log_that_started_fine_gives_no_failed_start_row(tmp_path: Path) -> None:
    collected = Collected([], candidates=[("llm", "vllm-ok", "org/model-8b")])
    add_logs(collected, _logs(tmp_path, vllm_ok="v1-0.11-plus.log"))
    result = run(collected, window="1h", headroom=0.2, price=2.0)
    assert result.failed_starts.empty
    assert json.loads(to_json(result))["failed_starts"] == []
    assert "Failed to start" not in terminal(result)


@pytest.mark.parametrize(
    ("log", "limiting", "figure", "values"),
    [
        (
            "tp2-v1-blocks-interleaved.log",
            "VllmWorker rank=1 pid=202",
            "num_gpu_blocks",
            {"VllmWorker rank=0 pid=201": 10_240, "VllmWorker rank=1 pid=202": 9_472},
        ),
        (
            "pp2-v1-stages.log",
            "Worker_PP1 pid=302",
            "kv_cache_tokens",
            {"Worker_PP0 pid=301": 436_896, "Worker_PP1 pid=302": 314_560},
        ),
    ],
)
def test_each_worker_of_a_tp_or_pp_server_is_shown_and_the_one_that_set_the_block_count(
    tmp_path: Path, log: str, limiting: str, figure: str, values: dict[str, int]
) -> None:
    collected = Collected([_server("vllm-big")])
    add_logs(collected, _logs(tmp_path, vllm_big=log))
    result = run(collected, window="1h", headroom=0.2, price=2.0)
    rows = {row["worker"]: row for row in result.workers.to_dict("records")}
    assert {worker: row[figure] for worker, row in rows.items()} == values
    assert {worker for worker, row in rows.items() if row["sets_block_count"]} == {limiting}
    assert all(row["available_kv_cache_bytes"] > 0 for row in rows.values())
    if log.startswith("pp2"):
        assert rows["Worker_PP0 pid=301"]["stage"] == 0 and rows["Worker_PP1 pid=302"]["stage"] == 1
        assert rows["Worker_PP1 pid=302"]["available_kv_cache_bytes"] == 24 * GiB
    text = terminal(result)
    assert f"{limiting}: available KV" in text
    assert text.count("<- sets the block count") == 1
    assert json.loads(to_json(result))["workers"][0]["pod"] == "vllm-big"
    assert "workers.csv" in {p.name for p in write_files(result, tmp_path / "out", ["csv"])}
    assert limiting in html_report(result)


def test_a_single_worker_server_has_no_worker_rows(tmp_path: Path) -> None:
    collected = Collected([_server("vllm-ok")])
    add_logs(collected, _logs(tmp_path, vllm_ok="v1-0.11-plus.log"))
    assert run(collected, window="1h", headroom=0.2, price=2.0).workers.empty


# Jamba-v0.1 in bf16 at TP 1 (tests/attribution/model_memory/test_hybrid.py derives each figure):
# one attention layer's token 2 × 8 KV heads × 128 × 2 B = 4,096 B; a Mamba layer's state 311,296 B, so the
# block is raised to 16 × ⌈311,296 / (16 × 4,096)⌉ = 80 tokens and a page is 80 × 4,096 = 327,680 B; the
# 4 attention and 28 Mamba layers are grouped by 4, so one block of the pool is 4 pages = 1,310,720 B.
JAMBA_TOKEN = 4 * 4_096
JAMBA_STATE = 28 * 327_680
JAMBA_BLOCK = 4 * 327_680
JAMBA_LOG = (
    "(APIServer pid=1) INFO 10-01 10:00:00 [api_server.py:1839] vLLM API server version 0.11.0\n"
    "(APIServer pid=1) INFO 10-01 10:00:00 [utils.py:233] non-default args: {'model': 'ai21labs/Jamba-v0.1', "
    "'max_model_len': 8192}\n"
    "(EngineCore_DP0 pid=80) INFO 10-01 10:01:00 [gpu_model_runner.py:2653] Model loading took 96.5000 GiB "
    "memory and 60.000000 seconds\n"
)


def _jamba(tmp_path: Path, **overrides: object) -> Collected:
    values: dict[str, object] = {
        "total_bytes": 120 * GiB,
        "gpu_memory_bytes": 141 * GiB,
        "num_gpu_blocks": 10_000,
        "block_size": 80,
    }
    values.update(overrides)
    collected = Collected([_server("vllm-jamba", "ai21labs/Jamba-v0.1", **values)])
    add_logs(collected, _logs(tmp_path, vllm_jamba=JAMBA_LOG))
    add_model_configs(collected, CONFIGS)
    return collected


def test_a_hybrid_splits_its_pool_in_blocks_over_all_layer_slots_with_its_state_per_sequence(tmp_path: Path) -> None:
    collected = _jamba(tmp_path)
    row = run(collected, window="1h", headroom=0.2, price=2.0).split.iloc[0]
    # not 10,000 × 80 tokens × 16,384 B (attention alone): the pool's blocks span every layer slot
    assert row["kv_allocated_bytes"] == 10_000 * JAMBA_BLOCK
    assert "hybrid pages" in row["kv_allocated_source"]
    assert row["kv_bytes_per_token"] == JAMBA_TOKEN
    assert row["kv_state_bytes_per_seq"] == JAMBA_STATE
    assert row["kv_block_bytes"] == JAMBA_BLOCK
    assert row["max_model_len"] == 8_192
    assert row["weights_bytes"] == round(96.5 * GiB) and row["weights_source"] == "log"
    parts = row["weights_bytes"] + row["kv_used_max_bytes"] + row["kv_idle_bytes"] + row["overhead_bytes"]
    assert parts == row["total_bytes"]
    # the hybrid's weights are not estimated without safetensors: said so, once
    assert any("Jamba-v0.1" in p for p in collected.problems)


def test_a_hybrids_recommendation_keeps_one_max_length_request_with_its_state_in_whole_blocks(tmp_path: Path) -> None:
    collected = _jamba(tmp_path, kv_usage_max=0.001, kv_usage_p95=0.001, kv_usage_p50=0.001)
    result = run(collected, window="1h", headroom=0.2, price=2.0)
    rec = result.recommendations.iloc[0]
    # the peak (0.1 % of 13.1 GB, plus 20 %) is less than one 8,192-token request with its state
    one = JAMBA_STATE + JAMBA_TOKEN * 8_192
    keep = -(-one // JAMBA_BLOCK) * JAMBA_BLOCK
    assert rec["kv_keep_bytes"] == keep
    assert rec["reclaimable_bytes"] == 10_000 * JAMBA_BLOCK - keep
    assert "Mamba/linear-attention state" in rec["recommendation"]
    assert f"serves {keep // one} sequence(s) of 8,192 tokens" in rec["recommendation"]


def test_a_hybrids_recommendation_follows_the_peak_when_it_is_above_one_request(tmp_path: Path) -> None:
    collected = _jamba(tmp_path, kv_usage_max=0.5)
    rec = run(collected, window="1h", headroom=0.2, price=2.0).recommendations.iloc[0]
    peak = round(10_000 * JAMBA_BLOCK * 0.5)
    assert rec["kv_keep_bytes"] == -(-round(peak * 1.2) // JAMBA_BLOCK) * JAMBA_BLOCK


def test_a_pp_server_is_sized_per_stage_and_a_hybrid_with_pp_is_refused_in_one_sentence(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    (configs / "meta-llama" / "Llama-3.1-8B").mkdir(parents=True)
    shutil.copy(CONFIGS / "llama-3.1-8b.json", configs / "meta-llama" / "Llama-3.1-8B" / "config.json")
    shutil.copytree(CONFIGS / "ai21labs", configs / "ai21labs")
    # two GPUs each, and logs whose workers are pipeline stages 0 and 1: TP 1 × PP 2
    servers = [
        _server("vllm-llama", "meta-llama/Llama-3.1-8B", tensor_parallel=2),
        _server("vllm-jamba", "ai21labs/Jamba-v0.1", tensor_parallel=2),
    ]
    collected = Collected(servers)
    add_logs(collected, _logs(tmp_path, vllm_llama="pp2-v1-stages.log", vllm_jamba="pp2-v1-stages.log"))
    add_model_configs(collected, configs)
    assert [(s.tensor_parallel, s.pipeline_parallel) for s in servers] == [(1, 2), (1, 2)]
    # Llama-3.1-8B: 2 × 8 KV heads × 128 × 2 B = 4,096 B a layer; 16 of its 32 layers on each stage
    assert servers[0].kv_bytes_per_token == 16 * 4_096
    assert servers[1].kv_bytes_per_token is None and servers[1].kv_state_bytes_per_seq is None
    (refusal,) = [p for p in collected.problems if "Jamba" in p]
    assert "with pipeline_parallel 2 is not sized, because" in refusal and refusal.count(". ") == 0
    frame = run(collected, window="1h", headroom=0.2, price=2.0).split
    assert list(frame["pipeline_parallel"]) == [2, 2]


class _Prometheus:
    """Answers the job's queries: two pods serve a model, one of them publishes vLLM series."""

    url = "http://prometheus.test"
    warnings: list[str] = []  # noqa: RUF012 - read only

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        if "gpuattr_pod_info" in expr:
            return [
                Sample({"namespace": "llm", "pod": pod, "model": "org/model-8b", "team": "search"}, 1.0)
                for pod in ("vllm-ok", "vllm-long")
            ]
        if "cache_config_info" in expr:
            return [Sample({"namespace": "llm", "pod": "vllm-ok", "num_gpu_blocks": "1000", "block_size": "16"}, 1.0)]
        return []


def test_a_pod_with_a_model_but_no_vllm_series_has_its_pod_log_read_for_a_failed_start() -> None:
    collected = from_prometheus(_Prometheus(), "1h")  # type: ignore[arg-type]
    assert [s.pod for s in collected.servers] == ["vllm-ok"]
    assert collected.candidates == [("llm", "vllm-long", "org/model-8b")]
    asked: list[tuple[str, str]] = []

    def read(namespace: str, pod: str) -> str | None:  # the Kubernetes API's pod logs
        asked.append((namespace, pod))
        name = "v1-failed-kv-needed.log" if pod == "vllm-long" else "v1-0.11-plus.log"
        return (LOGS / name).read_text(encoding="utf-8")

    add_logs(collected, None, read=read)
    assert sorted(asked) == [("llm", "vllm-long"), ("llm", "vllm-ok")]
    (failed,) = collected.failed_starts
    assert (failed["pod"], failed["model"], failed["suggested_max_model_len"]) == ("vllm-long", "org/model-8b", 85_248)
