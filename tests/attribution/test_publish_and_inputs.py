"""Publishing the split as Prometheus series (a Pushgateway push), and start-up logs from the Kubernetes API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from attribution.collect import Collected, add_logs, kubernetes_logs
from attribution.job import main, run
from attribution.report import families
from attribution.split import ServerGpu
from common import catalog as c

GiB = 2**30


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.logs: dict[str, str] = {}


@pytest.fixture
def http_peer() -> Iterator[tuple[_Recorder, str]]:
    rec = _Recorder()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            rec.requests.append((self.command, self.path, self.rfile.read(length)))

        def do_PUT(self) -> None:  # the Pushgateway
            self._record()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # the Kubernetes API's pod log endpoint
            self._record()
            path = self.path.split("?")[0]
            body = rec.logs.get(path)
            self.send_response(200 if body is not None else 404)
            data = (body or '{"kind":"Status","code":404}').encode()
            self.send_header("Content-Type", "text/plain" if body is not None else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield rec, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _collected() -> Collected:
    server = ServerGpu(
        namespace="llm",
        pod="vllm-0",
        model="m",
        gpu_uuid="GPU-0",
        gpu_memory_bytes=80 * GiB,
        total_bytes=72 * GiB,
        kv_usage_p50=0.1,
        kv_usage_p95=0.2,
        kv_usage_max=0.25,
        kv_allocated_bytes=52 * GiB,
        gpu_memory_utilization=0.9,
    )
    return Collected([server], {("llm", "vllm-0"): "search"}, {})


def test_start_up_logs_come_from_the_kubernetes_api(http_peer: tuple[_Recorder, str]) -> None:
    rec, url = http_peer
    rec.logs["/api/v1/namespaces/llm/pods/vllm-0/log"] = (
        "INFO 11-21 10:00:01 [gpu_model_runner.py:2000] Model loading took 15.0000 GiB memory and 9.5 seconds\n"
    )
    collected = _collected()
    add_logs(collected, None, read=kubernetes_logs(url))
    assert collected.servers[0].weights_bytes_log == 15 * GiB
    assert any("limitBytes=" in path for _, path, _ in rec.requests)  # bounded read
    missing = Collected([ServerGpu(**{**_collected().servers[0].__dict__, "pod": "gone"})], {}, {})
    add_logs(missing, None, read=kubernetes_logs(url))
    assert missing.servers[0].weights_bytes_log is None
    assert any("no start-up log" in p for p in missing.problems)


def test_the_split_is_published_as_catalog_series_and_pushed(http_peer: tuple[_Recorder, str]) -> None:
    rec, url = http_peer
    collected = _collected()
    add_logs(collected, None, read=lambda ns, pod: "INFO Model loading took 15.0000 GiB memory and 9.5 seconds\n")
    result = run(collected, window="1d", headroom=0.2, price=2.0)
    fams = {f.name: f for f in families(result)}
    split = {s.labels["component"]: s.value for s in fams[c.VLLM_MEMORY.family].samples}
    assert split == {"weights": 15 * GiB, "kv_used": 13 * GiB, "kv_idle": 39 * GiB, "overhead": 5 * GiB}
    assert fams["gpuattr_vllm_reclaimable_bytes"].samples[0].value == pytest.approx(52 * GiB - 13 * GiB * 1.2, rel=1e-6)

    from attribution import job as job_module

    original = job_module.collect
    job_module.collect = lambda args: collected
    try:
        assert main(["--prometheus", "http://unused", "--pushgateway", url.removeprefix("http://")]) == 0
    finally:
        job_module.collect = original
    (method, path, body), health = rec.requests[-2:]  # the figures, then the run's health in a group of its own
    assert (method, path) == ("PUT", "/metrics/job/gpuattr-attribution")
    assert health[:2] == ("PUT", "/metrics/job/gpuattr-attribution-health")
    assert {f.name for f in text_string_to_metric_families(health[2].decode())} == {
        c.JOB_UP.family,
        c.JOB_LAST_RUN.family,
        c.JOB_LAST_SUCCESS.family,
        c.JOB_INPUT_FAILED.family,
    }
    pushed = {f.name for f in text_string_to_metric_families(body.decode())}
    assert c.VLLM_MEMORY.family in pushed and "gpuattr_vllm_recommended_gpu_memory_utilization_ratio" in pushed


def test_attribute_reads_its_flags_from_the_environment(
    http_peer: tuple[_Recorder, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rec, url = http_peer
    collected = _collected()
    asked: list[tuple[str, str]] = []

    def collect(args: Any) -> Collected:
        asked.append((args.prometheus, args.window))
        return collected

    from attribution import job as job_module

    monkeypatch.setattr(job_module, "collect", collect)
    # the required --prometheus/--vllm choice, and the push, from the environment alone
    monkeypatch.setenv("GPUATTR_PROMETHEUS", "http://prometheus.example:9090")
    monkeypatch.setenv("GPUATTR_PUSHGATEWAY", url.removeprefix("http://"))
    monkeypatch.setenv("GPUATTR_WINDOW", "1d")
    monkeypatch.setenv("GPUATTR_JSON", "yes")
    assert main([]) == 0
    assert asked == [("http://prometheus.example:9090", "1d")]
    assert json.loads(capsys.readouterr().out)["window"] == "1d"
    assert [(method, path) for method, path, _ in rec.requests] == [
        ("PUT", "/metrics/job/gpuattr-attribution"),
        ("PUT", "/metrics/job/gpuattr-attribution-health"),
    ]
    assert main(["--window", "2h"]) == 0  # the command line wins over the environment
    assert asked[-1] == ("http://prometheus.example:9090", "2h")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GPUATTR_PROMETHEUS": "http://p", "GPUATTR_TIMEOUT": "soon"}, "GPUATTR_TIMEOUT"),
        ({"GPUATTR_PROMETHEUS": "http://p", "GPUATTR_STATS": "maybe"}, "GPUATTR_STATS"),
    ],
)
def test_a_bad_environment_value_is_one_line_naming_the_variable_and_exit_2(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpuattr.cli import main as gpuattr

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        gpuattr(["attribute"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpuattr attribute: ") and named in err[0], err


@pytest.mark.parametrize("window", ["7 days", "0d", "1h1h"])
def test_a_window_that_is_not_a_positive_duration_is_refused_naming_the_flag(
    window: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--prometheus", "http://127.0.0.1:1", "--window", window]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpuattr attribute: --window: "), err
