"""Tokens, and so the cost per million tokens, from a real Prometheus holding both of vLLM's token counters."""

from __future__ import annotations

import pytest

from attribution.collect import from_prometheus
from attribution.prometheus import PrometheusClient
from simulator.vllm_history import PROMPT_SHARE, SyntheticServer
from tests.attribution.test_job_prometheus import WEEK, week
from tests.peers import Prometheus

__all__ = ["week"]  # the module's fixture: a week of history backfilled into Prometheus


def test_prompt_and_generated_tokens_are_both_counted_per_pod(
    week: tuple[Prometheus, list[SyntheticServer], float],
) -> None:
    prom, servers, end = week
    collected = from_prometheus(PrometheusClient(prom.url), "7d", at=end)
    assert not [p for p in collected.problems if "token" in p.lower()], collected.problems
    for s in servers:
        expected = (1 + PROMPT_SHARE) * s.tokens_per_s * WEEK
        assert collected.tokens[(s.namespace, s.pod)] == pytest.approx(expected, rel=0.02)
