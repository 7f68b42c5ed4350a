"""A whole simulated GPU node from one scenario.

The fake NVML sits under the binding; a fake ``/proc`` tree gives each process its command line and
cgroup; with Kubernetes on, an emulated API server serves the scenario's pods and a real gRPC server
on a unix socket answers the kubelet pod-resources API. The exporter then runs its production code
path against all of them.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from simulator import fake_nvml
from simulator.clock import SimClock
from simulator.proc_tree import FakeProcTree
from simulator.scenario import Scenario, load_scenario


class SimulatedNode:
    def __init__(self, scenario: Scenario, clock: SimClock) -> None:
        self.scenario = scenario
        self.clock = clock
        self.nvml = fake_nvml.install(scenario, clock)
        self.proc = FakeProcTree(scenario, clock)
        self.proc.sync()
        self.api: Any = None
        self.kubelet: Any = None
        self.dcgm: Any = None
        self.vllm: list[Any] = []
        self._socket_dir: str | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, speed: float = 1.0, start: float = 0.0) -> SimulatedNode:
        return cls(load_scenario(path), SimClock(speed=speed, offset=start))

    def start_kubernetes(self) -> tuple[str, str]:
        """Serve the scenario's pods and allocations; returns (API server URL, pod-resources socket)."""
        from simulator.allocations import allocatable, sim_pods
        from simulator.kube_api import SimApiServer
        from simulator.kubelet import PodResourcesServer

        self.api = SimApiServer(self.scenario)
        self.api.start(at=self.clock.now())
        # AF_UNIX paths are limited to 107 bytes: keep the socket under a short temporary directory.
        self._socket_dir = tempfile.mkdtemp(prefix="gpuattr-kubelet-", dir="/tmp")
        socket_path = f"{self._socket_dir}/kubelet.sock"
        devices = allocatable(self.scenario)  # checks every pod's device ids, so a bad one fails here
        self.kubelet = PodResourcesServer(
            socket_path, lambda: sim_pods(self.scenario, self.clock.now()), lambda: devices
        )  # the pods alive at the time of each call
        self.kubelet.start()
        return str(self.api.url), socket_path

    def sync(self) -> None:
        """Bring the node to the clock's time: /proc entries, and pods created or deleted on the API server."""
        self.proc.sync()
        if self.api is not None:
            self.api.follow(self.clock.now())

    def start_dcgm_exporter(self, hostname: str | None = None) -> str:
        """Serve a simulated dcgm-exporter page for this node; returns its URL."""
        from simulator.dcgm_exporter import SimDcgmExporter

        self.dcgm = SimDcgmExporter(self.nvml, self.scenario.dcgm_exporter, hostname or self.scenario.node.name)
        self.dcgm.start()
        return str(self.dcgm.url)

    def start_vllm_servers(self) -> list[Any]:
        """Serve each vLLM server of the scenario (its /metrics and /logs); none when it has no vllm blocks.

        Returns the started :class:`simulator.vllm.SimVllmServer` objects (``url``, ``namespace``, ``pod``,
        ``model``)."""
        from simulator.vllm import vllm_servers

        servers = vllm_servers(self.scenario, self.nvml)
        for server in servers:
            server.start()
        self.vllm.extend(servers)
        return servers

    def close(self) -> None:
        for server in self.vllm:
            server.stop()
        self.vllm.clear()
        if self.dcgm is not None:
            self.dcgm.stop()
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.api is not None:
            self.api.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self.proc.close()
        fake_nvml.uninstall()
