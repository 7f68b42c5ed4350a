"""Pod start-up logs read through the Kubernetes client: bounded in size and, as a whole, in time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from attribution.collect import kubernetes_logs
from tests.common.slow_peer import SlowPeer

LOG = b"INFO 05-01 model weights took 14.99 GiB\nINFO 05-01 # GPU blocks: 27806\n"


@pytest.fixture
def api() -> Iterator[SlowPeer]:  # stands in for the API server: every path answers the same way
    with SlowPeer() as peer:
        peer.body = LOG
        yield peer


def test_a_log_is_read_as_text(api: SlowPeer) -> None:
    assert kubernetes_logs(api.url, timeout_s=5)("llm", "vllm-0") == LOG.decode()


def test_a_log_longer_than_the_limit_is_cut_to_it(api: SlowPeer) -> None:
    api.send_length = False  # a server that ignores limitBytes
    assert kubernetes_logs(api.url, limit_bytes=20, timeout_s=5)("llm", "vllm-0") == LOG[:20].decode()


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-head", "silent"])
def test_a_trickling_api_server_is_cut_at_the_deadline_and_the_pod_named(
    api: SlowPeer, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.mode = mode
    read = kubernetes_logs(api.url, timeout_s=1.0)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gpuattr.attribution"):
        assert read("llm", "vllm-0") is None
    assert time.monotonic() - t0 < 1.0 + 0.5
    assert "pod llm/vllm-0" in caplog.text and "no complete answer within 1 s" in caplog.text


def test_a_refusal_is_named_with_its_status(api: SlowPeer, caplog: pytest.LogCaptureFixture) -> None:
    api.mode, api.status, api.body = "status", 404, b'{"kind":"Status","message":"pods \\"nope\\" not found"}'
    with caplog.at_level(logging.WARNING, logger="gpuattr.attribution"):
        assert kubernetes_logs(api.url, timeout_s=5)("llm", "nope") is None
    assert "cannot read the log of pod llm/nope from the Kubernetes API: HTTP 404 Not Found" in caplog.text
