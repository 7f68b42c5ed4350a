"""The NVML facade over the simulated driver: readings, fallbacks and every fault the issue names."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from common import catalog as c
from exporter.readings import NodeReading
from exporter.sampler import Sampler, SamplerOptions
from exporter.snapshot import CommandNameResolver, attribute
from tests.conftest import Sim, one_gpu

GiB = 2**30


def test_devices_memory_and_processes_are_read_through_the_binding(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 100, "memory": "10GiB"}, {"pid": 101, "memory": "2.5GiB"}))
    node = sim.reader.read()
    assert node.nvml_up
    assert node.driver_version == "570.124.06"
    (gpu,) = node.gpus
    assert gpu.up and gpu.uuid == sim.scenario.gpu_uuid(0) and gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 80 * GiB
    assert gpu.memory_used_bytes == 12.5 * GiB + 512 * 2**20  # processes plus the driver's reservation
    assert {p.pid: p.memory_bytes for p in gpu.processes} == {100: 10 * GiB, 101: int(2.5 * GiB)}


def test_each_sample_covers_exactly_the_interval_since_the_previous_one(simulate: Callable[..., Sim]) -> None:
    # Busy for the first 5 s of every 10 s: an exact interval reads 1.0 then 0.0; a window that ignored
    # the last-seen timestamp would average the driver's 10 s buffer to 0.5 both times.
    sim = simulate(
        one_gpu({"pid": 7, "memory": "1GiB", "sm": {"burst": {"period": 10, "duty": 0.5, "high": 1.0}}}), start=5.0
    )
    first = sim.reader.read().gpus[0].processes[0]
    sim.clock.advance(5)
    second = sim.reader.read().gpus[0].processes[0]
    sim.clock.advance(5)
    third = sim.reader.read().gpus[0].processes[0]
    assert (first.sm_ratio, second.sm_ratio, third.sm_ratio) == (1.0, 0.0, 1.0)


def test_not_found_means_idle_not_unknown(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 9, "memory": "22GiB", "sm": "idle"}), start=10)
    gpu = sim.reader.read().gpus[0]
    assert gpu.process_activity_known
    assert gpu.processes[0].sm_ratio == 0.0 and gpu.processes[0].mem_ratio == 0.0
    assert sim.fake.calls["nvmlDeviceGetProcessesUtilizationInfo"] >= 1
    assert ("nvmlDeviceGetProcessesUtilizationInfo", "NotFound") not in sim.reader.health.errors


def test_the_older_utilisation_call_is_used_when_the_driver_lacks_the_newer(simulate: Callable[..., Sim]) -> None:
    raw = one_gpu(
        {"pid": 9, "memory": "1GiB", "sm": 0.4, "mem_bw": 0.2},
        faults={"missing_functions": ["nvmlDeviceGetProcessesUtilizationInfo"]},
    )
    sim = simulate(raw, start=10)
    for _ in range(3):
        proc = sim.reader.read().gpus[0].processes[0]
        sim.clock.advance(5)
    assert (proc.sm_ratio, proc.mem_ratio) == (0.4, 0.2)
    assert sim.fake.calls["nvmlDeviceGetProcessUtilization"] == 2 * 3  # size query + fill, per sample
    assert ("nvmlDeviceGetProcessesUtilizationInfo", "FunctionNotFound") in sim.reader.health.errors


def test_process_memory_probes_v3_then_v2_then_the_unversioned_call(simulate: Callable[..., Sim]) -> None:
    missing = ["nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"]
    sim = simulate(one_gpu({"pid": 5, "memory": "3GiB"}, faults={"missing_functions": missing}))
    sim.reader.read()
    gpu = sim.reader.read().gpus[0]
    assert [(p.pid, p.memory_bytes) for p in gpu.processes] == [(5, 3 * GiB)]
    assert sim.fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 2 * 2  # size query + fill, per sample
    assert "nvmlDeviceGetComputeRunningProcesses_v2" not in sim.fake.calls  # missing symbols are never called


def test_duplicate_samples_for_one_pid_are_averaged(simulate: Callable[..., Sim]) -> None:
    # A ramp 0 → 1 over the interval: the two half-interval samples read 0.25 and 0.75; the mean is 0.5.
    ramp = {"ramp": {"from": 0, "to": 1, "start": 0, "end": 10}}
    sim = simulate(
        one_gpu({"pid": 3, "memory": "1GiB", "sm": ramp}, faults={"duplicate_util_samples": True}),
        start=10,
        interval=10,
    )
    assert sim.reader.read().gpus[0].processes[0].sm_ratio == pytest.approx(0.5, abs=0.01)


def test_values_above_100_percent_are_clamped_and_counted(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 3, "memory": "1GiB", "sm": 0.5}, faults={"util_over_100": [3]}), start=10)
    node = sim.reader.read()
    assert node.gpus[0].processes[0].sm_ratio == 1.0
    assert node.clamped_total == 1


def test_a_lost_gpu_is_marked_down_while_the_others_are_read_and_it_recovers(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "lost",
        "gpus": [{"index": 0}, {"index": 1, "lost_at": 10, "recovers_at": 20}],
        "processes": [
            {"pid": 1, "name": "a", "gpus": [0], "memory": "1GiB"},
            {"pid": 2, "name": "b", "gpus": [1], "memory": "2GiB"},
        ],
    }
    sim = simulate(raw, start=5)
    assert [g.up for g in sim.reader.read().gpus] == [True, True]
    sim.clock.advance(10)
    lost = sim.reader.read()
    assert lost.nvml_up
    assert [g.up for g in lost.gpus] == [True, False]
    assert lost.gpus[0].processes[0].memory_bytes == GiB  # the healthy GPU keeps reporting
    assert lost.gpus[1].processes == () and lost.gpus[1].memory_used_bytes is None  # nothing stale
    assert lost.errors[("nvmlDeviceGetMemoryInfo", "GpuIsLost")] == 1
    sim.clock.advance(10)
    back = sim.reader.read()
    assert [g.up for g in back.gpus] == [True, True]
    assert back.gpus[1].processes[0].memory_bytes == 2 * GiB


def test_an_unsupported_call_degrades_that_value_alone_and_is_not_asked_again(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "unsupported",
        "gpus": [{"index": 0}, {"index": 1, "unsupported": ["nvmlDeviceGetPowerUsage"]}],
        "processes": [],
    }
    sim = simulate(raw)
    for _ in range(3):
        node = sim.reader.read()
        sim.clock.advance(5)
    assert node.gpus[0].power_watts is not None
    assert node.gpus[1].power_watts is None
    assert node.gpus[1].memory_used_bytes is not None and node.gpus[1].temperature_celsius is not None
    assert sim.fake.calls["nvmlDeviceGetPowerUsage"] == 3 + 1  # three on GPU 0, one on GPU 1
    assert node.errors[("nvmlDeviceGetPowerUsage", "NotSupported")] == 1


def test_a_missing_driver_at_start_up_is_retried_until_it_appears(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB"}, faults={"driver_missing_until": 10}))
    first = sim.reader.read()
    assert not first.nvml_up and first.gpus == ()
    assert first.errors[("nvmlInit", "DriverNotLoaded")] == 1
    sim.clock.advance(11)
    second = sim.reader.read()
    assert second.nvml_up and len(second.gpus) == 1 and second.gpus[0].processes[0].pid == 1


def test_mig_instances_carry_their_own_memory_processes_and_gpm(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "mig",
        "gpus": [{"index": 0, "mig": [{"gi": 1, "profile": "3g.40gb"}, {"gi": 5, "profile": "2g.20gb"}]}],
        "processes": [
            {
                "pid": 11,
                "name": "a",
                "gpus": [0],
                "mig": 1,
                "memory": "30GiB",
                "sm": 0.8,
                "sm_fraction": 0.5,
                "mem_bw": 0.4,
            },
            {"pid": 12, "name": "b", "gpus": [0], "mig": 5, "memory": "5GiB", "sm": "idle"},
        ],
    }
    sim = simulate(raw, start=10)
    sim.reader.read()
    sim.clock.advance(5)
    gpu = sim.reader.read().gpus[0]
    assert gpu.mig_mode and gpu.utilization_ratio is None  # device utilisation is N/A under MIG
    by_gi = {m.gpu_instance: m for m in gpu.mig}
    assert set(by_gi) == {1, 5}
    assert by_gi[1].profile == "3g.40gb" and by_gi[1].memory_total_bytes == 40 * 10**9
    assert [(p.pid, p.memory_bytes) for p in by_gi[1].processes] == [(11, 30 * GiB)]
    assert by_gi[1].uuid == sim.scenario.mig_uuid(0, 1)
    assert by_gi[1].gpm is not None and by_gi[1].gpm.sm_active == pytest.approx(0.4)
    assert by_gi[1].gpm.dram_bandwidth == pytest.approx(0.4)
    assert by_gi[5].gpm is not None and by_gi[5].gpm.sm_active == 0.0
    assert ("nvmlDeviceGetProcessesUtilizationInfo", "NotSupported") not in sim.reader.health.errors


def test_gpm_reads_hopper_activity_over_the_interval_and_is_absent_before_hopper(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "gpm",
        "gpus": [{"index": 0}, {"index": 1, "model": "NVIDIA A100-SXM4-80GB"}],
        "processes": [
            {"pid": 1, "name": "a", "gpus": [0], "memory": "1GiB", "sm": 0.9, "sm_fraction": 0.5, "mem_bw": 0.3},
            {"pid": 2, "name": "b", "gpus": [1], "memory": "1GiB", "sm": 0.9},
        ],
    }
    sim = simulate(raw, start=10)
    assert sim.reader.read().gpus[0].gpm is None  # first sample: nothing to difference against
    sim.clock.advance(5)
    hopper, ampere = sim.reader.read().gpus
    assert hopper.gpm is not None
    assert hopper.gpm.sm_active == pytest.approx(0.45)  # 90 % of the time on half the SMs
    assert hopper.gpm.dram_bandwidth == pytest.approx(0.3)
    assert ampere.gpm is None
    assert ampere.utilization_ratio == pytest.approx(0.9)


def test_gpm_samples_are_freed(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB", "sm": 0.5}), start=10)
    for _ in range(5):
        sim.reader.read()
        sim.clock.advance(5)
    assert sim.fake.calls["nvmlGpmSampleAlloc"] == 5
    assert sim.fake.calls["nvmlGpmSampleFree"] == 4  # one held for the next interval


def test_a_process_that_exits_between_two_calls_is_dropped_and_counted(simulate: Callable[..., Sim]) -> None:
    sim = simulate(
        one_gpu({"pid": 1, "memory": "1GiB"}, {"pid": 2, "memory": "2GiB"}, faults={"vanish_between_calls": [2]})
    )
    node = sim.reader.read()
    assert {p.pid for p in node.gpus[0].processes} == {1, 2}  # the memory call still listed it
    usages, vanished = attribute(node, CommandNameResolver("/nonexistent", sim.reader.process_name))
    assert vanished == 1
    assert [u.owner.process for u in usages] == ["proc1"]


def test_an_exited_process_is_gone_at_the_next_sample(simulate: Callable[..., Sim]) -> None:
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB"}, {"pid": 2, "memory": "2GiB", "stop": 12}), start=10)
    assert {p.pid for p in sim.reader.read().gpus[0].processes} == {1, 2}
    sim.clock.advance(5)
    assert {p.pid for p in sim.reader.read().gpus[0].processes} == {1}


def test_a_call_failing_with_unknown_degrades_that_value_is_retried_and_counted(
    simulate: Callable[..., Sim], caplog: pytest.LogCaptureFixture
) -> None:
    raw = {
        "name": "unknown",
        "gpus": [{"index": 0}, {"index": 1, "failing": {"nvmlDeviceGetTemperature": "UNKNOWN"}}],
        "processes": [],
    }
    sim = simulate(raw)
    for _ in range(3):
        node = sim.reader.read()
        sim.clock.advance(5)
    assert node.gpus[1].up and node.gpus[1].temperature_celsius is None
    assert node.gpus[1].memory_used_bytes is not None and node.gpus[0].temperature_celsius is not None
    assert node.errors[("nvmlDeviceGetTemperature", "Unknown")] == 3  # transient: asked again, counted each time
    warnings = [r for r in caplog.records if "nvmlDeviceGetTemperature failed" in r.getMessage()]
    assert len(warnings) == 1  # logged once per state change, not once per sample


# --- calls that hang ----------------------------------------------------------------------------------------

TIMEOUT_S = 0.3


def _two_gpus(**gpu1: object) -> dict[str, object]:
    return {
        "name": "hang",
        "gpus": [{"index": 0}, {"index": 1, **gpu1}],
        "processes": [
            {"pid": 1, "name": "a", "gpus": [0], "memory": "1GiB", "sm": 0.5},
            {"pid": 2, "name": "b", "gpus": [1], "memory": "2GiB", "sm": 0.25},
        ],
    }


def _timed_read(sim: Sim) -> tuple[NodeReading, float]:
    t0 = time.monotonic()
    node = sim.reader.read()
    return node, time.monotonic() - t0


def _wait_idle(sim: Sim) -> None:
    """Until the thread parked in the hung call has come back (the fake polls the clock every 10 ms)."""
    deadline = time.monotonic() + 5
    while sim.reader.workers.hung() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_call_that_hangs_on_one_gpu_is_given_up_on_and_the_other_gpus_are_read(
    simulate: Callable[..., Sim],
) -> None:
    hang = {"function": "nvmlDeviceGetPowerUsage", "at": 10, "until": 40}
    sim = simulate(_two_gpus(hangs=[hang]), start=5)
    sim.reader.call_timeout_s = TIMEOUT_S
    assert [g.up for g in sim.reader.read().gpus] == [True, True]
    sim.clock.advance(5)
    node, took = _timed_read(sim)
    assert TIMEOUT_S <= took < TIMEOUT_S + 1.0  # waited for the deadline, not for the call
    assert node.nvml_up
    healthy, stuck = node.gpus
    assert healthy.up and healthy.processes[0].memory_bytes == GiB and healthy.processes[0].sm_ratio == 0.5
    assert healthy.power_watts is not None
    assert not stuck.up and stuck.hung_call == "nvmlDeviceGetPowerUsage"
    assert stuck.processes == () and stuck.memory_used_bytes is None  # nothing half-read is served
    assert node.errors[("nvmlDeviceGetPowerUsage", "ExporterTimeout")] == 1


def test_a_gpu_stuck_in_a_call_is_skipped_without_waiting_and_read_again_once_the_call_returns(
    simulate: Callable[..., Sim],
) -> None:
    hang = {"function": "nvmlDeviceGetComputeRunningProcesses_v3", "at": 10, "until": 40}
    sim = simulate(_two_gpus(hangs=[hang]), start=10)
    sim.reader.call_timeout_s = TIMEOUT_S
    first, _ = _timed_read(sim)
    assert first.gpus[1].hung_call == "nvmlDeviceGetComputeRunningProcesses_v3"
    calls_before = sim.fake.calls["nvmlDeviceGetMemoryInfo"]
    for _ in range(3):  # the later samples do not wait on the stuck GPU again, nor send it more calls
        sim.clock.advance(5)
        node, took = _timed_read(sim)
        assert took < TIMEOUT_S
        assert [g.up for g in node.gpus] == [True, False]
        assert node.gpus[0].processes[0].sm_ratio == 0.5
    assert sim.fake.calls["nvmlDeviceGetMemoryInfo"] == calls_before + 3  # GPU 0 only
    assert node.errors[("nvmlDeviceGetComputeRunningProcesses_v3", "ExporterTimeout")] == 1  # one hang, one count
    sim.clock.advance(25)  # t = 50: the call has returned; that late read is thrown away, stale
    _wait_idle(sim)
    sim.clock.advance(5)
    back = sim.reader.read()
    assert [g.up for g in back.gpus] == [True, True]
    assert back.gpus[1].hung_call is None
    assert back.gpus[1].processes[0].memory_bytes == 2 * GiB and back.gpus[1].processes[0].sm_ratio == 0.25


def test_an_nvml_init_that_hangs_leaves_nvml_down_and_is_not_retried_until_it_returns(
    simulate: Callable[..., Sim],
) -> None:
    sim = simulate(one_gpu({"pid": 1, "memory": "1GiB"}, faults={"init_hangs_until": 20}))
    sim.reader.call_timeout_s = TIMEOUT_S
    node, took = _timed_read(sim)
    assert not node.nvml_up and node.hung_call == "nvmlInit" and took < TIMEOUT_S + 1.0
    node, took = _timed_read(sim)
    assert not node.nvml_up and node.hung_call == "nvmlInit" and took < TIMEOUT_S
    assert sim.fake.calls["nvmlInitWithFlags"] + sim.fake.calls.get("nvmlInit_v2", 0) == 1  # not asked twice
    sim.clock.advance(20)
    _wait_idle(sim)
    up = sim.reader.read()
    assert up.nvml_up and up.hung_call is None
    assert up.gpus[0].processes[0].memory_bytes == GiB


def test_a_hung_call_is_served_as_such_and_the_gpu_comes_back_in_the_exposition(
    simulate: Callable[..., Sim],
) -> None:
    hang = {"function": "nvmlDeviceGetTemperature", "at": 10, "until": 20}
    sim = simulate(_two_gpus(hangs=[hang]), start=10)
    sim.reader.call_timeout_s = TIMEOUT_S
    sampler = Sampler(sim.reader, CommandNameResolver(nvml_name=sim.reader.process_name), SamplerOptions())
    text = _exposition(sampler)
    uuid1 = sim.scenario.gpu_uuid(1)
    hung = f'{c.EXPORTER_NVML_HUNG.name}{{call="nvmlDeviceGetTemperature",gpu="1",gpu_uuid="{uuid1}"}} 1.0'
    assert hung in text
    assert f'{c.GPU_UP.name}{{gpu="1",gpu_uuid="{uuid1}"}} 0.0' in text
    assert f'gpu_uuid="{uuid1}"' not in _lines_of(text, c.CONTAINER_MEMORY.name)  # no stale usage
    assert f'gpu_uuid="{sim.scenario.gpu_uuid(0)}"' in _lines_of(text, c.CONTAINER_MEMORY.name)
    sim.clock.advance(10)
    _wait_idle(sim)
    text = _exposition(sampler)
    assert c.EXPORTER_NVML_HUNG.name + "{" not in text
    assert f'{c.GPU_UP.name}{{gpu="1",gpu_uuid="{uuid1}"}} 1.0' in text
    assert f'gpu_uuid="{uuid1}"' in _lines_of(text, c.CONTAINER_MEMORY.name)


def _exposition(sampler: Sampler) -> str:
    sampler.sample_once()
    exposition = sampler.exposition
    assert exposition is not None
    return exposition.text.decode()


def _lines_of(text: str, name: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith(name + "{"))
