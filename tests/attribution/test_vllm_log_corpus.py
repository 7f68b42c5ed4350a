"""The regression corpus of vLLM start-up logs (``tests/fixtures/vllm-logs``): every log parsed, every figure
compared with the JSON written beside it from what the log says."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from attribution.vllm_log import VllmLogFacts, parse_file
from tests.attribution.vllm_corpus import CORPUS, generate

LOGS = sorted(CORPUS.glob("*.log"))
# every figure of the facts; what is not in a log's JSON must be absent (None), never a guess
FIGURES = [f.name for f in fields(VllmLogFacts) if f.name not in ("notes", "workers", "sources", "failed_to_start")]


def _expected(log: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(log.with_suffix(".json").read_text(encoding="utf-8"))
    return loaded


@pytest.mark.parametrize("log", LOGS, ids=[p.stem for p in LOGS])
def test_each_log_of_the_corpus_gives_the_figures_it_states(log: Path) -> None:
    expected = _expected(log)
    unknown = set(expected) - set(FIGURES) - {"failed_to_start", "workers"}
    assert not unknown, f"{log.name}: the JSON names no figure of the facts: {sorted(unknown)}"
    facts = parse_file(log)
    got = {name: getattr(facts, name) for name in FIGURES}
    assert got == {name: expected.get(name) for name in FIGURES}
    assert (facts.failed_to_start is not None) == expected.get("failed_to_start", False)
    if "workers" in expected:  # a server of several workers: each one's own figures, in the order read
        assert len(facts.workers) == len(expected["workers"])
        pairs = zip(facts.workers, expected["workers"], strict=True)
        assert [{key: worker.get(key) for key in want} for worker, want in pairs] == expected["workers"]
    else:
        assert len(facts.workers) <= 1  # one process printed the figures (none when it stopped before any)


def test_the_simulated_logs_of_the_corpus_are_what_the_simulator_prints_today() -> None:
    stale = []
    for name, (log, figures) in generate().items():
        path = CORPUS / f"{name}.log"
        if not path.is_file() or path.read_text(encoding="utf-8") != log or _expected(path) != figures:
            stale.append(name)
    assert not stale, f"regenerate with python -m tests.attribution.vllm_corpus: {stale}"


def test_the_corpus_covers_each_version_shape_backend_and_case() -> None:
    names = [p.stem for p in LOGS]
    versions = {name.split("-")[0] for name in names}
    # V0 before 0.6.4 (blocks only), 0.6.4 (one profiling line), 0.6.6+ (budget lines), V1 0.8, 0.9.2 (available KV),
    # 0.10.0 (block-count line), 0.10.2 (process tags), 0.11 (one-line KV size), 0.32 (CPU build)
    assert {"0.5.5", "0.6.4", "0.6.6", "0.8.5", "0.9.2", "0.10.0", "0.10.2", "0.11.0", "0.32.0"} <= versions
    for case in ("cuda", "rocm", "xpu", "cpu", "tp2", "pp2", "failed"):
        assert any(case in name.split("-")[1:] for name in names), case
    assert all(p.with_suffix(".json").is_file() for p in LOGS)
