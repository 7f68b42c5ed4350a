"""An MPS-shared GPU reads as a real H200 driver reported it (``tests/fixtures/h200-real/mps-*``): the server
and the clients in the compute list, the clients alone in the MPS list, utilisation samples for the server
only, device activity from the clients."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from simulator.allocations import allocatable, sim_pods
from simulator.dcgm_exporter import render_page
from simulator.proc_tree import FakeProcTree
from simulator.scenario import ScenarioError, load_scenario, parse_scenario
from tests.conftest import H200_FIXTURES, ROOT, SCENARIOS, Sim
from tests.simulator.nvml_calls import gpm, handle, now_us, pids_and_mib, raw_process_list, samples, samples_info

SERVER, BUSY, IDLE = 548, 514, 515  # the PIDs of the real run


def fixture_lists() -> dict[str, Any]:
    """What ``mps-nvml.txt`` recorded: the compute and MPS lists, [(pid, MiB)], and the one sample."""
    out: dict[str, Any] = {}
    for line in (H200_FIXTURES / "mps-nvml.txt").read_text().splitlines():
        key, _, rest = line.partition(" ")
        if key in ("compute", "mps"):
            out[key] = ast.literal_eval(rest)
        elif key == "util":
            pid, sm, mem, _stamp = (int(v) for v in rest.split())
            out["util"] = {pid: (sm, mem)}
    return out


def mps_gpu(*extra: dict[str, Any]) -> dict[str, Any]:
    """The real run: an MPS server (66 MiB), a busy client (matmul, 1,000 MiB) and an idle one (2,658 MiB)."""
    procs = [
        {"pid": IDLE, "name": "w-idleM", "gpus": [0], "memory": "2658MiB", "mps_client": True},
        {
            "pid": BUSY,
            "name": "w-computeM",
            "gpus": [0],
            "memory": "1000MiB",
            "mps_client": True,
            "sm": 0.99,
            "mem_bw": 0.24,
            "sm_fraction": 0.97,
            "tensor_fraction": 0.97,
            "occupancy": 0.15,
        },
        {"pid": SERVER, "name": "nvidia-cuda-mps-server", "gpus": [0], "memory": "66MiB", "mps_server": True},
        *extra,
    ]
    return {
        "name": "mps",
        "gpus": [{"index": 0, "model": "NVIDIA H200", "mps": True}],
        "processes": procs,
    }


def test_the_compute_list_holds_the_server_first_and_the_clients_as_the_real_driver_did(
    simulate: Callable[..., Sim],
) -> None:
    simulate(mps_gpu(), start=10)
    dev = handle(0)
    real = fixture_lists()
    expected = sorted(real["compute"], key=lambda p: p[0] != SERVER)  # server first, as recorded
    assert pids_and_mib(pynvml.nvmlDeviceGetComputeRunningProcesses_v3(dev))[0] == (SERVER, 66)
    assert sorted(pids_and_mib(pynvml.nvmlDeviceGetComputeRunningProcesses_v3(dev))) == sorted(expected)
    assert sorted(pids_and_mib(pynvml.nvmlDeviceGetComputeRunningProcesses_v2(dev))) == sorted(expected)
    assert sorted(raw_process_list("nvmlDeviceGetComputeRunningProcesses", dev)) == sorted(expected)


def test_the_mps_list_holds_the_clients_only(simulate: Callable[..., Sim]) -> None:
    simulate(mps_gpu(), start=10)
    dev = handle(0)
    clients = sorted(fixture_lists()["mps"])
    assert clients == [(BUSY, 1000), (IDLE, 2658)]
    assert sorted(pids_and_mib(pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(dev))) == clients
    assert sorted(pids_and_mib(pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v2(dev))) == clients
    assert sorted(pids_and_mib(pynvml.nvmlDeviceGetMPSComputeRunningProcesses(dev))) == clients
    assert sorted(raw_process_list("nvmlDeviceGetMPSComputeRunningProcesses", dev)) == clients


def test_a_gpu_without_mps_has_an_empty_mps_list(simulate: Callable[..., Sim]) -> None:
    simulate(
        {"name": "plain", "gpus": [{"index": 0}], "processes": [{"pid": 7, "name": "a", "gpus": [0], "memory": 1}]}
    )
    dev = handle(0)
    assert pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(dev) == []
    assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v3(dev)] == [7]


def test_utilisation_samples_go_to_the_server_only_with_the_clients_combined_activity(
    simulate: Callable[..., Sim],
) -> None:
    sim = simulate(mps_gpu(), start=10)
    dev = handle(0)
    since = now_us(sim.clock)
    sim.clock.advance(2)
    assert samples(dev, since) == fixture_lists()["util"] == {SERVER: (99, 24)}
    assert samples_info(dev, since) == {SERVER: (99, 24)}


def test_the_servers_sample_adds_up_its_clients_and_caps_at_100(simulate: Callable[..., Sim]) -> None:
    second = {"pid": 600, "name": "w-computeN", "gpus": [0], "memory": "1GiB", "mps_client": True}
    sim = simulate(mps_gpu({**second, "sm": 0.3, "mem_bw": 0.5}), start=10)
    dev = handle(0)
    since = now_us(sim.clock)
    sim.clock.advance(2)
    assert samples(dev, since) == {SERVER: (100, 74)}  # 99 + 30 kernel-time capped; 24 + 50 memory


def test_a_client_that_starts_mid_window_counts_for_its_share_of_the_window(simulate: Callable[..., Sim]) -> None:
    late = {"pid": 700, "name": "late", "gpus": [0], "memory": "1GiB", "mps_client": True, "start": 11}
    raw = mps_gpu({**late, "sm": 0.4, "mem_bw": 0.2})
    raw["processes"][1]["sm"] = 0.5
    sim = simulate(raw, start=10)
    dev = handle(0)
    since = now_us(sim.clock)
    sim.clock.advance(2)
    assert samples(dev, since) == {SERVER: (50 + 20, 24 + 10)}  # the late client ran in half of the window


def test_idle_clients_give_the_server_no_sample(simulate: Callable[..., Sim]) -> None:
    raw = mps_gpu()
    raw["processes"] = [p for p in raw["processes"] if p["pid"] != BUSY]
    sim = simulate(raw, start=10)
    dev = handle(0)
    since = now_us(sim.clock)
    sim.clock.advance(2)
    assert samples(dev, since) == {}


def test_the_server_is_named_as_the_driver_names_it_and_its_comm_is_cut_as_the_kernel_cuts_it(
    simulate: Callable[..., Sim], tmp_path: Path
) -> None:
    sim = simulate(mps_gpu(), start=10)
    handle(0)
    assert pynvml.nvmlSystemGetProcessName(SERVER) == "nvidia-cuda-mps-server"
    assert pynvml.nvmlSystemGetProcessName(BUSY) == "w-computeM"
    with FakeProcTree(sim.scenario, sim.clock, tmp_path / "proc"):
        comm = (tmp_path / "proc" / str(SERVER) / "comm").read_text().strip()
    assert f"comm {SERVER} {comm}" in (H200_FIXTURES / "mps-nvml.txt").read_text()


def test_device_utilisation_gpm_and_dcgm_follow_the_clients(simulate: Callable[..., Sim]) -> None:
    sim = simulate(mps_gpu(), start=10)
    dev = handle(0)
    rates = pynvml.nvmlDeviceGetUtilizationRates(dev)
    assert (rates.gpu, rates.memory) == (99, 24)
    activity = gpm(dev, sim.clock, 2)
    assert activity["sm_active"] == pytest.approx(0.99 * 0.97)  # the busy client's SMs, not the server's none
    assert activity["sm_occupancy"] == pytest.approx(0.99 * 0.97 * 0.15)
    assert activity["dram_bandwidth"] == pytest.approx(0.24)
    page = render_page(sim.fake, sim.scenario.dcgm_exporter, "node")
    sm_active = re.search(r"^DCGM_FI_PROF_SM_ACTIVE\{.*\} (\S+)$", page, re.M)
    assert sm_active is not None and float(sm_active.group(1)) == pytest.approx(0.99 * 0.97, abs=1e-6)
    used = pynvml.nvmlDeviceGetMemoryInfo(dev).used
    assert used == (66 + 1000 + 2658) * 2**20 + int(sim.scenario.gpus[0].reserved_memory)


def test_clients_and_server_come_and_go_with_their_lifetimes(simulate: Callable[..., Sim]) -> None:
    raw = mps_gpu()
    raw["processes"][1]["stop"] = 20  # the busy client exits at second 20
    sim = simulate(raw, start=25)
    dev = handle(0)
    assert sorted(pids_and_mib(pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(dev))) == [(IDLE, 2658)]
    since = now_us(sim.clock)
    sim.clock.advance(2)
    assert samples(dev, since) == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda raw: raw["gpus"][0].pop("mps"),
            f"process {IDLE} is an MPS client (mps_client: true) on GPU 0, which does not run MPS",
        ),
        (
            lambda raw: raw["processes"].pop(),
            f"process {IDLE} is an MPS client on GPU 0 but no MPS server (mps_server: true) on that GPU is alive",
        ),
        (
            lambda raw: raw["processes"][2].update(start=30),
            f"process {IDLE} is an MPS client on GPU 0 but no MPS server",
        ),
        (
            lambda raw: raw["processes"][2].update(stop=30),
            f"process {IDLE} is an MPS client on GPU 0 but no MPS server",
        ),
        (
            lambda raw: raw["processes"][0].pop("mps_client"),
            f"process {IDLE} is on MPS GPU 0 but is neither its MPS server nor a client",
        ),
        (
            lambda raw: raw["processes"][2].update(sm=0.5),
            f"process {SERVER}: an MPS server has no 'sm' of its own",
        ),
        (
            lambda raw: raw["processes"][2].update(mps_client=True),
            f"process {SERVER}: an MPS server is not also an MPS client",
        ),
        (
            lambda raw: raw["processes"].append(
                {"pid": 9, "name": "nvidia-cuda-mps-server", "gpus": [0], "memory": "66MiB", "mps_server": True}
            ),
            f"processes {SERVER} and 9 are both MPS servers of GPU 0 at once",
        ),
        (
            lambda raw: raw["gpus"][0].update(timeslice_swing=0.5),
            "GPU 0: timeslice_swing does not apply under MPS",
        ),
        (
            lambda raw: raw["gpus"][0].update(mig=[{"gi": 1, "profile": "3g.71gb"}]),
            "GPU 0: MPS on MIG instances is not simulated",
        ),
    ],
)
def test_an_impossible_mps_layout_is_refused_in_one_sentence_naming_the_process(
    change: Callable[[dict[str, Any]], object], message: str
) -> None:
    raw = mps_gpu()
    change(raw)
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw, source="node.yaml")
    text = str(err.value)
    assert text.startswith("scenario node.yaml: ") and message in text
    assert "\n" not in text and "Traceback" not in text


def test_a_server_that_stops_after_its_clients_and_a_later_server_are_accepted() -> None:
    raw = mps_gpu()
    raw["processes"][0].update(stop=20)
    raw["processes"][1].update(stop=20)
    raw["processes"][2].update(stop=25)
    raw["processes"].append(
        {"pid": 9, "name": "nvidia-cuda-mps-server", "gpus": [0], "memory": "66MiB", "mps_server": True, "start": 25}
    )
    scenario = parse_scenario(raw)
    assert [p.pid for p in scenario.processes if p.mps_server] == [SERVER, 9]


def test_a_bad_mps_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "no-server.yaml"
    path.write_text(
        "name: x\ngpus: [{index: 0, mps: true}]\n"
        "processes: [{pid: 3, name: a, gpus: [0], memory: 1GiB, mps_client: true}]\n"
    )
    with pytest.raises(ScenarioError, match=r"no-server\.yaml: .*process 3 is an MPS client on GPU 0 but no MPS"):
        load_scenario(path)


# --- the shipped H200 node ----------------------------------------------------------------------------


def test_the_shipped_h200_node_shares_gpu_0_by_mps_as_the_device_plugin_does(simulate: Callable[..., Sim]) -> None:
    scenario = load_scenario(SCENARIOS / "h200-mps-node.yaml")
    assert [g.mps for g in scenario.gpus] == [True, False, False] and scenario.gpus[2].timeslice_swing > 0
    uuid = scenario.gpu_uuid(0)
    shared = {
        f"{pod.namespace}/{pod.name}": devices
        for pod in sim_pods(scenario)
        for container in pod.containers
        for devices in container.devices
    }
    assert shared["search/embed-encoder-6f8b9c7d5-q2w7x"] == ("nvidia.com/gpu.shared", [f"{uuid}::0"])
    assert shared["notebooks/jupyter-carol-0"] == ("nvidia.com/gpu.shared", [f"{uuid}::1"])
    assert ("nvidia.com/gpu.shared", [f"{uuid}::0", f"{uuid}::1"]) in allocatable(scenario)
    server = next(p for p in scenario.processes if p.mps_server)
    assert server.container is not None and server.container.startswith(
        "gpu-operator/nvidia-device-plugin-mps-control-daemon-"
    )

    sim = simulate(scenario, start=30)
    dev = handle(0)
    listed = pids_and_mib(pynvml.nvmlDeviceGetComputeRunningProcesses_v3(dev))
    clients = pids_and_mib(pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(dev))
    assert listed[0] == (server.pid, 66) and sorted(listed[1:]) == sorted(clients) and len(clients) == 2
    assert (2658 in [mib for _, mib in clients]) and all(pid != server.pid for pid, _ in clients)
    since = now_us(sim.clock)
    sim.clock.advance(5)
    assert samples(dev, since) == {server.pid: (95, 25)}  # the busy client's activity, under the server's PID
    assert gpm(dev, sim.clock, 5)["sm_active"] > 0.85


def test_the_shipped_h200_node_runs_under_the_exporter() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuattr",
            "exporter",
            "--simulate",
            str(SCENARIOS / "h200-mps-node.yaml"),
            "--kubernetes",
            "--run-for",
            "3",
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "pod cache in sync: 6 pods" in done.stderr
