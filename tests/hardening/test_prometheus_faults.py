"""The attribution job against a Prometheus that is slow, flaps, answers a partial response or garbage.

A small stand-in speaks the query API on loopback so that each fault can be had on demand; the job's
behaviour against a real Prometheus is tested in tests/attribution/test_job_prometheus.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from attribution.collect import from_prometheus, queries
from attribution.prometheus import PrometheusClient, PrometheusError
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
    collected = from_prometheus(PrometheusClient(prom.url, timeout_s=0.2, retries=0), "1d")
    assert time.monotonic() - t0 < QUERIES * 0.2 + 3  # bounded by the time-out, not by the server
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
    assert elapsed < 2 * 1.0 + 0.2 + 0.5  # two tries and one back-off
    assert client.queries == 2 and peer.requests == 2
    assert 2 * 1.0 - 0.2 < client.waited_s < 2 * 1.0 + 0.5


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
