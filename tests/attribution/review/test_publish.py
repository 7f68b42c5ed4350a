"""The review's headline figures as catalog series, pushed to a Pushgateway through the bounded fetch."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from attribution.review import families, main, push
from common import catalog as c
from common.families import Families
from tests.attribution.review.conftest import HOSTILE_TEAM, Cluster, review_flags


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A Pushgateway stand-in: ``host:port`` and the (path, body) of every PUT."""
    pushed: list[tuple[str, bytes]] = []

    class Gateway(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_PUT(self) -> None:
            pushed.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", pushed
    finally:
        server.shutdown()
        server.server_close()


def test_headlines_are_catalog_families_with_a_sample_per_dimension_and_name(small_review: dict[str, Any]) -> None:
    text = generate_latest(Families(families(small_review))).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for metric in (c.REVIEW_GPUS_ALLOCATED, c.REVIEW_GPUS_USED, c.REVIEW_IDLE_GPU_HOURS, c.REVIEW_GPUS_FREEABLE):
        assert fams[metric.family].documentation == metric.help
        assert fams[metric.family].type == "gauge"
        assert all(tuple(s.labels) == metric.labels for s in fams[metric.family].samples), metric.name
    allocated = {
        (s.labels["dimension"], s.labels["name"]): s.value for s in fams[c.REVIEW_GPUS_ALLOCATED.family].samples
    }
    rows = [(d, str(r["name"]), r["gpus_allocated"]) for d, rs in small_review["by"].items() for r in rs]
    assert allocated == {(d, n): v for d, n, v in rows}
    assert allocated[("team", HOSTILE_TEAM)] == 4
    used = {s.labels["name"]: s.value for s in fams[c.REVIEW_GPUS_USED.family].samples}
    assert used[HOSTILE_TEAM] == 1.5
    (freeable,) = fams[c.REVIEW_GPUS_FREEABLE.family].samples
    assert (freeable.labels, freeable.value) == ({"window": "1d"}, small_review["consolidation"]["gpus_freed"])


def test_a_push_replaces_the_reviews_group(
    small_review: dict[str, Any], gateway: tuple[str, list[tuple[str, bytes]]]
) -> None:
    address, pushed = gateway
    push(small_review, address, timeout_s=5)
    ((path, body),) = pushed
    assert path == "/metrics/job/gpuattr-review"
    assert {f.name for f in text_string_to_metric_families(body.decode())} >= {c.REVIEW_GPUS_FREEABLE.family}


def test_a_pushgateway_that_does_not_answer_is_one_line_and_exit_1(
    small_review: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from attribution.review import cli

    monkeypatch.setattr(cli, "run", lambda client, **kwargs: small_review)

    with socket.socket() as silent:  # listens, never accepts: the push times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        code = main(
            ["--prometheus", "http://127.0.0.1:1", "--window", "1h", "--timeout", "0.5", "--pushgateway", address]
        )
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "--pushgateway" in line]
    assert len(err) == 1 and address in err[0]


@pytest.mark.slow
def test_each_gpu_model_is_priced_at_its_own_rate_and_headlines_are_pushed(
    month: Cluster, gateway: tuple[str, list[tuple[str, bytes]]]
) -> None:
    address, pushed = gateway
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            [
                *review_flags(month),
                "--price-per-gpu-hour",
                "1",
                "--price",
                "NVIDIA H100 80GB HBM3=4",
                "--pushgateway",
                address,
            ]
        )
    assert code == 0
    research = {r["name"]: r for r in json.loads(stdout.getvalue())["by"]["team"]}["research"]
    assert research["cost"] == pytest.approx(research["gpus_allocated"] * 168 * 4, rel=1e-6)  # H100s at 4, not 1
    (figures, body), (health, _) = pushed  # the figures, then the run's health in a group of its own
    assert (figures, health) == ("/metrics/job/gpuattr-review", "/metrics/job/gpuattr-review-health")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    allocated = {
        (s.labels["dimension"], s.labels["name"]): s.value for s in fams[c.REVIEW_GPUS_ALLOCATED.family].samples
    }
    assert allocated[("team", "research")] == pytest.approx(64, abs=0.5)
    assert fams[c.REVIEW_GPUS_FREEABLE.family].samples[0].value > 0
