"""``common.exposition.scrape``: a /metrics page read within its deadline and parsed like Prometheus would."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from common.exposition import scrape
from common.fetch import FetchError
from tests.common.slow_peer import SlowPeer

PAGE = b"""# HELP gpu_used Bytes used.
# TYPE gpu_used gauge
gpu_used{gpu="0",pod="a"} 1024
gpu_used{gpu="1",pod="b"} 2.5e9
# TYPE samples counter
samples_total 7
"""


@pytest.fixture
def peer() -> Iterator[SlowPeer]:
    with SlowPeer() as p:
        p.body = PAGE
        yield p


def test_a_page_is_parsed_into_samples_by_name(peer: SlowPeer) -> None:
    metrics = scrape(f"{peer.url}/metrics")
    assert metrics["gpu_used"] == [({"gpu": "0", "pod": "a"}, 1024.0), ({"gpu": "1", "pod": "b"}, 2.5e9)]
    assert metrics["samples_total"] == [({}, 7.0)]


def test_a_trickling_exporter_is_cut_at_the_deadline(peer: SlowPeer) -> None:
    peer.mode = "trickle-body"
    t0 = time.monotonic()
    with pytest.raises(FetchError, match=rf"^{peer.url}/metrics: timed out after 1 s$") as info:
        scrape(f"{peer.url}/metrics", timeout_s=1.0)
    assert info.value.reason == "timeout" and time.monotonic() - t0 < 1.0 + 0.5


def test_a_page_over_the_cap_is_refused(peer: SlowPeer) -> None:
    with pytest.raises(FetchError) as info:
        scrape(f"{peer.url}/metrics", max_bytes=len(PAGE) - 1)
    assert info.value.reason == "too_large"
    assert scrape(f"{peer.url}/metrics", max_bytes=len(PAGE))["samples_total"] == [({}, 7.0)]


def test_a_page_that_is_not_prometheus_text_is_a_value_error(peer: SlowPeer) -> None:
    peer.body = b"gpu_used lots\n"
    with pytest.raises(ValueError, match="lots"):
        scrape(f"{peer.url}/metrics")
