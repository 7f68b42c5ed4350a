"""vLLM's ``/metrics`` page: the real CPU server's pages, constructed V0 and data-parallel pages, and ``fetch``."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from attribution.vllm_metrics import VllmMetricsError, fetch, parse_metrics
from tests.common.slow_peer import SlowPeer
from tests.conftest import VLLM_FIXTURES

REAL = VLLM_FIXTURES
MiB = 2**20


def _real(name: str) -> str:
    return (REAL / name).read_text()


# --- the real pages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["metrics-idle-after-3-requests.prom", "metrics-24-running.prom", "metrics-drained.prom"]
)
def test_each_real_page_gives_one_engine_with_its_cache_config(name: str) -> None:
    (engine,) = parse_metrics(_real(name), name)
    assert (engine.model_name, engine.engine) == ("tiny-llama", "0")
    assert engine.num_gpu_blocks == 8192
    assert engine.block_size == 128
    assert engine.kv_cache_memory_bytes == 1_073_741_824
    assert engine.kv_cache_size_tokens == 1_048_576
    assert engine.gpu_memory_utilization == 0.92
    assert engine.cache_dtype == "auto"
    # 8192 blocks x 128 tokens x 1,024 B (the model's config) = 1 GiB.
    assert engine.num_gpu_blocks * engine.block_size * 1024 == engine.kv_cache_memory_bytes
    assert engine.cache_config["enable_prefix_caching"] == "True"
    assert engine.cache_config["num_cpu_blocks"] is None  # the label "None"
    assert engine.cache_config["kv_cache_max_concurrency"] == "1024.0"
    assert engine.cache_config["engine"] == "0"
    assert engine.preemptions_total == 0.0 and engine.requests_waiting == 0.0


def test_the_page_under_load_shows_24_running_and_a_little_kv_in_use() -> None:
    (engine,) = parse_metrics(_real("metrics-24-running.prom"))
    assert engine.requests_running == 24.0
    assert engine.kv_cache_usage == pytest.approx(0.0093, abs=5e-5)
    assert (engine.prompt_tokens_total, engine.generation_tokens_total) == (14406.0, 6793.0)
    assert engine.inter_token_latency_count == 6766.0


def test_the_idle_and_drained_pages_show_the_token_counters_growing() -> None:
    (idle,) = parse_metrics(_real("metrics-idle-after-3-requests.prom"))
    (drained,) = parse_metrics(_real("metrics-drained.prom"))
    assert (idle.prompt_tokens_total, idle.generation_tokens_total) == (30.0, 96.0)
    assert (drained.prompt_tokens_total, drained.generation_tokens_total) == (14406.0, 9696.0)
    assert idle.kv_cache_usage == 0.0 and drained.kv_cache_usage == 0.0
    assert idle.requests_running == 0.0 and drained.requests_running == 0.0


# --- constructed pages ----------------------------------------------------------------------------------

# Constructed, not captured: a V0 (0.6-era) page in the exposition format, labels as the reference gives them.
V0_PAGE = """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",cpu_offload_gb="0",enable_prefix_caching="False",\
gpu_memory_utilization="0.9",num_cpu_blocks="2048",num_gpu_blocks="27806",num_gpu_blocks_override="None",\
sliding_window="None",swap_space_bytes="4294967296"} 1.0
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4125
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 120000.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct"} 45000.0
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="meta-llama/Llama-3.1-8B-Instruct"} 40000.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 44990.0
vllm:time_per_output_token_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 44990.0
vllm:time_per_output_token_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 1349.7
"""


def test_a_v0_page_has_one_engine_without_an_engine_label() -> None:
    (engine,) = parse_metrics(V0_PAGE, "v0")
    assert engine.engine is None
    assert engine.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert engine.kv_cache_usage == 0.4125  # from gpu_cache_usage_perc
    assert engine.kv_cache_memory_bytes is None and engine.kv_cache_size_tokens is None
    assert engine.cache_config["swap_space_bytes"] == "4294967296"
    assert engine.cache_config["num_gpu_blocks_override"] is None
    assert (engine.num_gpu_blocks, engine.block_size, engine.gpu_memory_utilization) == (27806, 16, 0.9)
    assert (engine.requests_running, engine.requests_waiting, engine.preemptions_total) == (7.0, 2.0, 3.0)
    assert (engine.prompt_tokens_total, engine.generation_tokens_total) == (120000.0, 45000.0)
    assert (engine.inter_token_latency_count, engine.inter_token_latency_sum_s) == (44990.0, 1349.7)


# Constructed, not captured: a V1 page with two data-parallel engines.
DP_PAGE = """\
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="fp8",engine="1",gpu_memory_utilization="0.9",\
kv_cache_memory_bytes="53687091200",kv_cache_size_tokens="819200",num_gpu_blocks="51200"} 1.0
vllm:cache_config_info{block_size="16",cache_dtype="fp8",engine="0",gpu_memory_utilization="0.9",\
kv_cache_memory_bytes="54760833024",kv_cache_size_tokens="835584",num_gpu_blocks="52224"} 1.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 12.0
vllm:num_requests_running{engine="1",model_name="llama"} 9.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.5
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} 0.99
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="llama"} 100.0
vllm:prompt_tokens_total{engine="1",model_name="llama"} 200.0
# TYPE vllm:admission_rejections counter
vllm:admission_rejections_total{model_name="llama",reason="max_num_queued_reqs"} 0.0
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="1",le="+Inf",model_name="llama"} 10.0
vllm:inter_token_latency_seconds_count{engine="1",model_name="llama"} 10.0
vllm:inter_token_latency_seconds_sum{engine="1",model_name="llama"} 0.5
"""


def test_a_data_parallel_page_gives_one_engine_per_engine_label_joined_to_its_cache_config() -> None:
    zero, one = parse_metrics(DP_PAGE, "dp")
    assert (zero.engine, one.engine) == ("0", "1")
    assert (zero.model_name, one.model_name) == ("llama", "llama")
    assert (zero.num_gpu_blocks, one.num_gpu_blocks) == (52224, 51200)
    assert (zero.kv_cache_size_tokens, one.kv_cache_size_tokens) == (835_584, 819_200)
    assert (zero.kv_cache_memory_bytes, one.kv_cache_memory_bytes) == (54_760_833_024, 53_687_091_200)
    assert (zero.requests_running, one.requests_running) == (12.0, 9.0)
    assert (zero.prompt_tokens_total, one.prompt_tokens_total) == (100.0, 200.0)
    assert zero.cache_dtype == "fp8"
    assert zero.generation_tokens_total is None  # not on the page: None, never 0
    assert (zero.inter_token_latency_count, one.inter_token_latency_count) == (None, 10.0)


def test_the_new_kv_usage_name_wins_over_the_old_one() -> None:
    zero, one = parse_metrics(DP_PAGE)
    assert (zero.kv_cache_usage, one.kv_cache_usage) == (0.25, 0.5)


def test_a_cache_config_with_an_engine_label_joins_series_without_one() -> None:
    page = (
        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0\n'
        'vllm:num_requests_running{model_name="m"} 3.0\n'
    )
    (engine,) = parse_metrics(page)
    assert (engine.engine, engine.model_name, engine.num_gpu_blocks, engine.requests_running) == ("0", "m", 100, 3.0)


@pytest.mark.parametrize(
    "body",
    [
        "<!doctype html><html><body>Not Found</body></html>",
        '{"detail": "Not Found"}',
        "vllm:num_requests_running{engine=0} 1\n",
        "vllm:num_requests_running one\n",
    ],
)
def test_a_page_that_is_not_prometheus_text_is_an_error_naming_the_source(body: str) -> None:
    with pytest.raises(VllmMetricsError, match=r"^http://pod:8000/metrics: not Prometheus text"):
        parse_metrics(body, "http://pod:8000/metrics")


def test_a_prometheus_page_without_vllm_series_is_an_error_naming_the_source() -> None:
    with pytest.raises(VllmMetricsError, match=r"^dcgm\.prom: no vllm: metrics"):
        parse_metrics('# TYPE DCGM_FI_DEV_GPU_UTIL gauge\nDCGM_FI_DEV_GPU_UTIL{gpu="0"} 12\n', "dcgm.prom")


def test_a_large_page_is_parsed_whole() -> None:
    noise = "".join(f'# TYPE other_{i} gauge\nother_{i}{{a="{j}"}} {j}\n' for i in range(2000) for j in range(50))
    page = noise + V0_PAGE + noise
    assert len(page) > 8 * MiB
    (engine,) = parse_metrics(page)
    assert engine.num_gpu_blocks == 27806 and engine.kv_cache_usage == 0.4125


# --- fetch ----------------------------------------------------------------------------------------------

HUGE_BYTES = 100 * 10**6


class _Handler(http.server.BaseHTTPRequestHandler):
    release: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            if self.path == "/metrics":
                self._send(V0_PAGE.encode())
            elif self.path == "/slow":
                self.release.wait(10)  # longer than the client waits
                self._send(V0_PAGE.encode())
            elif self.path == "/trickle":
                self._headers(1000)
                for _ in range(100):
                    if self.release.wait(0.05):
                        break
                    self.wfile.write(b"#")
                    self.wfile.flush()
            elif self.path == "/huge":
                self._headers(HUGE_BYTES)
                block = b"# padding\n" * (MiB // 10)
                sent = 0
                while sent < HUGE_BYTES:
                    self.wfile.write(block)
                    sent += len(block)
            else:
                self.send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, body: bytes) -> None:
        self._headers(len(body))
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_fetch_reads_a_page_that_parses(server: str) -> None:
    (engine,) = parse_metrics(fetch(f"{server}/metrics"), f"{server}/metrics")
    assert engine.num_gpu_blocks == 27806


def test_fetch_of_a_missing_page_names_the_url_and_the_status(server: str) -> None:
    url = f"{server}/nope"
    with pytest.raises(VllmMetricsError, match=rf"^{url}: HTTP 404"):
        fetch(url)


def test_fetch_gives_up_on_a_server_that_does_not_answer_in_time(server: str) -> None:
    url = f"{server}/slow"
    with pytest.raises(VllmMetricsError, match=rf"^{url}: timed out after 0.3 s"):
        fetch(url, timeout_s=0.3)


def test_fetch_gives_up_on_a_server_that_trickles_bytes_past_the_timeout(server: str) -> None:
    url = f"{server}/trickle"
    t0 = time.monotonic()
    with pytest.raises(VllmMetricsError, match=rf"^{url}: timed out after 0.3 s"):
        fetch(url, timeout_s=0.3)
    assert time.monotonic() - t0 < 0.3 + 0.5


@pytest.mark.parametrize("mode", ["trickle-head", "trickle-body"])
def test_fetch_cuts_a_server_trickling_its_head_or_body_at_the_timeout(mode: str) -> None:
    with SlowPeer(mode) as peer:  # a byte every 0.3 s: the page would take minutes
        url = f"{peer.url}/metrics"
        t0 = time.monotonic()
        with pytest.raises(VllmMetricsError, match=rf"^{url}: timed out after 1 s$"):
            fetch(url, timeout_s=1.0)
        assert time.monotonic() - t0 < 1.0 + 0.5


def test_fetch_names_the_url_without_its_password() -> None:
    with SlowPeer("silent") as peer:
        url = peer.url.replace("http://", "http://scraper:hunter2@") + "/metrics"
        with pytest.raises(
            VllmMetricsError, match=r"^http://scraper:\*\*\*@127\.0\.0\.1:\d+/metrics: timed out"
        ) as info:
            fetch(url, timeout_s=0.3)
    assert "hunter2" not in str(info.value)


def test_fetch_refuses_a_100_mb_page_beyond_max_bytes(server: str) -> None:
    url = f"{server}/huge"
    with pytest.raises(VllmMetricsError, match=rf"^{url}: page larger than 67,108,864 bytes"):
        fetch(url)


def test_fetch_of_a_closed_port_names_the_url() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: bound, then closed
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"
    with pytest.raises(VllmMetricsError, match=rf"^{url}: "):
        fetch(url, timeout_s=2)


def test_fetch_refuses_anything_but_http() -> None:
    with pytest.raises(VllmMetricsError, match=r"^file:///etc/passwd: not an http\(s\) URL"):
        fetch("file:///etc/passwd")
