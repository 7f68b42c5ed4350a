"""The scenario's pods served by the emulated API server, read by the exporter's own PodCache."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.kube import make_api_client
from exporter.resolve.kube import KubeSettings, PodCache, PodMeta
from simulator.kube_api import SimApiError, SimApiServer
from simulator.scenario import OwnerSpec, Scenario, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0

# Every pod of the shipped scenarios: the workload people name it by.
EXPECTED_WORKLOADS = {
    "h100-inference-node.yaml": {
        "llm/vllm-llama-8b-6d9f7c5b8-x2k4p": ("Deployment", "vllm-llama-8b"),
        "ml-training/finetune-mistral-7b-0": ("Job", "finetune-mistral-7b"),
        "notebooks/jupyter-alice-0": ("StatefulSet", "jupyter-alice"),
        "llm/vllm-qwen-1-5b-7b8c9d6f5-m7qzt": ("Deployment", "vllm-qwen-1-5b"),
        "llm/tgi-phi3-mini-5f6d7c8b9-q9wrt": ("Deployment", "tgi-phi3-mini"),
    },
    "h100-8gpu-mig-node.yaml": {
        "ml-training/pretrain-llama-1b-master-0": ("PyTorchJob", "pretrain-llama-1b"),
        "llm/vllm-llama-70b-0": ("StatefulSet", "vllm-llama-70b"),
        "batch/embed-backfill-29183-kx8vw": ("CronJob", "embed-backfill"),
        "llm/vllm-qwen-7b-mig-0": ("StatefulSet", "vllm-qwen-7b-mig"),
        "search/embedder-6b7d8f9c4-p2v5n": ("Deployment", "embedder"),
        "notebooks/jupyter-bob-0": ("StatefulSet", "jupyter-bob"),
    },
}


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.02)


def settings(node_name: str) -> KubeSettings:
    return KubeSettings(
        node_name=node_name,
        watch_timeout_s=1,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        request_timeout_s=2.0,
    )


@pytest.fixture
def serve() -> Iterator[Callable[[Scenario], tuple[SimApiServer, PodCache]]]:
    """``serve(scenario)``: a started SimApiServer and a synced PodCache on it; both stopped afterwards."""
    running: list[tuple[SimApiServer, PodCache]] = []

    def make(scenario: Scenario) -> tuple[SimApiServer, PodCache]:
        server = SimApiServer(scenario)
        server.start()
        cache = PodCache(make_api_client(host=server.url), settings(scenario.node.name))
        running.append((server, cache))
        cache.start()
        assert cache.wait_synced(WAIT_S)
        return server, cache

    yield make
    for server, cache in running:
        cache.stop()
        server.stop()


def label_of(cache: PodCache, uid: str, key: str) -> str | None:
    meta = cache.get(uid)
    return meta.labels.get(key) if meta is not None else None


def by_name(cache: PodCache) -> dict[str, PodMeta]:
    return {f"{p.namespace}/{p.name}": p for p in cache.pods()}


@pytest.mark.parametrize("filename", sorted(EXPECTED_WORKLOADS))
def test_every_scenario_pod_arrives_with_its_workload_and_container_ids(
    serve: Callable[[Scenario], tuple[SimApiServer, PodCache]], filename: str
) -> None:
    scenario = load_scenario(ROOT / "scenarios" / filename)
    server, cache = serve(scenario)
    expected = EXPECTED_WORKLOADS[filename]
    eventually(lambda: set(by_name(cache)) == set(expected), "all scenario pods")

    pods = by_name(cache)
    for spec in scenario.pods:
        meta = pods[f"{spec.namespace}/{spec.name}"]
        assert (meta.workload_kind, meta.workload) == expected[f"{spec.namespace}/{spec.name}"]
        assert meta.uid == scenario.pod_uid(spec)
        assert meta.node == scenario.node.name
        assert dict(meta.labels) == spec.labels
        for container in spec.containers:
            found = meta.container_by_id(scenario.container_id(spec, container))
            assert found is not None, f"{spec.name}/{container.name}"
            assert found.name == container.name
            assert found.args == tuple(container.args)
    assert server.url.startswith("http://127.0.0.1:")


def test_deleted_pod_disappears_and_created_pod_appears(
    serve: Callable[[Scenario], tuple[SimApiServer, PodCache]],
) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "h100-inference-node.yaml")
    server, cache = serve(scenario)
    eventually(lambda: len(cache.pods()) == 5, "the scenario's five pods")
    gone = scenario.pods[2]
    extra = gone.model_copy(update={"name": "jupyter-carol-0", "uid": "0c0c0c0c-1111-2222-3333-444444444444"})

    # kmock has no resourceVersion: an event between the cache's list and its watch opening is lost (a
    # real API server replays it from the list's resourceVersion). Prove the watch is live first.
    first = scenario.pods[0]
    server.patch_pod_labels(first.namespace, first.name, {"watch": "live"})
    eventually(lambda: label_of(cache, scenario.pod_uid(first), "watch") == "live", "the watch to be live")
    server.delete_pod(gone.namespace, gone.name)
    eventually(lambda: cache.get(scenario.pod_uid(gone)) is None, "the deleted pod to leave")
    server.create_pod(server.pod_manifest(extra))
    eventually(lambda: cache.get("0c0c0c0c-1111-2222-3333-444444444444") is not None, "the created pod")

    assert len(cache.pods()) == 5
    server.patch_pod_labels("notebooks", "jupyter-carol-0", {"team": "platform"})
    eventually(lambda: label_of(cache, "0c0c0c0c-1111-2222-3333-444444444444", "team") == "platform", "a label")


def test_pod_spec_created_later_brings_its_owners(
    serve: Callable[[Scenario], tuple[SimApiServer, PodCache]],
) -> None:
    scenario = load_scenario(ROOT / "scenarios" / "h100-inference-node.yaml")
    server, cache = serve(scenario)
    newcomer = scenario.pods[0].model_copy(
        update={
            "name": "nightly-eval-28100-abcde",
            "uid": "0d0d0d0d-1111-2222-3333-444444444444",
            "owner": OwnerSpec(kind="Job", name="nightly-eval-28100"),
        }
    )

    server.create_pod(newcomer)

    eventually(lambda: cache.get("0d0d0d0d-1111-2222-3333-444444444444") is not None, "the new pod")
    meta = cache.get("0d0d0d0d-1111-2222-3333-444444444444")
    assert meta is not None
    assert (meta.workload_kind, meta.workload) == ("CronJob", "nightly-eval")


def test_pods_belong_to_the_node_name_given() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "h100-inference-node.yaml")
    server = SimApiServer(scenario, node_name="elsewhere")

    manifest = server.pod_manifest(scenario.pods[0])

    assert manifest["spec"]["nodeName"] == "elsewhere"
    assert SimApiServer(scenario).node_name == "gpu-node-a1"


def test_pod_manifest_shows_qos_runtime_ids_command_env_and_gpu_limits() -> None:
    scenario = parse_scenario(
        {
            "name": "manifest",
            "gpus": [{"index": 0}, {"index": 1}],
            "pods": [
                {
                    "namespace": "ns",
                    "name": "svc-0",
                    "qos": "besteffort",
                    "annotations": {"note": "x"},
                    "containers": [
                        {
                            "name": "tgi",
                            "runtime": "cri-o",
                            "args": ["text-generation-launcher", "--port", "80"],
                            "env": {"MODEL_ID": "org/model"},
                            "devices": ["0", "1"],
                        },
                        {"name": "proxy", "runtime": "docker"},
                    ],
                }
            ],
        }
    )
    spec = scenario.pods[0]

    manifest = SimApiServer(scenario).pod_manifest(spec)

    assert manifest["metadata"]["uid"] == scenario.pod_uid(spec)
    assert manifest["metadata"]["annotations"] == {"note": "x"}
    assert "ownerReferences" not in manifest["metadata"]
    assert manifest["status"]["qosClass"] == "BestEffort"
    tgi, proxy = manifest["spec"]["containers"]
    assert tgi["command"] == ["text-generation-launcher", "--port", "80"]
    assert "args" not in tgi
    assert tgi["env"] == [{"name": "MODEL_ID", "value": "org/model"}]
    assert tgi["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert "limits" not in proxy["resources"]
    ids = [s["containerID"] for s in manifest["status"]["containerStatuses"]]
    assert ids == [
        f"cri-o://{scenario.container_id(spec, spec.containers[0])}",
        f"docker://{scenario.container_id(spec, spec.containers[1])}",
    ]


def test_deleting_a_pod_that_does_not_exist_names_the_request() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "h100-inference-node.yaml")
    with SimApiServer(scenario) as server, pytest.raises(SimApiError, match=r"DELETE .*/pods/nobody: HTTP 404"):
        server.delete_pod("llm", "nobody")
