"""Containers of a cached pod: runtime IDs, command line and plain env values."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.resolve.kube import PodCache, strip_container_id
from tests.exporter.kube.conftest import NAMESPACE, FakeApiServer, container_status, eventually, pod

CONTAINERD_ID = "2b180104511194aab36fd295d3e217439f3ddb5bc88277f37b4952abee85c40e"
CRIO_ID = "a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d"
DOCKER_ID = "2cc65c162ca1388b6b8d5ccfb701d22fc96675ccf8b2f1590c490c2c4039547f"


@pytest.mark.parametrize(
    ("raw", "bare"),
    [
        (f"containerd://{CONTAINERD_ID}", CONTAINERD_ID),
        (f"cri-o://{CRIO_ID}", CRIO_ID),
        (f"docker://{DOCKER_ID}", DOCKER_ID),
        (DOCKER_ID, DOCKER_ID),
        ("", None),
        (None, None),
    ],
)
def test_runtime_prefix_is_stripped_from_container_ids(raw: str | None, bare: str | None) -> None:
    assert strip_container_id(raw) == bare


def test_container_ids_come_from_container_statuses_for_each_runtime(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    containers = [{"name": n, "image": "x"} for n in ("containerd", "crio", "docker", "waiting")]
    statuses = [
        container_status("containerd", f"containerd://{CONTAINERD_ID}"),
        container_status("crio", f"cri-o://{CRIO_ID}"),
        container_status("docker", f"docker://{DOCKER_ID}"),
        container_status("waiting", None),
    ]
    api_server.create(pod("multi", containers=containers, statuses=statuses))
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)

    meta = cache.get("uid-multi")
    assert meta is not None
    assert {c.name: c.container_id for c in meta.containers} == {
        "containerd": CONTAINERD_ID,
        "crio": CRIO_ID,
        "docker": DOCKER_ID,
        "waiting": None,
    }
    found = meta.container_by_id(CRIO_ID)
    assert found is not None
    assert found.name == "crio"
    prefixed = meta.container_by_id(f"docker://{DOCKER_ID}")
    assert prefixed is not None
    assert prefixed.name == "docker"
    assert meta.container_by_id("0" * 64) is None


def test_container_started_later_gets_its_id_through_the_watch(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("starting", statuses=[container_status("main", None)]))
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)

    api_server.patch(
        "Pod",
        NAMESPACE,
        "starting",
        {"status": {"containerStatuses": [container_status("main", f"containerd://{CONTAINERD_ID}")]}},
    )

    eventually(
        lambda: (m := cache.get("uid-starting")) is not None and m.container_by_id(CONTAINERD_ID) is not None,
        what="the container ID",
    )


def test_args_join_command_and_args_and_env_keeps_plain_values_only(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    container = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.9",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--tensor-parallel-size", "2"],
        "env": [
            {"name": "MODEL_NAME", "value": "llama-3.1-8b"},
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
    }
    init = {"name": "fetch-weights", "image": "x", "args": ["--dest", "/models"]}
    obj = pod("vllm-0", containers=[container])
    obj["spec"]["initContainers"] = [init]
    api_server.create(obj)
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)

    meta = cache.get("uid-vllm-0")
    assert meta is not None
    by_name = {c.name: c for c in meta.containers}
    assert by_name["vllm"].args == (
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--tensor-parallel-size",
        "2",
    )
    assert dict(by_name["vllm"].env) == {"MODEL_NAME": "llama-3.1-8b"}
    assert by_name["fetch-weights"].args == ("--dest", "/models")
    assert dict(by_name["fetch-weights"].env) == {}
