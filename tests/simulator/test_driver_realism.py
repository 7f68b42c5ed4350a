"""The simulated driver against what a real H200 reported (``tests/fixtures/h200-real/``): tiny kernels read
busy in NVML and idle in GPM, and time-slicing swings the per-sample split while each mean holds."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from typing import Any

import pynvml
import pytest

from simulator.fake_nvml import swing_split
from tests.conftest import H200_FIXTURES, Sim
from tests.simulator.nvml_calls import gpm, handle, now_us, samples, samples_info


def pmon_sm(name: str) -> dict[int, list[int]]:
    """pid -> the sm % column of an ``nvidia-smi pmon`` capture, '-' rows left out."""
    out: dict[int, list[int]] = {}
    for line in (H200_FIXTURES / name).read_text().splitlines():
        cols = line.split()
        if line.startswith("#") or len(cols) < 4 or not cols[1].isdigit() or not cols[3].isdigit():
            continue
        out.setdefault(int(cols[1]), []).append(int(cols[3]))
    return out


def exporter_value(name: str, metric: str) -> float:
    match = re.search(rf"^{metric}\{{[^}}]*\}} (\S+)$", (H200_FIXTURES / name).read_text(), re.M)
    assert match is not None, metric
    return float(match.group(1))


# --- tiny kernels: busy by time, idle SMs ---------------------------------------------------------------

TINY = {
    "pid": 597,
    "name": "gpuattr-tiny",
    "gpus": [0],
    "memory": "612MiB",
    "sm": 0.2,
    "sm_fraction": 0.00125,
    "occupancy": 0.05,
    "tensor_fraction": 0.0,
}


def test_a_launch_bound_process_reads_a_fifth_in_nvml_and_almost_nothing_in_gpm(simulate: Callable[..., Sim]) -> None:
    sim = simulate({"name": "tiny", "gpus": [{"index": 0, "model": "NVIDIA H200"}], "processes": [TINY]}, start=10)
    dev = handle(0)
    since = now_us(sim.clock)
    activity = gpm(dev, sim.clock, 2)
    sm, mem = samples(dev, since)[597]
    real_sm = pmon_sm("tiny-kernels-pmon.txt")[597]
    assert min(real_sm) <= sm <= max(real_sm) and mem == 0  # 19..27 % on the real GPU
    assert pynvml.nvmlDeviceGetUtilizationRates(dev).gpu == sm
    assert activity["sm_active"] < 0.001
    tiny = "tiny-kernels-exporter.prom"
    real_active = exporter_value(tiny, "gpuattr_gpu_sm_active_ratio")
    real_occupancy = exporter_value(tiny, "gpuattr_gpu_sm_occupancy_ratio")
    assert real_active / 1.5 < activity["sm_active"] < real_active * 1.5
    assert real_occupancy / 1.5 < activity["sm_occupancy"] < real_occupancy * 1.5
    assert activity["dram_bandwidth"] < 1e-4 and activity["tensor_active"] == 0.0
    assert sm / 100 / activity["sm_active"] > 500  # the real exporter read 760 times the SM activity


def test_occupancy_defaults_to_six_tenths_of_sm_active_and_mixes_by_busy_sms(simulate: Callable[..., Sim]) -> None:
    plain = {"pid": 1, "name": "a", "gpus": [0], "memory": "1GiB", "sm": 0.5, "sm_fraction": 0.8}
    sim = simulate({"name": "occ", "gpus": [{"index": 0}], "processes": [plain]}, start=10)
    activity = gpm(handle(0), sim.clock, 2)
    assert activity["sm_occupancy"] == pytest.approx(0.4 * 0.6)
    other = {"pid": 2, "name": "b", "gpus": [0], "memory": "1GiB", "sm": 0.25, "sm_fraction": 0.4, "occupancy": 0.1}
    sim = simulate({"name": "occ", "gpus": [{"index": 0}], "processes": [plain, other]}, start=10)
    activity = gpm(handle(0), sim.clock, 2)
    assert activity["sm_active"] == pytest.approx(0.4 + 0.1)
    assert activity["sm_occupancy"] == pytest.approx(0.4 * 0.6 + 0.1 * 0.1)


# --- time-slice swings ----------------------------------------------------------------------------------


def three_workloads(swing: float, name: str = "three-workloads") -> dict[str, Any]:
    """The real run: an idle process holding 4.6 GiB, a matmul loop and a device-to-device copy."""
    return {
        "name": name,
        "gpus": [{"index": 0, "model": "NVIDIA H200", "timeslice_swing": swing}],
        "processes": [
            {"pid": 472, "name": "gpuattr-idle", "gpus": [0], "memory": "4706MiB"},
            {"pid": 473, "name": "gpuattr-compute", "gpus": [0], "memory": "1002MiB", "sm": 0.44, "mem_bw": 0.29},
            {"pid": 474, "name": "gpuattr-copy", "gpus": [0], "memory": "4706MiB", "sm": 0.54, "mem_bw": 0.35},
        ],
    }


def sample_series(
    simulate: Callable[..., Sim], raw: dict[str, Any], intervals: int = 150, every: float = 2.0
) -> list[dict[int, tuple[int, int]]]:
    """Per-process (smUtil, memUtil) of each interval, as an exporter polling every ``every`` seconds sees them."""
    sim = simulate(raw, start=10)
    dev = handle(0)
    series = []
    for _ in range(intervals):
        since = now_us(sim.clock)
        sim.clock.advance(every)
        found = samples(dev, since)
        assert samples_info(dev, since) == found  # both calls read the same driver sample
        series.append(found)
    return series


def sm_of(series: list[dict[int, tuple[int, int]]], pid: int) -> list[int]:
    return [interval.get(pid, (0, 0))[0] for interval in series]


def test_the_split_swings_per_interval_while_the_sum_and_the_means_hold(simulate: Callable[..., Sim]) -> None:
    series = sample_series(simulate, three_workloads(1.0))
    compute, copy = sm_of(series, 473), sm_of(series, 474)
    real = pmon_sm("three-workloads-pmon.txt")
    assert all(472 not in interval for interval in series)  # the idle process stays without samples
    assert all(abs(a + b - 98) <= 1 for a, b in zip(compute, copy, strict=True))  # 44 + 54 in every interval
    real_spread = max(real[473]) - min(real[473])  # 11..99 on the real GPU
    assert max(compute) - min(compute) > real_spread / 2
    assert statistics.mean(compute) == pytest.approx(44, abs=4)
    assert statistics.mean(copy) == pytest.approx(54, abs=4)
    assert statistics.median(compute) < statistics.median(copy)


def test_memory_activity_follows_the_swing(simulate: Callable[..., Sim]) -> None:
    series = sample_series(simulate, three_workloads(1.0), intervals=40)
    swung = [interval[473] for interval in series if interval.get(473, (0, 0))[0] >= 20]
    assert len({sm for sm, _ in swung}) > 5
    assert all(mem == pytest.approx(sm * 0.29 / 0.44, abs=1.5) for sm, mem in swung)


def test_the_swing_is_the_same_in_every_run_and_differs_between_scenarios(simulate: Callable[..., Sim]) -> None:
    first = sample_series(simulate, three_workloads(1.0), intervals=30)
    again = sample_series(simulate, three_workloads(1.0), intervals=30)
    other = sample_series(simulate, three_workloads(1.0, name="another-node"), intervals=30)
    assert first == again
    assert sm_of(first, 473) != sm_of(other, 473)


def test_without_the_knob_every_sample_reads_the_mean_and_a_smaller_knob_swings_less(
    simulate: Callable[..., Sim],
) -> None:
    steady = sample_series(simulate, three_workloads(0.0), intervals=20)
    assert all(interval == {473: (44, 29), 474: (54, 35)} for interval in steady)
    wide = sm_of(sample_series(simulate, three_workloads(1.0), intervals=60), 473)
    narrow = sm_of(sample_series(simulate, three_workloads(0.3), intervals=60), 473)
    assert statistics.pstdev(narrow) < statistics.pstdev(wide) / 2


def test_a_lone_process_does_not_swing(simulate: Callable[..., Sim]) -> None:
    raw = three_workloads(1.0)
    raw["processes"] = raw["processes"][1:2]
    assert all(interval == {473: (44, 29)} for interval in sample_series(simulate, raw, intervals=10))


@pytest.mark.parametrize("seed", [f"slot-{n}" for n in range(50)])
def test_a_split_keeps_the_sum_and_no_share_passes_one(seed: str) -> None:
    split = swing_split({1: 0.9, 2: 0.9, 3: 0.0}, 1.0, seed)
    assert sum(split.values()) == pytest.approx(1.8)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in split.values()) and split[3] == 0.0
    assert swing_split({1: 0.3, 2: 0.6}, 0.0, seed) == {1: 0.3, 2: 0.6}
