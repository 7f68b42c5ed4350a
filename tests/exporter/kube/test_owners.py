"""Owner resolution: the workload a pod belongs to, through ReplicaSets and Jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.resolve.kube import PodCache
from tests.exporter.kube.conftest import NAMESPACE, FakeApiServer, controller_ref, eventually, job, pod, replica_set

RS_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/replicasets"


def workload_of(make_cache: Callable[..., PodCache], uid: str) -> tuple[str, str]:
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)
    meta = cache.get(uid)
    assert meta is not None, f"{uid} is missing from the cache"
    return meta.workload_kind, meta.workload


def test_deployment_pod_is_resolved_through_its_replica_set(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(replica_set("llama-serve-7d9f8", owner=("Deployment", "llama-serve")))
    api_server.create(pod("llama-serve-7d9f8-abcde", owner=("ReplicaSet", "llama-serve-7d9f8")))

    assert workload_of(make_cache, "uid-llama-serve-7d9f8-abcde") == ("Deployment", "llama-serve")


def test_replica_set_without_a_deployment_is_the_workload(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(replica_set("standalone", owner=None))
    api_server.create(pod("standalone-x1", owner=("ReplicaSet", "standalone")))

    assert workload_of(make_cache, "uid-standalone-x1") == ("ReplicaSet", "standalone")


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulset_and_daemonset_pods_name_their_owner_directly(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache], kind: str
) -> None:
    api_server.create(pod("owned-0", owner=(kind, "owner")))

    assert workload_of(make_cache, "uid-owned-0") == (kind, "owner")
    assert api_server.count_requests(lambda r: "replicasets" in r.url.path or "jobs" in r.url.path) == 0


def test_cronjob_pod_is_resolved_through_its_job(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(job("nightly-eval-2891", owner=("CronJob", "nightly-eval")))
    api_server.create(pod("nightly-eval-2891-q2x", owner=("Job", "nightly-eval-2891")))

    assert workload_of(make_cache, "uid-nightly-eval-2891-q2x") == ("CronJob", "nightly-eval")


def test_job_without_a_cronjob_is_the_workload(api_server: FakeApiServer, make_cache: Callable[..., PodCache]) -> None:
    api_server.create(job("finetune", owner=None))
    api_server.create(pod("finetune-abc", owner=("Job", "finetune")))

    assert workload_of(make_cache, "uid-finetune-abc") == ("Job", "finetune")


def test_bare_pod_is_its_own_workload(api_server: FakeApiServer, make_cache: Callable[..., PodCache]) -> None:
    api_server.create(pod("notebook"))

    assert workload_of(make_cache, "uid-notebook") == ("Pod", "notebook")


def test_owner_reference_that_is_not_the_controller_is_ignored(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    bare = pod("adopted")
    bare["metadata"]["ownerReferences"] = [{**controller_ref("ConfigMap", "cm"), "controller": False}]
    api_server.create(bare)

    assert workload_of(make_cache, "uid-adopted") == ("Pod", "adopted")


def test_other_controller_kinds_are_given_as_they_are(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("lws-0", owner=("LeaderWorkerSet", "vllm-multi")))

    assert workload_of(make_cache, "uid-lws-0") == ("LeaderWorkerSet", "vllm-multi")


def test_replica_set_lookup_that_404s_falls_back_to_the_replica_set(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("orphan-abc", owner=("ReplicaSet", "gone-rs")))
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)

    meta = cache.get("uid-orphan-abc")
    assert meta is not None
    assert (meta.workload_kind, meta.workload) == ("ReplicaSet", "gone-rs")
    assert cache.errors_total["owner_lookup"] >= 1
    assert cache.errors_total["http_404"] >= 1
    assert cache.up


def test_replica_set_lookup_forbidden_falls_back_and_keeps_the_pod(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(replica_set("secret-rs", owner=("Deployment", "secret")))
    api_server.answer_with_status("GET", f"{RS_PATH}/secret-rs", 403)
    api_server.create(pod("secret-rs-1", owner=("ReplicaSet", "secret-rs")))
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)

    meta = cache.get("uid-secret-rs-1")
    assert meta is not None
    assert (meta.workload_kind, meta.workload) == ("ReplicaSet", "secret-rs")
    assert cache.errors_total["http_403"] >= 1


def test_owner_lookups_are_cached_across_pods_and_watch_events(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(replica_set("web-5c4", owner=("Deployment", "web")))
    for index in range(3):
        api_server.create(pod(f"web-5c4-{index}", owner=("ReplicaSet", "web-5c4")))
    cache = make_cache()
    cache.start()
    assert cache.wait_synced(10.0)

    assert {(p.workload_kind, p.workload) for p in cache.pods()} == {("Deployment", "web")}
    assert len(cache.pods()) == 3
    assert api_server.count_requests(lambda r: r.url.path == f"{RS_PATH}/web-5c4") == 1


def test_failed_owner_lookup_is_retried_after_its_error_ttl(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("early-abc", owner=("ReplicaSet", "late-rs")))
    cache = make_cache(owner_error_ttl_s=0.0, resync_s=0.2)
    cache.start()
    assert cache.wait_synced(10.0)
    meta = cache.get("uid-early-abc")
    assert meta is not None
    assert meta.workload_kind == "ReplicaSet"

    api_server.create(replica_set("late-rs", owner=("Deployment", "late")))

    eventually(
        lambda: (m := cache.get("uid-early-abc")) is not None and m.workload_kind == "Deployment",
        what="the owner to resolve on a later sync",
    )
