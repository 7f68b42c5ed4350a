"""MPS: the driver credits every client's activity to the MPS server; the exporter says what it knows.

The readings here are what a real NVIDIA H200 reported under MPS (``tests/fixtures/h200-real/mps-nvml.txt``):
the compute list holds the server and both clients, the MPS list only the clients, and the one utilisation
sample belongs to the server (smUtil 99, memUtil 24) while ``w-computeM`` ran 671 TFLOP/s and ``w-idleM``
only held memory.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common import catalog as c
from exporter.readings import GpmReading, GpuReading, NodeReading, ProcessReading
from exporter.render import families, render
from exporter.snapshot import CommandNameResolver, MpsServer, Owner, OwnerResolver, Snapshot, Usage, attribute
from tests.conftest import H200_FIXTURES, SCENARIOS, Sim
from tests.simulator.test_mps import BUSY, IDLE, SERVER, mps_gpu

MiB = 2**20
UUID = "GPU-a8c6ca6e-7bcb-4d25-e05a-cc3de6aa2830"


class _Names(OwnerResolver):
    def __init__(self, names: dict[int, str]) -> None:
        self.names = names

    def begin(self, pids: object) -> None:
        self.asked = set(pids)  # type: ignore[call-overload]

    def owner(self, pid: int) -> Owner | None:
        return Owner(process=self.names[pid]) if pid in self.names else None

    def prune(self, live_pids: object) -> None:
        pass


def _recorded(
    path: Path = H200_FIXTURES / "mps-nvml.txt",
) -> tuple[dict[int, int], set[int], dict[int, tuple[int, int]], dict[int, str]]:
    compute: dict[int, int] = {}
    mps: set[int] = set()
    util: dict[int, tuple[int, int]] = {}
    comm: dict[int, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "compute":
            compute = {pid: mib * MiB for pid, mib in ast.literal_eval(rest)}
        elif kind == "mps":
            mps = {pid for pid, _ in ast.literal_eval(rest)}
        elif kind == "util":
            pid, sm, mem, _stamp = (int(x) for x in rest.split())
            util[pid] = (sm, mem)
        elif kind == "comm":
            number, name = rest.split(" ", 1)
            comm[int(number)] = name
    return compute, mps, util, comm


def _reading(*, only_client: int | None = None, gpm: GpmReading | None = None) -> tuple[NodeReading, dict[int, str]]:
    """The recorded GPU as the reader builds it: clients from the MPS list, the server by its name.
    ``only_client``: as if the other client had not started."""
    compute, mps, util, comm = _recorded()
    procs = []
    for pid, used in sorted(compute.items()):
        if only_client is not None and pid in mps and pid != only_client:
            continue
        role = "mps_client" if pid in mps else "mps_server" if comm[pid].startswith("nvidia-cuda-mps") else ""
        sm, mem = util.get(pid, (0, 0))
        procs.append(ProcessReading(pid, used, sm / 100, mem / 100, role=role))
    gpu = GpuReading(
        0, UUID, "NVIDIA H200", up=True, processes=tuple(procs), process_activity_known=True, mps=True, gpm=gpm
    )
    owners = {pid: name for pid, name in comm.items() if not name.startswith("nvidia-cuda-mps")}
    return NodeReading(timestamp=1.0, driver_version="580.159.04", gpus=(gpu,), nvml_up=True), owners


def test_the_mps_server_is_not_a_workload_and_its_activity_is_the_gpus() -> None:
    node, owners = _reading()
    servers: list[MpsServer] = []
    usages, vanished = attribute(node, _Names(owners), mps=servers)
    assert vanished == 0
    assert {u.owner.process for u in usages} == {"w-computeM", "w-idleM"}  # no nvidia-cuda-mps owner
    (server,) = servers
    assert server.kernel_ratio == pytest.approx(0.99) and server.memory_ratio == pytest.approx(0.24)
    assert server.memory_bytes == 66 * MiB and server.clients == 2


def test_two_mps_clients_have_memory_but_unknown_activity_never_zero() -> None:
    node, owners = _reading()
    usages, _ = attribute(node, _Names(owners), mps=[])
    by = {u.owner.process: u for u in usages}
    assert by["w-computeM"].memory_bytes == 1000 * MiB and by["w-idleM"].memory_bytes == 2658 * MiB
    for usage in usages:
        assert usage.activity_unknown == "mps_shared"
        assert usage.kernel_ratio is None and usage.sm_ratio is None and usage.bandwidth_ratio is None
        assert usage.dcgm == {}


def test_the_only_mps_client_gets_the_servers_activity() -> None:
    _compute, _mps, _util, comm = _recorded()
    busy = next(pid for pid, name in comm.items() if name == "w-computeM")
    gpm = GpmReading(sm_active=0.95, sm_occupancy=0.5, tensor_active=0.4, dram_bandwidth=0.3)
    node, owners = _reading(only_client=busy, gpm=gpm)
    servers: list[MpsServer] = []
    (usage,) = attribute(node, _Names(owners), mps=servers)[0]
    assert usage.owner.process == "w-computeM" and usage.activity_unknown == ""
    assert usage.kernel_ratio == pytest.approx(0.99) and usage.kernel_source == "mps"
    assert usage.sm_ratio == pytest.approx(0.95) and usage.sm_source == "gpm"
    assert usage.bandwidth_ratio == pytest.approx(0.3) and usage.bandwidth_source == "gpm"
    assert servers[0].clients == 1


def test_the_exposition_marks_unknown_activity_and_serves_the_mps_figures() -> None:
    node, owners = _reading()
    servers: list[MpsServer] = []
    usages, _ = attribute(node, _Names(owners), mps=servers)
    text = render(families(Snapshot(node, usages, 0, mps=servers)), 0).text.decode()
    assert f'gpuattr_gpu_mps_kernel_active_ratio{{gpu="0",gpu_uuid="{UUID}"}} 0.99' in text
    assert f'gpuattr_gpu_mps_clients{{gpu="0",gpu_uuid="{UUID}"}} 2.0' in text
    assert f'gpuattr_gpu_mps_server_memory_bytes{{gpu="0",gpu_uuid="{UUID}"}} {66 * MiB:.7e}' in text
    unknown = [line for line in text.splitlines() if line.startswith("gpuattr_container_gpu_activity_unknown{")]
    assert len(unknown) == 2 and all('reason="mps_shared"' in line for line in unknown)
    assert "gpuattr_container_gpu_kernel_active_ratio{" not in text  # absent, not 0
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert not [line for line in samples if 'process="nvidia-cuda-mps' in line]  # the server is no owner


# --- through the real binding, on the simulated driver -------------------------------------------------


def _sampled(simulate: Callable[..., Sim], raw: dict[str, Any]) -> tuple[NodeReading, list[Usage], list[MpsServer]]:
    sim = simulate(raw, start=10)
    sim.reader.read()
    sim.clock.advance(5)
    node = sim.reader.read()
    servers: list[MpsServer] = []
    usages, _ = attribute(node, CommandNameResolver("/nonexistent", sim.reader.process_name), mps=servers)
    return node, usages, servers


def test_the_reader_tells_the_mps_server_from_its_clients(simulate: Callable[..., Sim]) -> None:
    node, usages, servers = _sampled(simulate, mps_gpu())
    gpu = node.gpus[0]
    assert gpu.mps
    roles = {p.pid: p.role for p in gpu.processes}
    assert roles == {SERVER: "mps_server", BUSY: "mps_client", IDLE: "mps_client"}
    compute, _mps, _util, _comm = _recorded()
    assert {p.pid: p.memory_bytes for p in gpu.processes} == compute  # to the MiB, as the real driver said
    by = {u.owner.process: u.memory_bytes for u in usages}
    assert by == {"w-computeM": compute[BUSY], "w-idleM": compute[IDLE]}
    assert {u.owner.process for u in usages} == {"w-computeM", "w-idleM"}
    assert all(u.activity_unknown == "mps_shared" and u.kernel_ratio is None for u in usages)
    (server,) = servers
    assert server.kernel_ratio == pytest.approx(0.99) and server.clients == 2


def test_the_busy_mps_client_alone_gets_its_kernel_time_and_its_gpm_sm_activity(simulate: Callable[..., Sim]) -> None:
    raw = mps_gpu()
    raw["processes"] = [p for p in raw["processes"] if p["pid"] != IDLE]
    node, usages, _ = _sampled(simulate, raw)
    (usage,) = usages
    assert usage.kernel_ratio == pytest.approx(0.99) and usage.kernel_source == "mps"
    device = node.gpus[0].gpm
    assert device is not None and usage.sm_ratio is not None
    assert usage.sm_ratio == pytest.approx(device.sm_active) and usage.sm_ratio > 0.9


def test_a_gpu_without_mps_has_no_roles(simulate: Callable[..., Sim]) -> None:
    raw = {
        "name": "plain",
        "gpus": [{"index": 0, "model": "NVIDIA H200"}],
        "processes": [{"pid": 7, "name": "nvidia-cuda-mps-server", "gpus": [0], "memory": "1GiB", "sm": 0.5}],
    }
    node, usages, servers = _sampled(simulate, raw)
    assert not node.gpus[0].mps and servers == []
    assert usages[0].kernel_ratio == pytest.approx(0.5)  # no MPS list: a process of that name is a workload


def test_the_shipped_mps_scenario_says_mps_in_the_allocations_and_never_idle_for_the_clients(tmp_path: Path) -> None:
    from common.exposition import scrape
    from exporter.app import build
    from exporter.settings import ExporterSettings

    exporter = build(
        ExporterSettings(
            simulate=str(SCENARIOS / "h200-mps-node.yaml"),
            listen="127.0.0.1:0",
            kubernetes=True,
            sim_start=60.0,
            interval=0.5,
        )
    )
    exporter.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            metrics = scrape(exporter.server.url, timeout_s=5)
            taken = sum(v for _, v in metrics.get(c.EXPORTER_SAMPLES.name, []))
            if (taken >= 3 and metrics.get(c.CONTAINER_ALLOCATED.name)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        exporter.stop()
    sharing = {lbl["pod"]: lbl["sharing"] for lbl, _ in metrics[c.CONTAINER_ALLOCATED.name]}
    assert sharing["embed-encoder-6f8b9c7d5-q2w7x"] == "mps" and sharing["jupyter-carol-0"] == "mps"
    assert "time-slicing" in {sharing[p] for p in sharing if p.startswith(("finetune", "nightly"))}
    unknown = {lbl["pod"]: lbl["reason"] for lbl, _ in metrics[c.CONTAINER_ACTIVITY_UNKNOWN.name]}
    assert unknown == {"embed-encoder-6f8b9c7d5-q2w7x": "mps_shared", "jupyter-carol-0": "mps_shared"}
    kernel = {lbl["pod"] for lbl, _ in metrics.get(c.CONTAINER_KERNEL_ACTIVE.name, [])}
    assert not kernel & set(unknown)  # unknown is absent, never 0
    owners = {lbl["pod"] for lbl, _ in metrics[c.CONTAINER_MEMORY.name]}
    assert not [p for p in owners if "mps-control-daemon" in p]  # the device plugin's MPS daemon is no workload
    assert metrics[c.GPU_MPS_KERNEL_ACTIVE.name][0][1] > 0.9
