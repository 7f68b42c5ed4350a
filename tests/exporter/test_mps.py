"""MPS: the driver credits every client's activity to the MPS server; the exporter says what it knows.

The readings here are what a real NVIDIA H200 reported under MPS (``tests/fixtures/h200-real/mps-nvml.txt``):
the compute list holds the server and both clients, the MPS list only the clients, and the one utilisation
sample belongs to the server (smUtil 99, memUtil 24) while ``w-computeM`` ran 671 TFLOP/s and ``w-idleM``
only held memory.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client.utils import floatToGoString

from exporter.readings import GpmReading, GpuReading, NodeReading, ProcessReading
from exporter.render import families, render
from exporter.snapshot import MpsServer, Owner, OwnerResolver, Snapshot, attribute
from tests.conftest import H200_FIXTURES

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
            pid, name = rest.split(" ", 1)
            comm[int(pid)] = name
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
    assert f'gpuattr_gpu_mps_server_memory_bytes{{gpu="0",gpu_uuid="{UUID}"}} {floatToGoString(66 * MiB)}' in text
    unknown = [line for line in text.splitlines() if line.startswith("gpuattr_container_gpu_activity_unknown{")]
    assert len(unknown) == 2 and all('reason="mps_shared"' in line for line in unknown)
    assert "gpuattr_container_gpu_kernel_active_ratio{" not in text  # absent, not 0
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert not [line for line in samples if 'process="nvidia-cuda-mps' in line]  # the server is no owner
