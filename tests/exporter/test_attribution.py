"""Processes summed per owner; activity and bandwidth split per container."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.snapshot import CommandNameResolver, Owner, Snapshot, attribute
from tests.conftest import Sim

GiB = 2**30


def _pair(simulate: Callable[..., Sim], model: str = "NVIDIA H100 80GB HBM3") -> Sim:
    raw = {
        "name": "pair",
        "gpus": [{"index": 0, "model": model}],
        "processes": [
            {"pid": 1, "name": "vllm", "gpus": [0], "memory": "30GiB", "sm": 0.6, "mem_bw": 0.3},
            {"pid": 2, "name": "tgi", "gpus": [0], "memory": "20GiB", "sm": 0.2, "mem_bw": 0.1},
            {"pid": 3, "name": "tgi", "gpus": [0], "memory": "1GiB", "sm": 0.1, "mem_bw": 0.0},
        ],
    }
    sim = simulate(raw, start=10)
    sim.reader.read()
    sim.clock.advance(5)
    return sim


def test_two_time_sliced_workloads_on_one_gpu_each_get_their_own_numbers(simulate: Callable[..., Sim]) -> None:
    sim = _pair(simulate, model="NVIDIA A100-SXM4-80GB")  # no GPM: NVML per-process numbers as they are
    usages, vanished = attribute(sim.reader.read(), CommandNameResolver("/nonexistent", sim.reader.process_name))
    assert vanished == 0
    by = {u.owner.process: u for u in usages}
    assert by["vllm"].memory_bytes == 30 * GiB and by["vllm"].processes == 1
    assert by["tgi"].memory_bytes == 21 * GiB and by["tgi"].processes == 2  # two processes, one owner
    assert by["vllm"].kernel_ratio == pytest.approx(0.6) and by["tgi"].kernel_ratio == pytest.approx(0.3)
    assert {u.kernel_source for u in usages} == {"nvml"}
    assert by["vllm"].bandwidth_ratio == pytest.approx(0.3)
    assert by["vllm"].bandwidth_source == "nvml"
    # An A100 has no GPM and no dcgm-exporter runs here: SM activity is not invented from kernel time.
    assert by["vllm"].sm_ratio is None and by["tgi"].sm_ratio is None


def test_gpm_bandwidth_is_split_by_memory_activity_and_sums_to_the_device(simulate: Callable[..., Sim]) -> None:
    sim = _pair(simulate)
    node = sim.reader.read()
    usages, _ = attribute(node, CommandNameResolver("/nonexistent", sim.reader.process_name))
    device = node.gpus[0].gpm
    assert device is not None and device.dram_bandwidth == pytest.approx(0.4)
    assert {u.bandwidth_source for u in usages} == {"gpm"}
    assert sum(u.bandwidth_ratio or 0 for u in usages) == pytest.approx(device.dram_bandwidth)
    by = {u.owner.process: u for u in usages}
    assert by["vllm"].bandwidth_ratio == pytest.approx(0.4 * 0.3 / 0.4)


def test_activity_is_absent_not_zero_when_the_driver_cannot_tell(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "no-util",
        "gpus": [
            {"index": 0, "unsupported": ["nvmlDeviceGetProcessesUtilizationInfo", "nvmlDeviceGetProcessUtilization"]}
        ],
        "processes": [{"pid": 1, "name": "busy", "gpus": [0], "memory": "1GiB", "sm": 0.9}],
    }
    sim = simulate(raw, start=10)
    usages, _ = attribute(sim.reader.read(), CommandNameResolver("/nonexistent", sim.reader.process_name))
    assert usages[0].memory_bytes == GiB
    assert usages[0].kernel_ratio is None and usages[0].sm_ratio is None and usages[0].bandwidth_ratio is None
    assert usages[0].activity_unknown == "driver"


def test_one_container_in_a_mig_instance_gets_the_instance_activity(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "mig",
        "gpus": [{"index": 0, "mig": [{"gi": 1, "profile": "3g.40gb"}, {"gi": 2, "profile": "3g.40gb"}]}],
        "processes": [
            {"pid": 1, "name": "solo", "gpus": [0], "mig": 1, "memory": "10GiB", "sm": 0.5, "mem_bw": 0.25},
            {"pid": 2, "name": "x", "gpus": [0], "mig": 2, "memory": "1GiB", "sm": 0.5},
            {"pid": 3, "name": "y", "gpus": [0], "mig": 2, "memory": "1GiB", "sm": 0.5},
        ],
    }
    sim = simulate(raw, start=10)
    sim.reader.read()
    sim.clock.advance(5)
    usages, _ = attribute(sim.reader.read(), CommandNameResolver("/nonexistent", sim.reader.process_name))
    by = {u.owner: u for u in usages}
    solo = by[Owner(process="solo")]
    assert (solo.mig_instance, solo.mig_profile) == ("1", "3g.40gb")
    assert solo.sm_ratio == pytest.approx(0.5)
    assert solo.sm_source == "gpm"
    assert solo.bandwidth_ratio == pytest.approx(0.25)
    # Two owners share instance 2: NVML cannot split the instance's activity, so none is reported.
    assert by[Owner(process="x")].sm_ratio is None and by[Owner(process="y")].sm_ratio is None
    assert by[Owner(process="x")].activity_unknown == by[Owner(process="y")].activity_unknown == "mig_shared"
    assert solo.activity_unknown == ""


def test_the_usage_cap_keeps_the_biggest_holders_and_counts_what_it_drops(simulate: Callable[..., Sim]) -> None:
    from exporter.render import families, render
    from exporter.sampler import Sampler, SamplerOptions

    procs = [{"pid": 100 + i, "name": f"p{i}", "gpus": [0], "memory": f"{i + 1}GiB"} for i in range(10)]
    sim = simulate({"name": "many", "gpus": [{"index": 0}], "processes": procs})
    sampler = Sampler(
        sim.reader, CommandNameResolver("/nonexistent", sim.reader.process_name), SamplerOptions(max_usages=3)
    )
    snap = sampler.sample_once()
    assert sorted(u.owner.process for u in snap.usages) == ["p7", "p8", "p9"]  # the three largest
    snap = sampler.sample_once()
    assert sampler.usages_dropped_total == 14  # seven per sample, counted cumulatively
    assert b"gpuattr_exporter_usages_dropped_total 14.0" in render(families(snap), 0).text


def test_a_launch_bound_loop_is_busy_by_time_and_nearly_idle_by_sms(simulate: Callable[..., Sim]) -> None:
    # As measured on a real H200 (tests/fixtures/h200-real/tiny-kernels-*): smUtil about 0.2, GPM SM active
    # 0.00025. The time-based figure keeps NVML's number; the SM figure is bounded by what GPM measured.
    raw = {
        "name": "tiny",
        "gpus": [{"index": 0, "model": "NVIDIA H200"}],
        "processes": [
            {"pid": 1, "name": "tiny", "gpus": [0], "memory": "612MiB", "sm": 0.2, "sm_fraction": 0.00125},
        ],
    }
    sim = simulate(raw, start=10)
    sim.reader.read()
    sim.clock.advance(5)
    node = sim.reader.read()
    (usage,) = attribute(node, CommandNameResolver("/nonexistent", sim.reader.process_name))[0]
    assert usage.kernel_ratio == pytest.approx(0.2) and usage.kernel_source == "nvml"
    assert node.gpus[0].gpm is not None and node.gpus[0].gpm.sm_active == pytest.approx(0.00025)
    assert usage.sm_ratio == pytest.approx(0.00025) and usage.sm_source == "gpm"
    assert usage.sm_ratio is not None and usage.kernel_ratio is not None
    assert usage.sm_ratio < 0.02 * usage.kernel_ratio  # the "busy but doing little" signal's condition


def test_sm_activity_is_the_devices_split_by_kernel_time_and_sums_to_it(simulate: Callable[..., Sim]) -> None:
    sim = _pair(simulate)
    node = sim.reader.read()
    usages, _ = attribute(node, CommandNameResolver("/nonexistent", sim.reader.process_name))
    device = node.gpus[0].gpm
    assert device is not None and device.sm_active is not None
    assert sum(u.sm_ratio or 0.0 for u in usages) == pytest.approx(device.sm_active)
    by = {u.owner.process: u for u in usages}
    assert by["vllm"].sm_ratio == pytest.approx(device.sm_active * 0.6 / 0.9)
    assert all(u.sm_ratio is not None and u.sm_ratio <= device.sm_active for u in usages)


def test_gpm_graphics_activity_is_served_per_device_instance_and_container(simulate: Callable[..., Sim]) -> None:
    from common import catalog as c
    from exporter.render import families

    raw = {
        "name": "engine",
        "gpus": [
            {"index": 0, "model": "NVIDIA H100 80GB HBM3"},
            {"index": 1, "model": "NVIDIA H100 80GB HBM3", "mig": [{"gi": 1, "profile": "3g.40gb"}]},
        ],
        "processes": [
            {"pid": 1, "name": "vllm", "gpus": [0], "memory": "30GiB", "sm": 0.6},
            {"pid": 2, "name": "tgi", "gpus": [0], "memory": "20GiB", "sm": 0.2},
            {"pid": 3, "name": "solo", "gpus": [1], "mig": 1, "memory": "10GiB", "sm": 0.5},
        ],
    }
    sim = simulate(raw, start=10)
    sim.reader.read()
    sim.clock.advance(5)
    node = sim.reader.read()
    usages, _ = attribute(node, CommandNameResolver("/nonexistent", sim.reader.process_name))
    device, instance = node.gpus[0].gpm, node.gpus[1].mig[0].gpm
    assert device is not None and device.graphics_active == pytest.approx(0.8)  # the engine ran 80 % of the time
    assert instance is not None and instance.graphics_active == pytest.approx(0.5)
    by = {u.owner.process: u for u in usages}
    assert by["vllm"].engine_ratio == pytest.approx(0.8 * 0.6 / 0.8)
    assert sum(u.engine_ratio or 0.0 for u in usages if u.gpu == 0) == pytest.approx(0.8)
    assert by["solo"].engine_ratio == pytest.approx(0.5)

    served = {f.name: f for f in families(Snapshot(node, usages, 0))}
    gpu = {
        (s.labels["gpu"], s.labels["mig_instance"], s.labels["source"]): s.value
        for s in served[c.GPU_ENGINE_ACTIVE.family].samples
    }
    assert gpu[("0", "", "gpm")] == pytest.approx(0.8) and gpu[("1", "1", "gpm")] == pytest.approx(0.5)
    container = {
        (s.labels["process"], s.labels["source"]): s.value for s in served[c.CONTAINER_ENGINE_ACTIVE.family].samples
    }
    assert container == pytest.approx({("vllm", "gpm"): 0.6, ("tgi", "gpm"): 0.2, ("solo", "gpm"): 0.5})
