"""The real-GPU check for tiny kernels and MPS judges correctly: what the exporter served on a real H200 before
(``tests/fixtures/h200-real/``) fails it, and what it serves now for the same readings passes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from exporter.app import build
from exporter.settings import ExporterSettings
from tests.bench.scripts import bench_script
from tests.conftest import H200_FIXTURES
from tests.simulator.test_mps import BUSY, IDLE, mps_gpu

MiB = 2**20
TINY_PID = 597  # the PID of the real run (tiny-kernels-pmon.txt)


@pytest.fixture(scope="module")
def check() -> Iterator[ModuleType]:
    with bench_script("real_gpu_mps_check") as module:
        yield module


def _pages(raw: dict[str, Any], tmp_path: Path, count: int = 3) -> list[str]:
    """Expositions of the exporter on a simulated node built from the real readings (no Kubernetes)."""
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    exporter = build(ExporterSettings(simulate=str(path), listen="127.0.0.1:0", interval=60, sim_start=10))
    try:
        pages = []
        for _ in range(count + 1):
            time.sleep(0.3)  # a simulated interval with activity in it
            exporter.sampler.sample_once()
            exposition = exporter.sampler.exposition
            assert exposition is not None
            pages.append(exposition.text.decode())
        return pages[1:]  # the first sample has no interval behind it
    finally:
        exporter.stop()


def test_the_old_tiny_kernel_reading_fails_and_todays_passes(check: ModuleType, tmp_path: Path) -> None:
    pmon = check.parse_pmon((H200_FIXTURES / "tiny-kernels-pmon.txt").read_text())
    assert sorted(pmon[TINY_PID]) == [0.19, 0.19, 0.19, 0.19, 0.19, 0.2, 0.24, 0.27]
    memory = {TINY_PID: 612 * MiB}
    old, _ = check.read_scrapes([(H200_FIXTURES / "tiny-kernels-exporter.prom").read_text()], 0)
    before = check.check_tiny({check.TINY: old["gpuattr-tiny"]}, pmon, memory, TINY_PID)
    assert [c.ok for c in before] == [True, False, False]  # memory right; no kernel time; no SM activity

    raw = {
        "name": "tiny",
        "gpus": [{"index": 0, "model": "NVIDIA H200"}],
        "processes": [
            {
                "pid": TINY_PID,
                "name": "gpuattr-tiny",
                "gpus": [0],
                "memory": "612MiB",
                "sm": 0.19,
                "sm_fraction": 0.0013,
                "tensor_fraction": 0.0,
            }
        ],
    }
    now, _ = check.read_scrapes(_pages(raw, tmp_path), 0)
    after = check.check_tiny(now, pmon, memory, TINY_PID)
    assert all(c.ok for c in after), after


def test_the_old_mps_reading_fails_and_todays_passes(check: ModuleType, tmp_path: Path) -> None:
    memory = {BUSY: 1000 * MiB, IDLE: 2658 * MiB}
    pids = {"w-computeM": BUSY, "w-idleM": IDLE}
    clients = ("w-computeM", "w-idleM")
    old, old_owners = check.read_scrapes([(H200_FIXTURES / "mps-exporter.prom").read_text()], 0)
    before = {c.what: c.ok for c in check.check_mps(old, old_owners, memory, pids, clients)}
    assert before["MPS: w-computeM memory equals nvidia-smi's"]  # memory was always right
    assert not before["MPS: w-computeM never reported idle while w-computeM computes"]  # it read 0.0
    assert not before["MPS: the server is no owner"]

    now, owners = check.read_scrapes(_pages(mps_gpu(), tmp_path), 0)
    after = check.check_mps(now, owners, memory, pids, clients)
    assert all(c.ok for c in after), after
