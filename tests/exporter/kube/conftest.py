"""Fixtures for the pod cache tests: kmock's emulated Kubernetes API server on a loopback port.

kmock is asyncio; the cache under test is threaded. The emulator runs in its own event loop in a daemon
thread and :class:`FakeApiServer` offers blocking helpers to create, patch and delete objects over HTTP
(so open watches see them), to change objects silently (listed but never announced), to stop and restart
the server on the same port, and to answer the next watch with an error event.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp.test_utils
import aiohttp.web_runner
import aiohttp.web_server
import kmock
import pytest

from common.kube import make_api_client
from exporter.resolve.kube import KubeSettings, PodCache

T = TypeVar("T")

NODE = "gpu-node-1"
OTHER_NODE = "gpu-node-2"
NAMESPACE = "ml"
CALL_TIMEOUT_S = 10.0  # bound on every call into the emulator's loop

# Where objects of each kind live: (kmock resource, collection path prefix without the namespace part).
_RESOURCES = {
    "Pod": ("v1/pods", "/api/v1/namespaces/{ns}/pods"),
    "ReplicaSet": ("apps/v1/replicasets", "/apis/apps/v1/namespaces/{ns}/replicasets"),
    "Job": ("batch/v1/jobs", "/apis/batch/v1/namespaces/{ns}/jobs"),
}
# kmock answers 404 for a resource it holds no object of unless the resource is declared.
_DECLARED = {resource: kind for kind, (resource, _) in _RESOURCES.items()}


class _QuickStopServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's test server, but closing open (watch) connections within 0.2 s when stopped.

    The default graceful shutdown waits up to 60 s for handlers, and kmock's watch handler never ends.
    """

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web_runner.ServerRunner:
        server = aiohttp.web_server.Server(self._handler, loop=self._loop, debug=debug, **kwargs)
        return aiohttp.web_runner.ServerRunner(server, debug=debug, shutdown_timeout=0.2, **kwargs)


class FakeApiServer:
    """A kmock KubernetesEmulator served over HTTP from a background event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kmock-loop", daemon=True)
        self._thread.start()
        self.emulator: kmock.KubernetesEmulator = self._call(self._enter_emulator())
        self._server: kmock.Server | None = None
        self.port: int | None = None

    # -- plumbing --

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call(run())

    @staticmethod
    async def _enter_emulator() -> kmock.KubernetesEmulator:
        emulator = kmock.KubernetesEmulator()
        for resource, kind in _DECLARED.items():
            emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True)
        await emulator.__aenter__()
        return emulator

    @property
    def url(self) -> str:
        assert self.port is not None, "start() the server first"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve on a fresh port the first time, on the same port after a stop()."""
        server = kmock.Server(self.emulator, port=self.port, server_cls=_QuickStopServer)
        self._call(server.__aenter__())
        self._server = server
        self.port = server.port

    def stop(self) -> None:
        """Stop serving: open watches are cut, new connections are refused; objects are kept."""
        if self._server is not None:
            self._call(self._server.__aexit__(None, None, None))
            self._server = None

    def close(self) -> None:
        self.stop()
        self._call(self.emulator.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        self._loop.close()

    # -- objects over HTTP (announced to watches) --

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        async def run() -> tuple[int, str]:
            headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
            async with self.emulator.request(method, path, json=body, headers=headers) as response:
                return response.status, await response.text()

        status, text = self._call(run())
        assert 200 <= status < 300, f"{method} {path}: HTTP {status}: {text[:500]}"
        result: dict[str, Any] = json.loads(text)
        return result

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        collection = _RESOURCES[kind][1].format(ns=namespace)
        return collection if name is None else f"{collection}/{name}"

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self._request("POST", self._path(obj["kind"], meta["namespace"]), obj)

    def patch(self, kind: str, namespace: str, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", self._path(kind, namespace, name), changes)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self._request("DELETE", self._path(kind, namespace, name))

    # -- objects changed behind the watches' backs (seen by lists only) --

    def put_silently(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (_RESOURCES[obj["kind"]][0], meta["namespace"], meta["name"])

        def put() -> None:
            self.emulator.objects[key] = obj

        self._on_loop(put)

    def delete_silently(self, kind: str, namespace: str, name: str) -> None:
        key = (_RESOURCES[kind][0], namespace, name)

        def delete() -> None:
            del self.emulator.objects[key]

        self._on_loop(delete)

    # -- faults --

    def answer_next_watch_with_error(self, code: int, reason: str) -> None:
        """The next watch request gets one ERROR event with this status code, then the stream ends."""

        def react() -> None:
            watches = self.emulator[kmock.action.WATCH]
            seen = len(watches)
            event = {
                "type": "ERROR",
                "object": {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "code": code,
                    "reason": reason,
                    "message": f"injected {code}",
                },
            }
            watches[seen : seen + 1] << json.dumps(event).encode() + b"\n"

        self._on_loop(react)

    def answer_with_status(self, method: str, path: str, code: int) -> None:
        """Every request to ``method path`` gets this HTTP status and a Kubernetes Status body."""
        status = {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": "Injected",
            "message": f"injected {code}",
        }

        def react() -> None:
            self.emulator[f"{method.lower()} {path}"] << code << status

        self._on_loop(react)

    def count_requests(self, predicate: Callable[[Any], bool]) -> int:
        return self._on_loop(lambda: sum(1 for request in self.emulator if predicate(request)))


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def fast_settings(**overrides: Any) -> KubeSettings:
    """Settings with short timeouts and back-off so that faults heal within a second or two."""
    values: dict[str, Any] = {
        "node_name": NODE,
        "resync_s": 300.0,
        "watch_timeout_s": 1,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.3,
        "request_timeout_s": 2.0,
    }
    values.update(overrides)
    return KubeSettings(**values)


@pytest.fixture
def make_cache(api_server: FakeApiServer) -> Iterator[Callable[..., PodCache]]:
    """Build (and always stop) pod caches pointed at the emulated API server."""
    caches: list[PodCache] = []

    def make(**overrides: Any) -> PodCache:
        cache = PodCache(make_api_client(api_server.url), fast_settings(**overrides))
        caches.append(cache)
        return cache

    try:
        yield make
    finally:
        for cache in caches:
            cache.stop()


def eventually(condition: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll until ``condition()`` holds; fail the test after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


# -- object builders --


def pod(
    name: str,
    *,
    node: str | None = NODE,
    namespace: str = NAMESPACE,
    uid: str | None = None,
    labels: dict[str, str] | None = None,
    owner: tuple[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}"}
    if labels is not None:
        metadata["labels"] = labels
    if owner is not None:
        metadata["ownerReferences"] = [controller_ref(*owner)]
    spec: dict[str, Any] = {"containers": containers or [{"name": "main", "image": "registry/app:1"}]}
    if node is not None:
        spec["nodeName"] = node
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    if statuses is not None:
        obj["status"] = {"phase": "Running", "containerStatuses": statuses}
    return obj


def controller_ref(kind: str, name: str) -> dict[str, Any]:
    api_version = {"ReplicaSet": "apps/v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1"}.get(kind, "v1")
    api_version = {"DaemonSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, api_version)
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": f"uid-{kind.lower()}-{name}",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def replica_set(name: str, *, owner: tuple[str, str] | None, namespace: str = NAMESPACE) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-rs-{name}"}
    if owner is not None:
        metadata["ownerReferences"] = [controller_ref(*owner)]
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": metadata,
        "spec": {"selector": {"matchLabels": {"app": name}}},
    }


def job(name: str, *, owner: tuple[str, str] | None, namespace: str = NAMESPACE) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-job-{name}"}
    if owner is not None:
        metadata["ownerReferences"] = [controller_ref(*owner)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}},
    }


def container_status(name: str, container_id: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": name,
        "image": "registry/app:1",
        "imageID": "",
        "ready": True,
        "restartCount": 0,
    }
    if container_id is not None:
        status["containerID"] = container_id
    return status
