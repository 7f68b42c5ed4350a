"""The runs' health: a run missing only non-essential inputs still reports, naming them, and says so in its
health series; a failed run leaves the last good figures in place (on the Pushgateway and with ``--serve``),
with ``gpuattr_job_up`` 0 and the last success's timestamp unchanged."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from attribution.job import main as attribute
from attribution.review import main as review
from common import catalog as c
from tests.attribution.pushgateway import (
    FIGURES_ATTRIBUTE,
    FIGURES_REVIEW,
    HEALTH_ATTRIBUTE,
    HEALTH_REVIEW,
    FakePushgateway,
)
from tests.peers import free_port

POD = {"namespace": "llm", "pod": "vllm-0", "gpu_uuid": "GPU-1", "mig_instance": "", "model": "org/m", "team": "t"}
POD |= {"kv_cache_memory_bytes": "1000", "gpu_memory_utilization": "0.9"}  # vLLM's cache config, on every answer
VECTOR = json.dumps(
    {"status": "success", "data": {"resultType": "vector", "result": [{"metric": POD, "value": [1, "0.5"]}]}}
).encode()
MATRIX = json.dumps(
    {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": POD, "values": [[1, "0.5"]]}]}}
).encode()
GARBAGE = (200, b"<html>maintenance</html>")


class QueryPrometheus:
    """Answers every instant query with one sample of ``POD`` (every range query with one point of it), or
    what ``fail(query)`` says instead."""

    def __init__(self) -> None:
        self.fail: Callable[[str], tuple[int, bytes] | None] = lambda query: None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
                answer = MATRIX if self.path.startswith("/api/v1/query_range") else VECTOR
                status, body = fake.fail(query) or (200, answer)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def prom() -> Iterator[QueryPrometheus]:
    fake = QueryPrometheus()
    try:
        yield fake
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()


@pytest.fixture
def gateway() -> Iterator[FakePushgateway]:
    fake = FakePushgateway()
    try:
        yield fake
    finally:
        fake.close()


def _tokens_fail(query: str) -> tuple[int, bytes] | None:
    return (503, b"overloaded") if "tokens_total" in query else None


def test_attribute_without_token_counts_reports_them_missing_publishes_and_stays_up(
    prom: QueryPrometheus, gateway: FakePushgateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prom.fail = _tokens_fail
    flags = ["--prometheus", prom.url, "--out", str(tmp_path), "--pushgateway", gateway.address, "--timeout", "2"]
    assert attribute(flags) == 0
    out = capsys.readouterr().out
    missing = out.split("Missing or inconsistent inputs")[1]
    assert f"tokens: {prom.url}: no answer to" in missing and "overloaded" in missing
    assert "memory:" not in missing  # exactly what is missing: the rest was read
    assert f"tokens: {prom.url}" in (tmp_path / "report.html").read_text(encoding="utf-8")
    assert gateway.value(FIGURES_ATTRIBUTE, c.VLLM_MEMORY.family, component="kv_used") is not None
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_UP.family, command="attribute") == 1
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_INPUT_FAILED.family, input="tokens", essential="false") == 1
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_INPUT_FAILED.family, input="memory", essential="true") == 0


def test_review_without_token_counts_reports_them_missing_publishes_and_stays_up(
    prom: QueryPrometheus, gateway: FakePushgateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prom.fail = _tokens_fail
    flags = ["--prometheus", prom.url, "--json", "--out", str(tmp_path), "--pushgateway", gateway.address]
    assert review([*flags, "--timeout", "2", "--at", str(time.time())]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p.split(":")[0] for p in result["problems"] if prom.url in p] == ["tokens"]  # exactly what is missing
    assert result["failed_inputs"] == ["tokens"]
    assert "tokens: " + prom.url in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert gateway.value(FIGURES_REVIEW, c.REVIEW_GPUS_FREEABLE.family) is not None
    assert gateway.value(HEALTH_REVIEW, c.JOB_UP.family, command="review") == 1
    assert gateway.value(HEALTH_REVIEW, c.JOB_INPUT_FAILED.family, input="tokens", essential="false") == 1
    assert gateway.value(HEALTH_REVIEW, c.JOB_INPUT_FAILED.family, input="alloc_h", essential="true") == 0


def test_a_failed_run_after_a_good_one_leaves_its_figures_and_success_time_on_the_gateway(
    prom: QueryPrometheus, gateway: FakePushgateway, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--prometheus", prom.url, "--pushgateway", gateway.address, "--timeout", "2"]
    assert attribute(flags) == 0
    good = gateway.groups[FIGURES_ATTRIBUTE]
    succeeded = gateway.value(HEALTH_ATTRIBUTE, c.JOB_LAST_SUCCESS.family, command="attribute")
    assert succeeded is not None and abs(succeeded - time.time()) < 60
    time.sleep(0.05)
    prom.fail = lambda query: GARBAGE
    assert attribute(flags) == 1
    assert "essential inputs failed" in capsys.readouterr().err
    assert gateway.groups[FIGURES_ATTRIBUTE] is good  # not pushed again
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_UP.family, command="attribute") == 0
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_LAST_SUCCESS.family, command="attribute") == succeeded
    last_run = gateway.value(HEALTH_ATTRIBUTE, c.JOB_LAST_RUN.family, command="attribute")
    assert last_run is not None and last_run > succeeded


Scraped = dict[str, dict[tuple[tuple[str, str], ...], float]]
"""Family name -> sorted labels -> value."""


def _scrape(url: str) -> Scraped:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


def _wait(what: str, url: str, ok: Callable[[Scraped], bool]) -> Scraped:
    deadline = time.monotonic() + 15
    while True:
        try:
            got = _scrape(url)
            if ok(got):
                return got
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what}: not within 15 s"
        time.sleep(0.05)


def _one(got: Scraped, family: str) -> float | None:
    values = list(got.get(family, {}).values())
    return values[0] if len(values) == 1 else None


@contextmanager
def _serving(prom: QueryPrometheus) -> Iterator[str]:
    """``gpuattr attribute --serve`` on a free port, a run every 0.2 s, in a thread; its /metrics URL. Stopped
    on exit, and it must have stopped."""
    port = free_port()
    stop = threading.Event()
    flags = ["--prometheus", prom.url, "--serve", f"127.0.0.1:{port}", "--every", "0.2", "--timeout", "2"]
    server = threading.Thread(target=attribute, args=(flags,), kwargs={"stop": stop}, daemon=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        stop.set()
        server.join(10)
    assert not server.is_alive()


def test_serve_keeps_the_last_good_figures_with_their_age_when_prometheus_goes_away(prom: QueryPrometheus) -> None:
    with _serving(prom) as url:
        good = _wait("a good run served", url, lambda got: _one(got, c.JOB_UP.family) == 1)
        figures = good[c.VLLM_MEMORY.family]
        assert figures  # the split is served
        succeeded = _one(good, c.JOB_LAST_SUCCESS.family)
        assert succeeded is not None
        prom.fail = lambda query: GARBAGE
        bad = _wait("a failed run served", url, lambda got: _one(got, c.JOB_UP.family) == 0)
        assert bad[c.VLLM_MEMORY.family] == figures  # the last good figures stay
        assert _one(bad, c.JOB_LAST_SUCCESS.family) == succeeded  # and say how old they are
        failed_at = _one(bad, c.JOB_LAST_RUN.family)
        assert failed_at is not None and failed_at > succeeded
        memory = (("command", "attribute"), ("essential", "true"), ("input", "memory"))
        assert bad[c.JOB_INPUT_FAILED.family][memory] == 1
        prom.fail = lambda query: None  # Prometheus is back: so are up and fresh figures
        again = _wait("a good run again", url, lambda got: _one(got, c.JOB_UP.family) == 1)
        assert (_one(again, c.JOB_LAST_SUCCESS.family) or 0) > failed_at


def test_serve_whose_first_run_fails_serves_its_failure_and_no_figures(
    prom: QueryPrometheus, capsys: pytest.CaptureFixture[str]
) -> None:
    prom.fail = lambda query: GARBAGE
    with _serving(prom) as url:
        bad = _wait("the failure served", url, lambda got: _one(got, c.JOB_UP.family) == 0)
        assert c.VLLM_MEMORY.family not in bad  # no figures rather than zeros
        assert c.JOB_LAST_SUCCESS.family not in bad
        assert _one(bad, c.JOB_LAST_RUN.family) is not None
    assert "gpuattr attribute: essential inputs failed (memory, gpu_total, pod_info, kv_max, cache_config)" in (
        capsys.readouterr().err
    )


def test_a_report_that_cannot_be_written_fails_the_run_keeps_the_last_files_and_pushes_no_figures(
    prom: QueryPrometheus, gateway: FakePushgateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--prometheus", prom.url, "--out", str(tmp_path), "--pushgateway", gateway.address, "--timeout", "2"]
    assert attribute(flags) == 0
    good_split = (tmp_path / "split.csv").read_bytes()
    good = gateway.groups[FIGURES_ATTRIBUTE]
    assert json.loads((tmp_path / "result.json").read_text(encoding="utf-8"))["headline"]  # the headline is kept
    (tmp_path / "report.html").unlink()
    (tmp_path / "report.html").mkdir()  # stands in for any write that fails
    capsys.readouterr()
    assert attribute(flags) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"gpuattr attribute: --out {tmp_path}: cannot write report.html: a folder of that name is in the way"
    ]
    assert (tmp_path / "split.csv").read_bytes() == good_split
    assert gateway.groups[FIGURES_ATTRIBUTE] is good  # no figures without their report
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_UP.family, command="attribute") == 0
    assert gateway.value(HEALTH_ATTRIBUTE, c.JOB_INPUT_FAILED.family, input="memory", essential="true") == 0
