"""The attribution job against a Prometheus that is slow, flaps, answers a partial response or garbage; and
``gpuattr attribute`` and ``gpuattr review`` when it is down or answers garbage: they fail, write and push no
figures, and push their failure to a Pushgateway group of its own.

A small stand-in speaks the query API on loopback so that each fault can be had on demand; the job's
behaviour against a real Prometheus is tested in tests/attribution/test_job_prometheus.py.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from attribution.collect import from_prometheus, queries
from attribution.prometheus import PrometheusClient, PrometheusError
from common import catalog as c
from common.fetch import redact
from gpuattr.cli import main as gpuattr
from tests.attribution.pushgateway import (
    FIGURES_ATTRIBUTE,
    FIGURES_REVIEW,
    HEALTH_ATTRIBUTE,
    HEALTH_REVIEW,
    FakePushgateway,
)
from tests.common.slow_peer import SlowPeer

Answer = tuple[int, bytes, float]  # status, body, delay before answering (s)
POD = {"namespace": "llm", "pod": "vllm-0", "gpu_uuid": "GPU-1", "mig_instance": "", "model": "org/m"}


def _vector(**extra: object) -> bytes:
    body = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": POD, "value": [1, "0.5"]}]}}
    return json.dumps({**body, **extra}).encode()


class FakePrometheus:
    def __init__(self) -> None:
        self.answer: Callable[[int], Answer] = lambda n: (200, _vector(), 0.0)
        self.requests = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests += 1
                    n = fake.requests
                status, body, delay = fake.answer(n)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    try:
        yield fake
    finally:
        fake.close()


QUERIES = len(queries("1d"))


def test_a_healthy_answer_gives_the_server_and_no_problem(prom: FakePrometheus) -> None:
    collected = from_prometheus(PrometheusClient(prom.url, retries=0), "1d")
    assert [(s.namespace, s.pod, s.model) for s in collected.servers] == [("llm", "vllm-0", "org/m")]
    assert collected.problems == []


def test_a_slow_prometheus_is_named_for_each_query_and_the_job_goes_on(prom: FakePrometheus) -> None:
    prom.answer = lambda n: (200, _vector(), 1.5)
    t0 = time.monotonic()
    collected = from_prometheus(PrometheusClient(prom.url, timeout_s=0.2, retries=1), "1d")
    # one query's tries, not every query's: a server that gave no answer is not asked again in this run
    assert time.monotonic() - t0 < 2 * 0.2 + 3
    assert prom.requests == 2 + 1  # two tries, then one readiness check that times out too
    assert collected.servers == []
    assert len(collected.problems) == QUERIES
    assert all(f"{prom.url}: no answer" in p and "timed out" in p for p in collected.problems)


def test_a_flapping_prometheus_is_retried_and_its_answer_used(prom: FakePrometheus) -> None:
    prom.answer = lambda n: (503, b"overloaded", 0.0) if n % 2 else (200, _vector(), 0.0)
    client = PrometheusClient(prom.url, retries=2)
    collected = from_prometheus(client, "1d")
    assert collected.problems == []
    assert len(collected.servers) == 1
    assert client.queries == 2 * QUERIES  # each query failed once, then answered


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-head"])
def test_a_trickling_prometheus_is_cut_at_the_time_out_of_each_try(mode: str) -> None:
    # The time-out bounds each try as a whole: a byte every 0.3 s would otherwise hold each try for minutes.
    with SlowPeer(mode) as peer:
        client = PrometheusClient(peer.url, timeout_s=1.0, retries=1)
        t0 = time.monotonic()
        with pytest.raises(
            PrometheusError, match=rf"^{peer.url}: no answer to 'up' after 2 tries: timed out after 1 s"
        ):
            client.query("up")
        elapsed = time.monotonic() - t0
    assert elapsed < 3 * 1.0 + 0.2 + 0.5  # two tries, one back-off, one readiness check (it trickles too)
    assert client.queries == 2 and peer.requests == 3
    assert 2 * 1.0 - 0.2 < client.waited_s < 2 * 1.0 + 0.5
    assert client.unreachable is not None  # so the run's other queries are not asked of it


def test_a_refused_query_is_not_retried_and_a_server_error_is(prom: FakePrometheus) -> None:
    prom.answer = lambda n: (400, b'{"status":"error","error":"parse error at char 3"}', 0.0)
    client = PrometheusClient(prom.url, retries=2)
    with pytest.raises(PrometheusError, match=r"refused \(HTTP 400\): .*parse error at char 3"):
        client.query("up{")
    assert prom.requests == 1
    prom.answer = lambda n: (503, b"overloaded", 0.0)
    with pytest.raises(PrometheusError, match=r"after 3 tries: HTTP 503 Service Unavailable: overloaded$"):
        client.query("up")
    assert prom.requests == 1 + 3


def test_a_partial_response_is_used_and_reported_as_such(prom: FakePrometheus) -> None:
    warning = "partial response: store gateway 10.0.3.7:10901 unavailable"
    prom.answer = lambda n: (200, _vector(warnings=[warning]), 0.0)
    collected = from_prometheus(PrometheusClient(prom.url, retries=0), "1d")
    assert len(collected.servers) == 1  # what came back is used
    assert collected.problems == [f"{prom.url} warned: {warning}"]  # once, however many queries warned


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}',
        b'{"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}}',
        b'{"status": "success", "data": [1, 2]}',
        b'{"status": "success", "data": {"resultType": "scalar", "result": []}}',
        b'{"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}',
        b"<html>502 Bad Gateway</html>",
    ],
)
def test_a_malformed_answer_is_an_error_naming_prometheus_and_the_query(prom: FakePrometheus, body: bytes) -> None:
    prom.answer = lambda n: (200, body, 0.0)
    client = PrometheusClient(prom.url, retries=0)
    with pytest.raises(PrometheusError, match=rf"^{prom.url}: .*'up'"):
        client.query("up")
    collected = from_prometheus(client, "1d")  # and the job carries on, naming every input it lacks
    assert collected.servers == [] and len(collected.problems) == QUERIES


# A run whose essential inputs failed publishes its failure and nothing else ---------------------------------
FAULTS: dict[str, Answer | None] = {
    "down": None,  # nothing listens
    "html": (200, b"<html><body>502 Bad Gateway</body></html>", 0.0),
    "http-500": (500, b"internal server error", 0.0),
    "bad-json": (200, b'{"status": "success", "data": {"resultType": "vec', 0.0),
}
GOOD_FIGURES = b'gpuattr_review_gpus_freeable{window="7d"} 12\ngpuattr_vllm_reclaimable_bytes 42\n'


@pytest.mark.parametrize("command", ["attribute", "review"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_failed_prometheus_fails_the_run_and_publishes_only_the_failure(
    prom: FakePrometheus, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, fault: str
) -> None:
    answer = FAULTS[fault]
    if answer is None:
        prom.close()
    else:
        prom.answer = lambda n: answer
    url = prom.url.replace("http://", "http://alice:s3cr3tP4ss@")
    figures, health = (
        (FIGURES_ATTRIBUTE, HEALTH_ATTRIBUTE) if command == "attribute" else (FIGURES_REVIEW, HEALTH_REVIEW)
    )
    gateway = FakePushgateway()
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("last night's good report", encoding="utf-8")
    try:
        # last night's good figures, already on the gateway
        urllib.request.urlopen(
            urllib.request.Request(f"http://{gateway.address}{figures}", data=GOOD_FIGURES, method="PUT"), timeout=5
        ).close()
        flags = ["--prometheus", url, "--out", str(out), "--pushgateway", gateway.address, "--timeout", "2"]
        code = gpuattr([command, *flags])
        captured = capsys.readouterr()
        assert code == 1
        assert captured.out == ""  # no empty table, no empty review
        lines = captured.err.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"gpuattr {command}: essential inputs failed (")
        assert redact(url) in lines[0] and "s3cr3tP4ss" not in lines[0]
        assert [p.name for p in out.iterdir()] == ["report.html"]  # nothing written, nothing replaced
        assert (out / "report.html").read_text(encoding="utf-8") == "last night's good report"
        assert [(m, p) for m, p, _ in gateway.requests] == [("PUT", figures), ("POST", health)]
        assert b"s3cr3tP4ss" not in gateway.requests[-1][2]
        assert gateway.value(figures, "gpuattr_review_gpus_freeable") == 12  # the figures' group untouched
        assert gateway.value(health, c.JOB_UP.family, command=command) == 0
        assert gateway.value(health, c.JOB_LAST_RUN.family, command=command) is not None
        assert gateway.value(health, c.JOB_LAST_SUCCESS.family, command=command) is None
        essential = "memory" if command == "attribute" else "alloc_h"
        assert gateway.value(health, c.JOB_INPUT_FAILED.family, input=essential, essential="true") == 1
    finally:
        gateway.close()
