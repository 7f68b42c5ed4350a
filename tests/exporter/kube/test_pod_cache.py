"""The pod cache against kmock's emulated API server: list, watch, faults, resync."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from common.kube import make_api_client
from exporter.resolve.kube import PodCache
from tests.exporter.kube.conftest import NAMESPACE, NODE, OTHER_NODE, FakeApiServer, eventually, fast_settings, pod

SYNC_TIMEOUT_S = 10.0


def started(make_cache: Callable[..., PodCache], **overrides: float) -> PodCache:
    cache = make_cache(**overrides)
    cache.start()
    assert cache.wait_synced(SYNC_TIMEOUT_S)
    return cache


def test_pods_on_this_node_fill_the_cache_and_pods_elsewhere_do_not(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("trainer", labels={"team": "vision"}))
    api_server.create(pod("elsewhere", node=OTHER_NODE))
    api_server.create(pod("pending", node=None))

    cache = started(make_cache)

    meta = cache.get("uid-trainer")
    assert meta is not None
    assert (meta.namespace, meta.name, meta.node) == (NAMESPACE, "trainer", NODE)
    assert meta.labels == {"team": "vision"}
    assert cache.get("uid-elsewhere") is None
    assert cache.get("uid-pending") is None
    assert [p.uid for p in cache.pods()] == ["uid-trainer"]
    assert cache.up
    assert cache.last_sync_unix is not None


def test_list_and_watch_ask_the_server_for_this_node_only(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    started(make_cache)
    eventually(
        lambda: api_server.count_requests(lambda r: r.params.get("watch") == "true") >= 1,
        what="a watch request",
    )
    pod_requests = api_server.count_requests(lambda r: r.url.path == "/api/v1/pods")
    selected = api_server.count_requests(
        lambda r: r.url.path == "/api/v1/pods" and r.params.get("fieldSelector") == f"spec.nodeName={NODE}"
    )
    assert pod_requests >= 2
    assert selected == pod_requests


def test_pod_created_later_arrives_through_the_watch(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    cache = started(make_cache)
    assert cache.pods() == []

    api_server.create(pod("late"))
    api_server.create(pod("late-elsewhere", node=OTHER_NODE))

    eventually(lambda: cache.get("uid-late") is not None, what="the new pod")
    assert cache.get("uid-late-elsewhere") is None


def test_label_change_is_seen(api_server: FakeApiServer, make_cache: Callable[..., PodCache]) -> None:
    api_server.create(pod("trainer", labels={"team": "vision"}))
    cache = started(make_cache)

    api_server.patch("Pod", NAMESPACE, "trainer", {"metadata": {"labels": {"team": "speech"}}})

    eventually(
        lambda: (meta := cache.get("uid-trainer")) is not None and meta.labels.get("team") == "speech",
        what="the new label",
    )


def test_deleted_pod_disappears(api_server: FakeApiServer, make_cache: Callable[..., PodCache]) -> None:
    api_server.create(pod("short-lived"))
    api_server.create(pod("stays"))
    cache = started(make_cache)
    assert cache.get("uid-short-lived") is not None
    # kmock has no resourceVersion: a DELETE between the cache's list and its watch opening is never
    # replayed (a real API server would). A label patch is replayed by any later watch: wait for it first.
    api_server.patch("Pod", NAMESPACE, "stays", {"metadata": {"labels": {"watch": "live"}}})
    eventually(
        lambda: (m := cache.get("uid-stays")) is not None and m.labels.get("watch") == "live", what="a live watch"
    )

    api_server.delete("Pod", NAMESPACE, "short-lived")

    eventually(lambda: cache.get("uid-short-lived") is None, what="the pod to go")
    assert cache.get("uid-stays") is not None


def test_pod_moved_to_another_node_leaves_the_cache(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("wanderer"))
    cache = started(make_cache)

    api_server.patch("Pod", NAMESPACE, "wanderer", {"spec": {"nodeName": OTHER_NODE}})

    eventually(lambda: cache.get("uid-wanderer") is None, what="the pod to leave")


def test_dropped_watch_keeps_serving_last_pods_while_down_and_resumes(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("trainer"))
    cache = started(make_cache)

    api_server.stop()
    eventually(lambda: not cache.up, what="the cache to notice the server is gone")
    assert cache.get("uid-trainer") is not None
    assert cache.errors_total["watch"] >= 1

    api_server.start()
    eventually(lambda: cache.up, what="the cache to reconnect")
    api_server.create(pod("after-restart"))
    eventually(lambda: cache.get("uid-after-restart") is not None, what="a pod created after the restart")
    assert cache.get("uid-trainer") is not None


def test_pod_deleted_while_the_server_was_unreachable_is_gone_after_reconnecting(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("trainer"))
    api_server.create(pod("finished"))
    cache = started(make_cache)

    api_server.stop()
    eventually(lambda: not cache.up, what="the cache to notice the server is gone")
    api_server.delete_silently("Pod", NAMESPACE, "finished")
    assert cache.get("uid-finished") is not None  # still the last known content
    api_server.start()

    eventually(lambda: cache.get("uid-finished") is None, what="the relist to drop the pod")
    assert cache.get("uid-trainer") is not None
    assert cache.up


def test_api_server_down_at_start_up_does_not_fail_and_fills_when_it_comes_up(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("trainer"))
    api_server.stop()
    cache = make_cache()

    cache.start()

    eventually(lambda: cache.errors_total["list"] >= 2, what="failed lists")
    assert not cache.up
    assert not cache.wait_synced(0.0)
    assert cache.get("uid-trainer") is None
    assert cache.last_sync_unix is None

    api_server.start()
    assert cache.wait_synced(SYNC_TIMEOUT_S)
    eventually(lambda: cache.get("uid-trainer") is not None, what="the pod after start-up")
    assert cache.up


def test_watch_expired_with_410_gone_relists_without_going_down(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("trainer"))
    api_server.answer_next_watch_with_error(410, "Expired")
    lists_before = api_server.count_requests(lambda r: r.url.path == "/api/v1/pods" and "watch" not in r.params)
    assert lists_before == 0

    cache = started(make_cache)

    eventually(lambda: cache.errors_total.get("http_410", 0) == 1, what="the 410")
    eventually(
        lambda: api_server.count_requests(lambda r: r.url.path == "/api/v1/pods" and "watch" not in r.params) >= 2,
        what="a relist after the 410",
    )
    assert cache.errors_total["watch"] == 0
    assert cache.up
    api_server.create(pod("after-relist"))
    eventually(lambda: cache.get("uid-after-relist") is not None, what="a pod after the relist")


def test_watch_error_event_counts_and_reconnects(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.answer_next_watch_with_error(500, "InternalError")
    cache = started(make_cache)

    eventually(lambda: cache.errors_total.get("http_500", 0) == 1, what="the watch error")
    assert cache.errors_total["watch"] == 1
    eventually(lambda: cache.up, what="the cache to recover")
    api_server.create(pod("after-error"))
    eventually(lambda: cache.get("uid-after-error") is not None, what="a pod after the error")


def test_resync_drops_a_pod_whose_deletion_was_never_announced(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache]
) -> None:
    api_server.create(pod("ghost"))
    api_server.create(pod("real"))
    cache = started(make_cache, resync_s=0.3)
    assert cache.get("uid-ghost") is not None

    api_server.delete_silently("Pod", NAMESPACE, "ghost")

    eventually(lambda: cache.get("uid-ghost") is None, what="the resync to drop the pod")
    assert cache.get("uid-real") is not None


def test_stop_ends_the_background_thread(api_server: FakeApiServer, make_cache: Callable[..., PodCache]) -> None:
    api_server.create(pod("trainer"))
    cache = started(make_cache, watch_timeout_s=60)

    cache.stop()

    assert not [t for t in threading.enumerate() if t.name == "gpuattr-pod-cache"]
    api_server.create(pod("after-stop"))
    assert cache.get("uid-after-stop") is None
    assert cache.get("uid-trainer") is not None


def test_outage_logs_once_when_going_down_and_once_when_coming_back(
    api_server: FakeApiServer, make_cache: Callable[..., PodCache], caplog: pytest.LogCaptureFixture
) -> None:
    cache = started(make_cache)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="gpuattr.kube")

    api_server.stop()
    eventually(lambda: cache.errors_total["list"] >= 3, what="several failed relists")
    api_server.start()
    eventually(lambda: cache.up, what="the cache to reconnect")

    messages = [r.getMessage() for r in caplog.records if r.name == "gpuattr.kube"]
    assert len([m for m in messages if "cannot reach" in m]) == 1
    assert len([m for m in messages if "in sync" in m]) == 1


def test_api_client_from_a_kubeconfig_reaches_the_server(api_server: FakeApiServer, tmp_path: Path) -> None:
    api_server.create(pod("trainer"))
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": api_server.url}}],
                "users": [{"name": "me", "user": {"token": "t0ken"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "me"}}],
                "current-context": "emu",
            }
        )
    )
    cache = PodCache(make_api_client(kubeconfig=str(kubeconfig)), fast_settings())
    try:
        cache.start()
        assert cache.wait_synced(SYNC_TIMEOUT_S)
        assert cache.get("uid-trainer") is not None
    finally:
        cache.stop()
    authorizations = api_server.count_requests(lambda r: r.headers.get("Authorization") == "Bearer t0ken")
    assert authorizations >= 1
