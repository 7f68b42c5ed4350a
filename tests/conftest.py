"""Fixtures shared by the whole suite: a simulated node under the real pynvml binding."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.nvml.reader import NvmlReader
from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.scenario import Scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
FIXTURES = ROOT / "tests" / "fixtures"
VLLM_FIXTURES = FIXTURES / "vllm-0.32-cpu"
"""Real output of a vLLM 0.32 server (CPU build): its start-up log, config and /metrics pages."""
H200_FIXTURES = FIXTURES / "h200-real"
"""What the driver of a real NVIDIA H200 reported under time-slicing, tiny kernels and MPS."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/exporter/golden/*.prom from what the exporter serves now (tests/exporter/test_golden.py)",
    )


@dataclass
class Sim:
    scenario: Scenario
    clock: SimClock
    fake: fake_nvml.FakeNvmlLibrary
    reader: NvmlReader


@pytest.fixture
def simulate() -> Iterator[Callable[..., Sim]]:
    """``simulate(scenario_dict, start=0.0, interval=5.0)`` installs a fake NVML with a manual clock."""
    readers: list[NvmlReader] = []

    def make(raw: dict[str, Any] | Scenario, *, start: float = 0.0, interval: float = 5.0, gpm: bool = True) -> Sim:
        scenario = raw if isinstance(raw, Scenario) else parse_scenario(raw)
        clock = SimClock(manual=True, offset=start, start_wall=1_700_000_000.0)
        fake = fake_nvml.install(scenario, clock)
        reader = NvmlReader(wall_clock=clock.wall, monotonic=clock.now, use_gpm=gpm, interval_s=interval)
        readers.append(reader)
        return Sim(scenario, clock, fake, reader)

    yield make
    for reader in readers:
        reader.shutdown()
    fake_nvml.uninstall()


def one_gpu(*processes: dict[str, Any], model: str = "NVIDIA H100 80GB HBM3", **extra: Any) -> dict[str, Any]:
    """A scenario with a single GPU and the given processes (each gets ``gpus: [0]`` unless it says otherwise)."""
    procs = [{"gpus": [0], "name": f"proc{p['pid']}", **p} for p in processes]
    return {"name": "test", "gpus": [{"index": 0, "model": model}], "processes": procs, **extra}
