"""End to end on a scenario: fake NVML + fake /proc + emulated API server + kubelet gRPC server →
the exporter's /metrics → a real Prometheus, where each waste question is one PromQL expression."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common import catalog as c
from common.exposition import Sample, scrape
from exporter.app import Exporter, build
from exporter.settings import ExporterSettings
from tests.conftest import SCENARIOS
from tests.peers import prometheus

GiB = 2**30


def _start(scenario: Path | str, **overrides: Any) -> Exporter:
    settings = ExporterSettings(
        simulate=str(scenario), kubernetes=True, listen="127.0.0.1:0", interval=0.5, sim_start=60, **overrides
    )
    exporter = build(settings)
    exporter.start()
    return exporter


@pytest.fixture
def inference_node() -> Iterator[Exporter]:
    exporter = _start(SCENARIOS / "h100-inference-node.yaml")
    try:
        yield exporter
    finally:
        exporter.stop()


def _by(samples: list[Sample], *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(labels[k] for k in keys): value for labels, value in samples}


def test_every_gpu_process_lands_on_its_container(inference_node: Exporter) -> None:
    metrics = scrape(inference_node.server.url)
    memory = _by(metrics[c.CONTAINER_MEMORY.name], "gpu", "namespace", "pod", "container", "process")
    assert memory == {
        ("0", "llm", "vllm-llama-8b-6d9f7c5b8-x2k4p", "vllm", ""): 74854 * 2**20,  # its vLLM budget
        ("1", "ml-training", "finetune-mistral-7b-0", "trainer", ""): 61 * GiB,
        ("2", "notebooks", "jupyter-alice-0", "notebook", ""): 22 * GiB,
        ("3", "llm", "vllm-qwen-1-5b-7b8c9d6f5-m7qzt", "vllm", ""): 33690 * 2**20,  # its vLLM budget
        ("3", "llm", "tgi-phi3-mini-5f6d7c8b9-q9wrt", "tgi", ""): 29.8 * GiB // 2**20 * 2**20,
    }
    assert _by(metrics[c.EXPORTER_KUBERNETES_UP.name]) == {(): 1}
    assert _by(metrics[c.EXPORTER_KUBELET_UP.name]) == {(): 1}
    assert _by(metrics[c.EXPORTER_HOST_PIDS_VISIBLE.name]) == {(): 1}


def test_two_time_sliced_pods_on_one_gpu_each_get_their_own_activity(tmp_path: Path) -> None:
    raw = yaml.safe_load((SCENARIOS / "h100-inference-node.yaml").read_text())
    for proc in raw["processes"]:
        if proc["pid"] in (71502, 71988):  # the vLLM and TGI pods sharing GPU 3
            proc["sm"], proc["mem_bw"] = (0.55, 0.3) if proc["pid"] == 71502 else (0.2, 0.1)
    path = tmp_path / "steady.yaml"
    path.write_text(yaml.safe_dump(raw))
    exporter = _start(path)
    try:
        # GPM measures between two samples at least 100 ms apart: wait for a sample that has it
        deadline = time.monotonic() + 10
        while True:
            metrics = scrape(exporter.server.url)
            device = _by(metrics.get(c.GPU_SM_ACTIVE.name, []), "gpu", "source")
            if (("3", "gpm") in device and metrics.get(c.CONTAINER_KERNEL_ACTIVE.name)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        exporter.stop()
    kernel = _by(metrics[c.CONTAINER_KERNEL_ACTIVE.name], "gpu", "pod")
    assert kernel[("3", "vllm-qwen-1-5b-7b8c9d6f5-m7qzt")] == pytest.approx(0.55)
    assert kernel[("3", "tgi-phi3-mini-5f6d7c8b9-q9wrt")] == pytest.approx(0.2)
    # SM activity: the GPU's GPM SM activity split by those kernel-time shares, never above the device's
    sm = {k: v for k, v in _by(metrics[c.CONTAINER_SM_ACTIVE.name], "gpu", "pod", "source").items() if k[0] == "3"}
    device_sm = _by(metrics[c.GPU_SM_ACTIVE.name], "gpu", "source")[("3", "gpm")]
    gpm = {k[1]: v for k, v in sm.items() if k[2] == "gpm"}
    assert sum(gpm.values()) == pytest.approx(device_sm)
    assert gpm["vllm-qwen-1-5b-7b8c9d6f5-m7qzt"] == pytest.approx(device_sm * 0.55 / 0.75)
    # dcgm-exporter would give both pods the whole GPU's number:
    assert _by(metrics[c.GPU_UTILIZATION.name], "gpu")[("3",)] == pytest.approx(0.75)
    bw = _by(metrics[c.CONTAINER_MEMORY_BANDWIDTH.name], "gpu", "pod")
    assert bw[("3", "vllm-qwen-1-5b-7b8c9d6f5-m7qzt")] == pytest.approx(0.3)  # GPM 0.4 split 3:1
    alloc = _by(metrics[c.CONTAINER_ALLOCATED.name], "gpu", "pod")
    assert alloc[("3", "vllm-qwen-1-5b-7b8c9d6f5-m7qzt")] == 1
    assert alloc[("3", "tgi-phi3-mini-5f6d7c8b9-q9wrt")] == 1


def test_pods_carry_workload_model_class_and_team(inference_node: Exporter) -> None:
    info = {
        (labels["namespace"], labels["pod"]): labels for labels, _ in scrape(inference_node.server.url)[c.POD_INFO.name]
    }
    vllm = info[("llm", "vllm-llama-8b-6d9f7c5b8-x2k4p")]
    assert (vllm["workload_kind"], vllm["workload"]) == ("Deployment", "vllm-llama-8b")
    assert (vllm["model"], vllm["workload_class"], vllm["team"]) == (
        "meta-llama/Llama-3.1-8B-Instruct",
        "inference",
        "search",
    )
    assert info[("llm", "tgi-phi3-mini-5f6d7c8b9-q9wrt")]["model"] == "microsoft/Phi-3-mini-4k-instruct"
    assert info[("ml-training", "finetune-mistral-7b-0")]["workload_class"] == "training"
    assert info[("notebooks", "jupyter-alice-0")]["workload_class"] == "experimentation"


def _with_rogue_pod(tmp_path: Path) -> Path:
    """The MIG node plus a pod that uses GPU 6 without having been allocated it."""
    raw = yaml.safe_load((SCENARIOS / "h100-8gpu-mig-node.yaml").read_text())
    raw["pods"].append(
        {"namespace": "sandbox", "name": "rogue-0", "containers": [{"name": "main", "args": ["python", "x.py"]}]}
    )
    raw["processes"].append(
        {"pid": 61000, "name": "python", "gpus": [6], "memory": "3GiB", "sm": 0.5, "container": "sandbox/rogue-0/main"}
    )
    path = tmp_path / "rogue.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


ALLOCATED_BUT_IDLE = """
gpuattr_container_gpu_allocated
  unless on (gpu_uuid, mig_instance, namespace, pod, container)
    (max_over_time({__name__=~"gpuattr_container_gpu_(kernel|sm)_active_ratio"}[1m]) > 0.01)
  unless on (gpu_uuid, mig_instance, namespace, pod, container) gpuattr_container_gpu_activity_unknown
"""
NEVER_ALLOCATED = """
gpuattr_container_gpu_memory_bytes{pod!=""}
  unless on (gpu_uuid, mig_instance, namespace, pod, container) gpuattr_container_gpu_allocated
"""


def test_allocated_but_idle_and_never_allocated_are_one_promql_expression_each(tmp_path: Path) -> None:
    exporter = _start(_with_rogue_pod(tmp_path))
    try:
        target = exporter.server.url.removeprefix("http://").removesuffix("/metrics")
        with prometheus(tmp_path, [target]) as prom:
            assert prom.wait_for('gpuattr_container_gpu_allocated{pod="embed-backfill-29183-kx8vw"}')
            prom.wait_for("count(gpuattr_container_gpu_kernel_active_ratio) >= 5")
            idle = {
                (r["metric"]["pod"], r["metric"]["gpu"], r["metric"].get("mig_instance", ""))  # empty labels are absent
                for r in prom.query(ALLOCATED_BUT_IDLE)
            }
            assert idle == {
                ("embed-backfill-29183-kx8vw", "6", ""),  # allocated a whole GPU, never started CUDA
                ("jupyter-bob-0", "7", "13"),  # a notebook idling on its MIG slice
            }
            rogue = prom.query(NEVER_ALLOCATED)
            assert [(r["metric"]["namespace"], r["metric"]["pod"], r["metric"]["gpu"]) for r in rogue] == [
                ("sandbox", "rogue-0", "6")
            ]
    finally:
        exporter.stop()


def test_without_host_pids_the_exporter_says_so_and_falls_back_to_command_names(tmp_path: Path) -> None:
    raw = yaml.safe_load((SCENARIOS / "h100-inference-node.yaml").read_text())
    raw["faults"] = {"host_pids_hidden": True}
    path = tmp_path / "no-hostpid.yaml"
    path.write_text(yaml.safe_dump(raw))
    exporter = _start(path)
    try:
        metrics = scrape(exporter.server.url)
    finally:
        exporter.stop()
    assert _by(metrics[c.EXPORTER_HOST_PIDS_VISIBLE.name]) == {(): 0}
    assert _by(metrics[c.EXPORTER_UNATTRIBUTED.name], "reason")[("no_host_pid",)] == 5
    owners = {(lbl["pod"], lbl["process"]) for lbl, _ in metrics[c.CONTAINER_MEMORY.name]}
    assert ("", "vllm") in owners
    assert all(pod == "" for pod, _ in owners)  # nothing is attributed to a pod it cannot prove


def test_an_unreachable_kubelet_and_api_server_degrade_and_the_gpus_are_still_served(tmp_path: Path) -> None:
    exporter = _start(SCENARIOS / "h100-inference-node.yaml")
    try:
        sim = exporter.simulation
        assert sim is not None
        sim.kubelet.stop()
        sim.api.stop()
        exporter.sampler.sample_once()
        metrics = scrape(exporter.server.url)
        assert _by(metrics[c.EXPORTER_KUBELET_UP.name]) == {(): 0}
        # the pod cache keeps serving what it knew: the usage still carries pod names
        pods = {lbl["pod"] for lbl, _ in metrics[c.CONTAINER_MEMORY.name]}
        assert "jupyter-alice-0" in pods
        assert len(metrics[c.CONTAINER_ALLOCATED.name]) == 5  # last known allocations
        assert len(metrics[c.GPU_MEMORY_USED.name]) == 4
    finally:
        exporter.stop()
