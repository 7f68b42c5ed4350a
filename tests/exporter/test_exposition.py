"""What a scrape returns: valid Prometheus text and OpenMetrics, promtool-clean, dcgm-compatible."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from common import catalog as c
from exporter.render import families, render
from exporter.sampler import Sampler, SamplerOptions
from exporter.snapshot import CommandNameResolver
from simulator.scenario import load_scenario
from tests.conftest import SCENARIOS, Sim


def _sample_twice(sim: Sim, *, dcgm_compat: bool = False, hostname: str = "") -> Sampler:
    options = SamplerOptions(dcgm_compat=dcgm_compat, hostname=hostname)
    sampler = Sampler(sim.reader, CommandNameResolver("/nonexistent", sim.reader.process_name), options)
    sampler.sample_once()
    sim.clock.advance(5)
    sampler.sample_once()
    return sampler


@pytest.fixture(params=["h100-inference-node.yaml", "h100-8gpu-mig-node.yaml"])
def scenario_sampler(request: pytest.FixtureRequest, simulate: Callable[..., Sim]) -> Sampler:
    raw = load_scenario(SCENARIOS / request.param)
    sim = simulate(raw, start=60)
    return _sample_twice(sim)


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package, which provides it")
    return path


def test_promtool_check_metrics_finds_nothing_to_complain_about(scenario_sampler: Sampler) -> None:
    expo = scenario_sampler.exposition
    assert expo is not None
    result = subprocess.run(
        [_promtool(), "check", "metrics"], input=expo.text, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def test_with_dcgm_compat_promtool_objects_only_to_what_dcgm_exporter_itself_writes(
    simulate: Callable[..., Sim],
) -> None:
    sim = simulate(load_scenario(SCENARIOS / "h100-8gpu-mig-node.yaml"), start=60)
    expo = _sample_twice(sim, dcgm_compat=True, hostname="n").exposition
    assert expo is not None
    result = subprocess.run(
        [_promtool(), "check", "metrics"], input=expo.text, capture_output=True, timeout=30, check=False
    )
    findings = {line for line in (result.stdout + result.stderr).decode().splitlines() if line.strip()}
    assert findings, "expected promtool to flag dcgm-exporter's camelCase label"
    camel = "label names should be written in 'snake_case' not 'camelCase'"
    unsuffixed = 'counter metrics should have "_total" suffix'
    assert all(f.startswith("DCGM_FI_") and f.endswith((camel, unsuffixed)) for f in findings), findings
    # its counters keep their names: the energy counter is flagged, and no gpuattr_* series is
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION " + unsuffixed in findings


def test_openmetrics_output_parses_and_ends_with_eof(scenario_sampler: Sampler) -> None:
    expo = scenario_sampler.exposition
    assert expo is not None
    assert expo.openmetrics.endswith(b"# EOF\n")
    names = {
        f.name
        for f in parse_openmetrics(  # type: ignore[no-untyped-call]
            expo.openmetrics.decode()
        )
    }
    assert {c.CONTAINER_MEMORY.family, c.GPU_ENERGY.family, c.EXPORTER_SAMPLES.family} <= names


def test_every_served_family_is_in_the_catalog(scenario_sampler: Sampler) -> None:
    expo = scenario_sampler.exposition
    assert expo is not None
    catalog = {m.family for m in c.all_metrics()}
    served = {f.name for f in parse_text(expo.text.decode())}
    assert served <= catalog, served - catalog


def test_container_series_carry_no_pid_and_sum_to_what_processes_hold(simulate: Callable[..., Sim]) -> None:
    sim = simulate(load_scenario(SCENARIOS / "h100-inference-node.yaml"), start=60)
    sampler = _sample_twice(sim)
    expo = sampler.exposition
    assert expo is not None
    fams = {f.name: f for f in parse_text(expo.text.decode())}
    container = fams[c.CONTAINER_MEMORY.family]
    assert all("pid" not in s.labels for s in container.samples)
    gpu3 = sorted((s.labels["process"], s.value) for s in container.samples if s.labels["gpu"] == "3")
    assert gpu3 == [
        ("python3", 33690 * 2**20),  # the vLLM server's budget
        ("text-generation-launcher", 29.8 * 2**30 // 2**20 * 2**20),
    ]


def test_dcgm_compat_serves_dcgm_names_labels_and_units(simulate: Callable[..., Sim]) -> None:
    sim = simulate(load_scenario(SCENARIOS / "h100-8gpu-mig-node.yaml"), start=60)
    sampler = _sample_twice(sim, dcgm_compat=True, hostname="gpu-node-b7")
    snap, expo = sampler.snapshot, sampler.exposition
    assert snap is not None and expo is not None
    fams = {f.name: f for f in parse_text(expo.text.decode())}
    fb = {(s.labels["gpu"], s.labels["GPU_I_ID"]): s for s in fams["DCGM_FI_DEV_FB_USED"].samples}
    gpu0 = snap.reading.gpus[0]
    assert fb[("0", "")].value == round(gpu0.memory_used_bytes / 2**20)  # type: ignore[operator]
    assert fb[("0", "")].labels | {} == {
        "gpu": "0",
        "UUID": gpu0.uuid,
        "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3",
        "Hostname": "gpu-node-b7",
        "GPU_I_PROFILE": "",
        "GPU_I_ID": "",
        "DCGM_FI_DRIVER_VERSION": snap.reading.driver_version,
    }
    assert fb[("7", "1")].labels["GPU_I_PROFILE"] == "3g.40gb"
    # MIG counted once, as dcgm-exporter does: the instances of GPU 7, not the parent beside them
    assert ("7", "") not in fb
    gpu7 = snap.reading.gpus[7]
    mig_used = sum(round((m.memory_used_bytes or 0) / 2**20) for m in gpu7.mig)
    assert sum(s.value for (gpu, _), s in fb.items() if gpu == "7") == mig_used
    util = {s.labels["gpu"]: s.value for s in fams["DCGM_FI_DEV_GPU_UTIL"].samples}
    assert util["0"] == round(gpu0.utilization_ratio * 100)  # type: ignore[operator]
    assert "7" not in util  # N/A under MIG, as dcgm-exporter leaves it
    sm_active = {(s.labels["gpu"], s.labels["GPU_I_ID"]): s.value for s in fams["DCGM_FI_PROF_SM_ACTIVE"].samples}
    assert 0 < sm_active[("0", "")] <= 1  # a ratio, as dcgm-exporter's profiling fields are
    assert ("7", "1") in sm_active


def test_without_dcgm_compat_no_dcgm_series_are_served(simulate: Callable[..., Sim]) -> None:
    sim = simulate(load_scenario(SCENARIOS / "h100-inference-node.yaml"), start=60)
    expo = _sample_twice(sim).exposition
    assert expo is not None
    assert not [f.name for f in parse_text(expo.text.decode()) if f.name.startswith("DCGM_FI")]


def test_a_lost_gpu_shows_up_zero_and_no_stale_values(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "lost",
        "gpus": [{"index": 0, "lost_at": 3}],
        "processes": [{"pid": 1, "name": "p", "gpus": [0], "memory": "1GiB"}],
    }
    sim = simulate(raw, start=0)
    sampler = _sample_twice(sim)
    assert sampler.snapshot is not None
    fams = {f.name: f for f in parse_text(render(families(sampler.snapshot), 0).text.decode())}
    assert [s.value for s in fams[c.GPU_UP.family].samples] == [0]
    assert fams[c.GPU_MEMORY_USED.family].samples == []
    assert fams[c.CONTAINER_MEMORY.family].samples == []
    errors = {(s.labels["call"], s.labels["code"]) for s in fams[c.EXPORTER_NVML_ERRORS.family].samples}
    assert ("nvmlDeviceGetMemoryInfo", "GpuIsLost") in errors
