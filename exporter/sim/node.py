"""A whole simulated GPU node from one scenario: fake NVML under the binding, and what goes with it."""

from __future__ import annotations

from pathlib import Path

from exporter.nvml.reader import NvmlReader
from exporter.sim import fake_nvml
from exporter.sim.clock import SimClock
from exporter.sim.scenario import Scenario, load_scenario
from exporter.snapshot import CommandNameResolver, OwnerResolver


class SimulatedNode:
    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        self.scenario = scenario
        self.clock = clock
        self.nvml = fake_nvml.install(scenario, clock)

    @classmethod
    def from_file(cls, path: str | Path, *, speed: float = 1.0, start: float = 0.0) -> SimulatedNode:
        return cls(load_scenario(path), SimClock(speed=speed, offset=start))

    def owner_resolver(self, reader: NvmlReader) -> OwnerResolver:
        # No /proc of the simulated node exists on this machine: names come from (fake) NVML.
        return CommandNameResolver("/nonexistent-proc", reader.process_name)

    def close(self) -> None:
        fake_nvml.uninstall()
