"""A Kubernetes API server for a scenario: kmock's emulator on a loopback port, holding the scenario's pods.

Pods carry what the real API server would show for them: UID, labels, annotations, controller owner,
``spec.nodeName``, containers with command, env and GPU limits, and a Running status with QoS class and
runtime-prefixed container IDs. Owners the exporter follows are created too: a pod of ReplicaSet ``x-<hash>``
gets that ReplicaSet, owned by Deployment ``x``; a pod of Job ``x-<digits>`` gets that Job, owned by CronJob
``x`` (a Job without such a suffix has no owner). Other owner kinds (StatefulSet, PyTorchJob, …) are named
by the pod only: the exporter does not look them up.

kmock is asyncio: the emulator runs its own event loop in a daemon thread, and the blocking methods here
call into it. Objects are created over HTTP so that open watches see ``ADDED`` events. ``kmock`` and
``aiohttp`` (development dependencies) are imported by :meth:`SimApiServer.start`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from simulator.scenario import ContainerSpec, OwnerSpec, PodSpec, Scenario

__all__ = ["SimApiError", "SimApiServer"]

T = TypeVar("T")

CALL_TIMEOUT_S = 10.0  # bound on every call into the emulator's event loop
STARTED_AT = "2025-01-01T00:00:00Z"  # containers' start time in their status (RFC 3339)

# kind → (kmock resource, collection path with "{ns}", apiVersion)
_RESOURCES: dict[str, tuple[str, str, str]] = {
    "Pod": ("v1/pods", "/api/v1/namespaces/{ns}/pods", "v1"),
    "ReplicaSet": ("apps/v1/replicasets", "/apis/apps/v1/namespaces/{ns}/replicasets", "apps/v1"),
    "Deployment": ("apps/v1/deployments", "/apis/apps/v1/namespaces/{ns}/deployments", "apps/v1"),
    "Job": ("batch/v1/jobs", "/apis/batch/v1/namespaces/{ns}/jobs", "batch/v1"),
    "CronJob": ("batch/v1/cronjobs", "/apis/batch/v1/namespaces/{ns}/cronjobs", "batch/v1"),
}
# apiVersion of owner kinds the server holds no objects of (the reference only names them).
_OWNER_API_VERSIONS: dict[str, str] = {
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "PyTorchJob": "kubeflow.org/v1",
    "TFJob": "kubeflow.org/v1",
    "MPIJob": "kubeflow.org/v2beta1",
    "Notebook": "kubeflow.org/v1",
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
}
_RUNTIME_SCHEME = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}
_QOS_CLASS = {"guaranteed": "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}
_JOB_OF_CRONJOB = re.compile(r"(.+)-([0-9]+)")


class SimApiError(RuntimeError):
    """The emulated API server refused a request; names the method, path and HTTP status."""


def _api_version(kind: str) -> str:
    if kind in _RESOURCES:
        return _RESOURCES[kind][2]
    return _OWNER_API_VERSIONS.get(kind, "v1")


def _object_uid(kind: str, namespace: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gpuattr-sim/{kind}/{namespace}/{name}"))


def _controller_ref(kind: str, namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": _api_version(kind),
        "kind": kind,
        "name": name,
        "uid": _object_uid(kind, namespace, name),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owner_object(kind: str, namespace: str, name: str, owner: tuple[str, str] | None) -> dict[str, Any]:
    """A minimal ReplicaSet / Deployment / Job / CronJob, optionally controlled by ``owner`` (kind, name)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": _object_uid(kind, namespace, name)}
    if owner is not None:
        metadata["ownerReferences"] = [_controller_ref(owner[0], namespace, owner[1])]
    template = {"spec": {"containers": [{"name": "main", "image": "registry.example/app:1"}]}}
    spec: dict[str, Any]
    if kind in ("ReplicaSet", "Deployment"):
        spec = {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}
    elif kind == "Job":
        spec = {"template": template}
    else:  # CronJob
        spec = {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": _api_version(kind), "kind": kind, "metadata": metadata, "spec": spec}


def owner_chain(namespace: str, owner: OwnerSpec) -> list[dict[str, Any]]:
    """Objects to create, parents first, so that the exporter resolves ``owner`` the way a cluster would:
    ReplicaSet ``x-<hash>`` → Deployment ``x``; Job ``x-<digits>`` → CronJob ``x``; nothing for others."""
    if owner.kind == "ReplicaSet":
        deployment, sep, _ = owner.name.rpartition("-")
        if not sep or not deployment:
            return [_owner_object("ReplicaSet", namespace, owner.name, None)]
        return [
            _owner_object("Deployment", namespace, deployment, None),
            _owner_object("ReplicaSet", namespace, owner.name, ("Deployment", deployment)),
        ]
    if owner.kind == "Job":
        m = _JOB_OF_CRONJOB.fullmatch(owner.name)
        if m is None:
            return [_owner_object("Job", namespace, owner.name, None)]
        return [
            _owner_object("CronJob", namespace, m.group(1), None),
            _owner_object("Job", namespace, owner.name, ("CronJob", m.group(1))),
        ]
    return []


def _container(container: ContainerSpec, qos: str) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if qos == "guaranteed":
        requests = {"cpu": "8", "memory": "64Gi"}
        limits = dict(requests)
    elif qos == "burstable":
        requests = {"cpu": "2", "memory": "16Gi"}
    if container.devices:
        count = str(len(container.devices))
        limits[container.resource] = count
        requests[container.resource] = count  # the API server defaults extended requests to limits
    manifest: dict[str, Any] = {"name": container.name, "image": container.image}
    if container.args:
        manifest["command"] = list(container.args)
    if container.env:
        manifest["env"] = [{"name": k, "value": v} for k, v in container.env.items()]
    resources: dict[str, Any] = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    manifest["resources"] = resources
    return manifest


class SimApiServer:
    """kmock's emulated Kubernetes API server on 127.0.0.1 in a background thread, loaded with the
    scenario's pods."""

    def __init__(self, scenario: Scenario, *, node_name: str | None = None) -> None:
        """``node_name``: the pods' ``spec.nodeName``; the scenario's node name when None."""
        self.scenario = scenario
        self.node_name = node_name if node_name is not None else scenario.node.name
        self._live: set[tuple[str, str]] = set()  # (namespace, name) of the scenario's pods created here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._emulator: Any = None
        self._server: Any = None
        self._port: int | None = None
        self._created_owners: set[tuple[str, str, str]] = set()  # (kind, namespace, name)

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("SimApiServer: start() it first")
        return f"http://127.0.0.1:{self._port}"

    def start(self, at: float | None = None) -> None:
        """Serve on a free loopback port and create the scenario's pods and their owners over HTTP: those
        alive at scenario second ``at``, every one when None."""
        if self._server is not None:
            return
        import kmock

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gpuattr-sim-kube-api", daemon=True)
        self._thread.start()
        try:
            self._emulator = self._call(self._enter_emulator())
            server = kmock.Server(self._emulator, server_cls=_quick_stop_server_class())
            self._call(server.__aenter__())
            self._server = server
            self._port = server.port
            self.follow(at)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving (open watches are cut) and end the background loop; objects are dropped."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._server is not None:
                self._call(self._server.__aexit__(None, None, None))
            if self._emulator is not None:
                self._call(self._emulator.__aexit__(None, None, None))
        finally:
            self._server = self._emulator = None
            self._port = None
            self._created_owners.clear()
            self._live.clear()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> SimApiServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- objects --------------------------------------------------------------------------------------

    def pod_manifest(self, pod: PodSpec) -> dict[str, Any]:
        """The Pod object the API server shows for ``pod`` on this node."""
        metadata: dict[str, Any] = {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": self.scenario.pod_uid(pod),
            "labels": dict(pod.labels),
            "annotations": dict(pod.annotations),
        }
        if pod.owner is not None:
            metadata["ownerReferences"] = [_controller_ref(pod.owner.kind, pod.namespace, pod.owner.name)]
        statuses = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "containerID": f"{_RUNTIME_SCHEME[c.runtime]}://{self.scenario.container_id(pod, c)}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": STARTED_AT}},
            }
            for c in pod.containers
        ]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {
                "nodeName": self.node_name,
                "restartPolicy": "Always",
                "containers": [_container(c, pod.qos) for c in pod.containers],
            },
            "status": {
                "phase": "Running",
                "qosClass": _QOS_CLASS[pod.qos],
                "startTime": STARTED_AT,
                "containerStatuses": statuses,
            },
        }

    def create_pod(self, pod: dict[str, Any] | PodSpec) -> None:
        """Create a Pod (a manifest, or a :class:`PodSpec` with the owners it implies) over HTTP."""
        if isinstance(pod, PodSpec):
            if pod.owner is not None:
                for obj in owner_chain(pod.namespace, pod.owner):
                    meta = obj["metadata"]
                    key = (obj["kind"], meta["namespace"], meta["name"])
                    if key not in self._created_owners:
                        self._create(obj)
                        self._created_owners.add(key)
            manifest = self.pod_manifest(pod)
        else:
            manifest = pod
        self._create(manifest)

    def follow(self, at: float | None) -> None:
        """Create the scenario's pods alive at scenario second ``at`` (every one when None) and delete those
        that are not, so the watch sees pods come and go as their lifetimes say. A stopped server (a test's
        outage) holds nothing and follows nothing; :meth:`start` brings the pods back."""
        if self._emulator is None:
            return
        for pod in self.scenario.pods:
            key = (pod.namespace, pod.name)
            live = at is None or pod.alive(at)
            if live and key not in self._live:
                self.create_pod(pod)
                self._live.add(key)
            elif not live and key in self._live:
                self.delete_pod(*key)
                self._live.discard(key)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod; watches see DELETED."""
        self._request("DELETE", self._path("Pod", namespace, name))
        self._call(self._forget(_RESOURCES["Pod"][0], namespace, name))

    async def _forget(self, resource: str, namespace: str, name: str) -> None:
        """Drop a deleted object's history and the log of requests served. kmock keeps both for test
        assertions, which we do not make, and matches each new request against the log: under a churn of
        thousands of pods the simulated API server would otherwise slow down and grow without end."""
        emulator = self._emulator
        emulator._requests.clear()
        for reaction in emulator._payloads:
            reaction._requests.clear()
        async with emulator._lock:
            objects = emulator.objects
            try:
                deleted = objects[resource, namespace, name].deleted
            except KeyError:
                return
            if deleted:
                del objects[resource, namespace, name]

    def patch_pod_labels(self, namespace: str, name: str, labels: dict[str, str]) -> None:
        """Merge ``labels`` into a pod's labels; watches see MODIFIED."""
        self._request("PATCH", self._path("Pod", namespace, name), {"metadata": {"labels": labels}})

    # -- plumbing -------------------------------------------------------------------------------------

    def _create(self, obj: dict[str, Any]) -> None:
        self._request("POST", self._path(obj.get("kind", "Pod"), obj["metadata"]["namespace"]), obj)

    @staticmethod
    def _path(kind: str, namespace: str, name: str | None = None) -> str:
        collection = _RESOURCES[kind][1].format(ns=namespace)
        return collection if name is None else f"{collection}/{name}"

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("SimApiServer: start() it first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    @staticmethod
    async def _enter_emulator() -> Any:
        import kmock

        emulator = kmock.KubernetesEmulator()
        # kmock answers 404 to a list of a resource it holds no object of unless the resource is declared.
        for kind, (resource, _, _) in _RESOURCES.items():
            emulator.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True)
        await emulator.__aenter__()
        return emulator

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        emulator = self._emulator
        if emulator is None:
            raise RuntimeError("SimApiServer: start() it first")

        async def run() -> tuple[int, str]:
            headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
            async with emulator.request(method, path, json=body, headers=headers) as response:
                return int(response.status), str(await response.text())

        status, text = self._call(run())
        if not 200 <= status < 300:
            raise SimApiError(f"{method} {path}: HTTP {status}: {text[:500]}")
        result: dict[str, Any] = json.loads(text) if text else {}
        return result


def _quick_stop_server_class() -> type[Any]:
    """aiohttp's test server, but closing open (watch) connections within 0.2 s when stopped (the default
    graceful shutdown waits up to 60 s, and kmock's watch handler never ends), and writing no access log
    (one INFO line per request would drown the exporter's own log)."""
    import aiohttp.test_utils
    import aiohttp.web_runner
    import aiohttp.web_server

    class QuickStopServer(aiohttp.test_utils.RawTestServer):
        async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web_runner.ServerRunner:
            server = aiohttp.web_server.Server(
                self._handler, loop=self._loop, debug=debug, **{"access_log": None, **kwargs}
            )
            return aiohttp.web_runner.ServerRunner(server, debug=debug, shutdown_timeout=0.2, **kwargs)

    return QuickStopServer
