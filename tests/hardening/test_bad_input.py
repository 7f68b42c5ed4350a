"""Every bad input gets one sentence naming it on standard error and exit status 2, never a traceback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from attribution.prometheus import PrometheusClient, PrometheusError
from attribution.vllm_metrics import VllmMetricsError, parse_metrics
from attribution.vllm_metrics import fetch as vllm_fetch
from common.exposition import NotMetricsError, scrape
from gpuattr.cli import main
from tests.conftest import ROOT

SCENARIO = str(ROOT / "scenarios" / "h100-inference-node.yaml")


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``gpuattr argv``; it must exit 2 with one line on stderr and no traceback. Returns that line."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's refusal
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_port_in_use_is_named(capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
    line = refused(capsys, ["exporter", "--simulate", SCENARIO, "--listen", f"127.0.0.1:{busy_port}", "--run-for", "0"])
    assert f"--listen 127.0.0.1:{busy_port}" in line
    assert "in use" in line


def test_a_missing_tls_certificate_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.pem")
    line = refused(
        capsys,
        ["exporter", "--simulate", SCENARIO, "--listen", "127.0.0.1:0", "--tls-cert", missing, "--tls-key", missing],
    )
    assert "--tls-cert" in line and missing in line and "does not exist" in line


def test_a_garbage_pem_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    argv = ["exporter", "--simulate", SCENARIO, "--listen", "127.0.0.1:0", "--run-for", "0"]
    line = refused(capsys, [*argv, "--tls-cert", str(garbage), "--tls-key", str(garbage)])
    assert str(garbage) in line and "PEM" in line


@pytest.mark.parametrize("command", ["alerts", "dashboards"])
def test_an_output_folder_that_is_a_file_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = refused(capsys, [command, "--out-dir", str(a_file)])
    assert f"--out-dir '{a_file}'" in line and "not a folder" in line
    assert a_file.read_text() == ""


@pytest.mark.parametrize("argv", [["alerts", "--out-dir"], ["dashboards", "--out-dir"], ["docs", "--output"]])
def test_an_output_that_cannot_be_written_is_named(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    target = "/proc/gpuattr-no-such-folder/out"
    line = refused(capsys, [*argv, target])
    assert f"{argv[1]} '{target}'" in line and "cannot write there" in line


def test_docs_output_that_is_a_folder_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = refused(capsys, ["docs", "--output", str(tmp_path)])
    assert f"--output '{tmp_path}'" in line and "directory" in line.lower()


class _NoQueries:
    """Stands in for Prometheus: a query made before the flags are checked fails the test."""

    def __init__(self, *_: object, **__: object) -> None:
        raise AssertionError("a query ran before the flags were checked")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--format", "csv,pdf"], "--format: unknown 'pdf'"),
        (["--serve", "banana"], "--serve: expected HOST:PORT"),
        (["--headroom", "-1"], "--headroom"),
        (["--price-per-gpu-hour", "-0.5"], "--price-per-gpu-hour"),
        (["--logs", "/nonexistent/logs"], "--logs: '/nonexistent/logs' does not exist"),
        (["--model-configs", "/nonexistent/models"], "--model-configs: '/nonexistent/models' does not exist"),
        (["--every", "0"], "--every"),
        (["--timeout", "-3"], "--timeout"),
        (["--window", "forever"], "--window"),
    ],
)
def test_attribute_refuses_a_bad_flag_before_any_query(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flags: list[str], named: str
) -> None:
    monkeypatch.setattr("attribution.job.PrometheusClient", _NoQueries)
    line = refused(capsys, ["attribute", "--prometheus", "http://prometheus.invalid:9090", *flags])
    assert named in line


def test_attribute_refuses_a_prometheus_that_is_not_a_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("attribution.job.PrometheusClient", _NoQueries)
    assert "--prometheus: expected an http:// or https:// URL, got 'notaurl'" in refused(
        capsys, ["attribute", "--prometheus", "notaurl"]
    )


@pytest.mark.parametrize("spec", ["llm/pod", "pod=http://x:8000/metrics", "llm/pod=x:8000/metrics", "/=http://x:1/"])
def test_attribute_refuses_a_bad_vllm_spec_before_scraping(capsys: pytest.CaptureFixture[str], spec: str) -> None:
    line = refused(capsys, ["attribute", "--vllm", spec, "--exporter-url", "http://exporter.invalid:9835/metrics"])
    assert f"--vllm: expected NAMESPACE/POD=http://HOST:PORT/metrics, got {spec!r}" in line


def test_attribute_refuses_a_serve_port_in_use_before_any_query(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, busy_port: int
) -> None:
    monkeypatch.setattr("attribution.job.PrometheusClient", _NoQueries)
    line = refused(capsys, ["attribute", "--prometheus", "http://p.invalid", "--serve", f"127.0.0.1:{busy_port}"])
    assert f"--serve 127.0.0.1:{busy_port}: cannot listen there" in line


def test_attribute_refuses_an_out_that_is_a_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("attribution.job.PrometheusClient", _NoQueries)
    a_file = tmp_path / "report"
    a_file.write_text("")
    line = refused(capsys, ["attribute", "--prometheus", "http://p.invalid", "--out", str(a_file)])
    assert f"--out: '{a_file}' is a file, not a folder" in line


LLAMA_8B = str(ROOT / "tests" / "attribution" / "fixtures" / "configs" / "llama-3.1-8b.json")


def test_model_memory_says_the_weights_alone_do_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["model-memory", "--config", LLAMA_8B, "--gpu-memory", "8GiB"])
    assert "--gpu-memory 8.00 GiB: does not fit: the weights alone need 14.96 GiB" in line
    assert "of the 7.20 GiB vLLM may use" in line


def test_model_memory_says_the_weights_and_overheads_do_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["model-memory", "--config", LLAMA_8B, "--gpu-memory", "17GiB"])  # 15.3 GiB usable
    assert "--gpu-memory 17.00 GiB: does not fit" in line and "leaving nothing for the KV cache" in line


def test_review_refuses_bad_flags_before_any_query(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("attribution.review.cli.PrometheusClient", _NoQueries)
    a_file = tmp_path / "report"
    a_file.write_text("")
    base = ["review", "--prometheus", "http://p.invalid"]
    assert "--price H100: expected a finite number, not negative" in refused(capsys, [*base, "--price", "H100=-3"])
    assert "--prometheus: expected an http" in refused(capsys, ["review", "--prometheus", "notaurl"])
    assert f"--out: '{a_file}' is a file, not a folder" in refused(capsys, [*base, "--out", str(a_file)])
    assert "--timeout: must be longer than zero" in refused(capsys, [*base, "--timeout", "0"])
    assert "--idle-threshold" in refused(capsys, [*base, "--idle-threshold", "5"])


@pytest.fixture
def html_server() -> Iterator[str]:
    """A server that answers every path with a login page, as a proxy in front of the real one would."""

    class Login(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Login)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_an_exporter_answering_html_is_named(capsys: pytest.CaptureFixture[str], html_server: str) -> None:
    line = refused(capsys, ["attribute", "--vllm", f"llm/p={html_server}", "--exporter-url", html_server])
    assert f"--exporter-url {html_server}: not Prometheus text: an HTML page" in line


def test_scrape_names_the_url_of_an_html_answer(html_server: str) -> None:
    with pytest.raises(NotMetricsError) as caught:
        scrape(html_server)
    assert str(caught.value).startswith(f"{html_server}: not Prometheus text: an HTML page")
    assert isinstance(caught.value, ValueError)  # as the parser's errors were


def test_a_vllm_url_answering_html_is_named(html_server: str) -> None:
    with pytest.raises(VllmMetricsError) as caught:
        parse_metrics(vllm_fetch(html_server), html_server)
    assert str(caught.value).startswith(f"{html_server}: not Prometheus text: an HTML page")


def test_prometheus_answering_html_is_named(html_server: str) -> None:
    base = html_server.removesuffix("/metrics")
    with pytest.raises(PrometheusError) as caught:
        PrometheusClient(base, timeout_s=5, retries=0).query("up")
    assert str(caught.value).startswith(f"{base}: answer to 'up' is not the Prometheus HTTP API: an HTML page")


def test_a_scenario_of_too_many_gpus_is_one_sentence(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ngpus:\n" + "".join(f"  - index: {i}\n" for i in range(1000)))
    line = refused(capsys, ["exporter", "--simulate", str(big), "--listen", "127.0.0.1:0", "--run-for", "0"])
    assert f"scenario {big}: gpus: 1,000 listed, at most 64" in line
