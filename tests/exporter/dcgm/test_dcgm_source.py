"""dcgm-exporter as a source: parsing its pages, its failures, and splitting its fields per container.

The fixtures under ``fixtures/`` were written for these tests from dcgm-exporter's documented field names
and label sets (a 3.3-era page with MIG, whose HELP says "(in %)" over ratio values, and a 4.9-era page
with ``hostname``, ``DCGM_FI_SYSTEM_DRIVER_VERSION`` and byte-valued memory); they are not captures.
"""

from __future__ import annotations

import contextlib
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families as parse_text

from common import catalog as c
from common.exposition import scrape
from exporter import dcgm as dcgm_module
from exporter.app import build
from exporter.dcgm import DcgmSource, parse_aliases, parse_page
from exporter.readings import DcgmKey
from exporter.settings import ExporterSettings
from exporter.snapshot import CommandNameResolver, attribute
from simulator.dcgm_exporter import SimDcgmExporter
from tests.common.slow_peer import SlowPeer
from tests.conftest import SCENARIOS, Sim
from tests.peers import free_port

FIXTURES = Path(__file__).parent / "fixtures"
A100, MIG_GPU = "GPU-1c7e6bd3-55a0-4d51-9a8a-0a6b1f3a2c10", "GPU-7d2f0c11-8e43-4c8e-b1a7-3f2d9e6a4b21"
H100 = "GPU-9b1e2f3a-4c5d-6e7f-8091-a2b3c4d5e6f7"


def test_a_mig_page_is_read_per_gpu_and_instance_as_ratios_whatever_its_help_says() -> None:
    values = parse_page((FIXTURES / "dcgm-exporter-3.3-a100-mig.prom").read_text())
    assert set(values) == {DcgmKey(A100, ""), DcgmKey(MIG_GPU, "1"), DcgmKey(MIG_GPU, "5")}
    assert values[DcgmKey(A100, "")] == {
        "engine_active": 0.37219,
        "sm_active": 0.301755,  # "(in %)" in the HELP, yet a ratio: not divided by 100
        "sm_occupancy": 0.12451,
        "tensor_active": 0.110023,
        "dram_active": 0.21488,
    }
    assert values[DcgmKey(MIG_GPU, "1")]["sm_active"] == 0.655001


def test_a_4_9_page_with_lowercase_hostname_and_renamed_driver_label_is_read() -> None:
    values = parse_page((FIXTURES / "dcgm-exporter-4.9-h100.prom").read_text())
    assert values == {DcgmKey(H100, ""): {"sm_active": 0.812, "dram_active": 0.455, "tensor_active": 0.603}}


def test_percent_valued_fields_become_ratios() -> None:
    page = '# TYPE DCGM_FI_PROF_SM_ACTIVE gauge\nDCGM_FI_PROF_SM_ACTIVE{UUID="GPU-a"} 42\n'
    assert parse_page(page) == {DcgmKey("GPU-a", ""): {"sm_active": 0.42}}


def test_a_renamed_field_is_read_through_an_alias() -> None:
    page = '# TYPE DCGM_FI_PROF_SM_ACTIVE_RATIO gauge\nDCGM_FI_PROF_SM_ACTIVE_RATIO{uuid="GPU-a"} 0.5\n'
    assert parse_page(page) == {}
    aliases = parse_aliases("DCGM_FI_PROF_SM_ACTIVE_RATIO=DCGM_FI_PROF_SM_ACTIVE")
    assert parse_page(page, aliases) == {DcgmKey("GPU-a", ""): {"sm_active": 0.5}}
    with pytest.raises(ValueError, match="NEW=OLD"):
        parse_aliases("nonsense")


class _Page:
    """What the test's dcgm-exporter serves next: a body, a status, a delay."""

    def __init__(self) -> None:
        self.body = (FIXTURES / "dcgm-exporter-3.3-a100-mig.prom").read_bytes()
        self.status = 200
        self.delay_s = 0.0
        self.send_length = True  # False: no Content-Length, the body ends when the connection closes


@pytest.fixture
def dcgm_server() -> Iterator[tuple[_Page, str, ThreadingHTTPServer]]:
    page = _Page()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            time.sleep(page.delay_s)
            self.send_response(page.status)
            if page.send_length:
                self.send_header("Content-Length", str(len(page.body)))
            else:
                self.close_connection = True
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client stopped reading
                self.wfile.write(page.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield page, f"http://127.0.0.1:{server.server_address[1]}/metrics", server
    finally:
        server.shutdown()
        server.server_close()


def test_every_kind_of_failure_marks_the_source_down_counts_it_and_gives_nothing(
    dcgm_server: tuple[_Page, str, ThreadingHTTPServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    page, url, _ = dcgm_server
    source = DcgmSource(url, timeout_s=0.3)
    assert source.read() is not None and source.up

    def fails(reason: str) -> None:
        before = source.errors_total.get(reason, 0)
        assert source.read() is None
        assert not source.up
        assert source.errors_total[reason] == before + 1

    page.status = 503
    fails("http")
    page.status, page.delay_s = 200, 1.0
    fails("timeout")
    page.delay_s, page.body = 0.0, b'DCGM_FI_PROF_SM_ACTIVE{UUID="GPU-x" 0.5 oops\n'
    fails("parse")
    page.body = b"# HELP nothing here\n"
    fails("no_fields")
    page.body = (FIXTURES / "dcgm-exporter-4.9-h100.prom").read_bytes()
    monkeypatch.setattr(dcgm_module, "MAX_BODY_BYTES", 100)
    fails("too_large")
    monkeypatch.undo()
    reading = source.read()  # and it recovers by itself
    assert reading is not None and source.up
    assert reading.values[DcgmKey(H100, "")]["sm_active"] == 0.812


@pytest.mark.parametrize("send_length", [True, False], ids=["with-length", "until-close"])
def test_a_100_mb_page_is_refused_reading_no_more_than_the_limit(
    dcgm_server: tuple[_Page, str, ThreadingHTTPServer], send_length: bool
) -> None:
    page, url, _ = dcgm_server
    page.body = b"# padding line of a page far too big for any node\n" * (100 * 10**6 // 51)
    page.send_length = send_length
    source = DcgmSource(url, timeout_s=10)
    tracemalloc.start()
    try:
        assert source.read() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert source.errors_total == {"too_large": 1}
    assert peak < dcgm_module.MAX_BODY_BYTES + 8 * 2**20  # the limit and some slack, never the 100 MB
    page.body, page.send_length = (FIXTURES / "dcgm-exporter-4.9-h100.prom").read_bytes(), True
    assert source.read() is not None and source.up  # and the next good page is read


def test_an_unreachable_dcgm_exporter_is_counted_as_such() -> None:
    source = DcgmSource(f"http://127.0.0.1:{free_port()}/metrics", timeout_s=0.5)
    assert source.read() is None
    assert source.errors_total == {"unreachable": 1}


@pytest.mark.parametrize("mode", ["trickle-body", "trickle-head"])
def test_a_trickling_dcgm_exporter_is_cut_at_the_time_out_not_per_byte(mode: str) -> None:
    with SlowPeer(mode) as peer:  # a byte every 0.3 s: each read is quick, the whole page never comes
        source = DcgmSource(f"{peer.url}/metrics", timeout_s=1.0)
        t0 = time.monotonic()
        assert source.read() is None
        assert time.monotonic() - t0 < 1.0 + 0.5
    assert source.errors_total == {"timeout": 1} and not source.up


def _time_sliced(simulate: Callable[..., Sim]) -> Sim:
    raw = {
        "name": "shared-a100",
        "gpus": [
            {"index": 0, "model": "NVIDIA A100-SXM4-80GB"},
            {"index": 1, "model": "NVIDIA A100-SXM4-80GB", "mig": [{"gi": 1, "profile": "3g.40gb"}]},
        ],
        "processes": [
            {"pid": 1, "name": "vllm", "gpus": [0], "memory": "30GiB", "sm": 0.6, "mem_bw": 0.1, "sm_fraction": 0.5},
            {"pid": 2, "name": "tgi", "gpus": [0], "memory": "20GiB", "sm": 0.2, "mem_bw": 0.3, "sm_fraction": 0.5},
            {"pid": 3, "name": "solo", "gpus": [1], "mig": 1, "memory": "9GiB", "sm": 0.7},
        ],
    }
    return simulate(raw, start=30)


def test_device_fields_are_split_per_container_by_nvml_activity_and_sum_to_the_device(
    simulate: Callable[..., Sim],
) -> None:
    sim = _time_sliced(simulate)
    exporter = SimDcgmExporter(sim.fake, sim.scenario.dcgm_exporter, "node")
    exporter.start()
    try:
        reading = DcgmSource(exporter.url).read()
    finally:
        exporter.stop()
    assert reading is not None
    device = reading.values[DcgmKey(sim.scenario.gpu_uuid(0), "")]
    assert device["sm_active"] == pytest.approx(0.4)  # (0.6 + 0.2) × half of the SMs
    usages, _ = attribute(
        sim.reader.read(), CommandNameResolver("/nonexistent", sim.reader.process_name), reading.values
    )
    by = {u.owner.process: u.dcgm for u in usages}
    for name in ("sm_active", "sm_occupancy", "tensor_active", "engine_active", "dram_active"):
        assert by["vllm"][name] + by["tgi"][name] == pytest.approx(device[name])
    assert by["vllm"]["sm_active"] == pytest.approx(0.4 * 0.6 / 0.8)  # SM-side fields by smUtil share
    assert by["vllm"]["dram_active"] == pytest.approx(device["dram_active"] * 0.1 / 0.4)  # DRAM by memUtil
    mig = reading.values[DcgmKey(sim.scenario.gpu_uuid(1), "1")]
    assert by["solo"] == mig  # the only container of a MIG instance gets the instance's values


def _scenario_with_dcgm(tmp_path: Path, **dcgm: object) -> Path:
    raw = yaml.safe_load((SCENARIOS / "h100-inference-node.yaml").read_text())
    raw["dcgm_exporter"] = dcgm
    path = tmp_path / "with-dcgm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_exporter_serves_dcgm_attributed_series_and_none_stale_while_dcgm_is_down(tmp_path: Path) -> None:
    scenario = _scenario_with_dcgm(tmp_path, style="next", down_between=[[70, 80]])
    settings = ExporterSettings(
        simulate=str(scenario),
        listen="127.0.0.1:0",
        interval=60,
        sim_start=60,
        sim_speed=10,
        gpm=False,
        dcgm_exporter_url="simulated",
    )
    exporter = build(settings)
    exporter.start()  # takes the first sample at scenario second 60
    try:
        up = scrape(exporter.server.url)
        sim = exporter.simulation
        assert sim is not None
        while sim.clock.now() < 71:  # the simulated dcgm-exporter is down from second 70 to 80
            time.sleep(0.2)
        exporter.sampler.sample_once()
        down = scrape(exporter.server.url)
    finally:
        exporter.stop()

    def dcgm_samples(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> list[dict[str, str]]:
        return [lbl for lbl, _ in metrics.get(name, []) if lbl["source"] == "dcgm"]

    assert [v for _, v in up[c.EXPORTER_DCGM_UP.name]] == [1]
    assert len(dcgm_samples(up, c.GPU_SM_ACTIVE.name)) == 4  # GPM off: DCGM before NVML
    assert {lbl["process"] for lbl in dcgm_samples(up, c.CONTAINER_SM_ACTIVE.name)} >= {"vllm", "python3"}
    assert [v for _, v in down[c.EXPORTER_DCGM_UP.name]] == [0]
    assert [v for lbl, v in down[c.EXPORTER_DCGM_ERRORS.name] if lbl["reason"] == "http"] == [1]
    for name in (c.GPU_SM_ACTIVE.name, c.CONTAINER_SM_ACTIVE.name, c.CONTAINER_ENGINE_ACTIVE.name):
        assert dcgm_samples(down, name) == []  # nothing stale served as current
    nvml = [lbl for lbl, _ in down[c.GPU_SM_ACTIVE.name] if lbl["source"] == "nvml"]
    assert len(nvml) == 4  # NVML-derived values keep being served


def test_the_exposition_with_dcgm_series_passes_promtool(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from exporter.render import Exposition

    settings = ExporterSettings(
        simulate=str(SCENARIOS / "h100-8gpu-mig-node.yaml"),
        listen="127.0.0.1:0",
        sim_start=60,
        gpm=False,
        dcgm_exporter_url="simulated",
    )
    exporter = build(settings)
    try:
        exporter.sampler.sample_once()
        expo: Exposition | None = exporter.sampler.exposition
    finally:
        exporter.stop()
    assert expo is not None
    assert b'source="dcgm"' in expo.text
    engine = [s for f in parse_text(expo.text.decode()) if f.name == c.CONTAINER_ENGINE_ACTIVE.name for s in f.samples]
    assert {s.labels["mig_instance"] for s in engine if s.labels["gpu"] == "7"} == {"1", "5", "13"}  # MIG too
    promtool = shutil.which("promtool")
    assert promtool is not None, "make test installs Debian's prometheus package, which provides promtool"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=expo.text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert result.stdout + result.stderr == b""
