"""Node-scoped pod metadata cache: pod UID → workload, labels, annotations and containers.

A :class:`PodCache` lists the pods bound to this node (``fieldSelector=spec.nodeName=<node>``), then
watches from the list's resourceVersion, relists every ``resync_s`` and after a ``410 Gone``, and on any
other error reconnects with exponential back-off and jitter while serving its last content. Each pod's
controlling owner is resolved to the workload people name: a Deployment through its ReplicaSet, a CronJob
through its Job (owner lookups are cached with a TTL; a failed lookup keeps the immediate owner).

``kubernetes`` is an optional dependency of the agent: it is imported only when a :class:`PodCache` or an
API client is created, so the dataclasses here can be imported without it.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("gpuattr.kube")

# Owner kinds looked up to follow their own controller: ReplicaSet → Deployment, Job → CronJob.
_FOLLOWED_KINDS = frozenset({"ReplicaSet", "Job"})
_EMPTY: Mapping[str, str] = MappingProxyType({})


# ---------------------------------------------------------------------------------------------------------
# Metadata


@dataclass(frozen=True)
class ContainerMeta:
    """One container of a pod, as the pod spec and status describe it."""

    name: str
    container_id: str | None  # bare runtime ID ("containerd://<id>" → "<id>"); None until it has started
    args: tuple[str, ...]  # command + args from the pod spec (model identity); never exported
    env: Mapping[str, str]  # env vars with a plain `value` (valueFrom ignored); never exported


@dataclass(frozen=True)
class PodMeta:
    """What the exporter needs to know about one pod on this node."""

    uid: str
    namespace: str
    name: str
    node: str | None  # spec.nodeName
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    workload_kind: str  # "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod", …
    workload: str  # the workload's name; the pod's own name for a bare pod
    containers: tuple[ContainerMeta, ...]

    def container_by_id(self, container_id: str) -> ContainerMeta | None:
        """The container with this runtime ID (bare, or with its "<runtime>://" prefix), or None."""
        wanted = strip_container_id(container_id)
        if wanted is None:
            return None
        for container in self.containers:
            if container.container_id == wanted:
                return container
        return None


def strip_container_id(raw: str | None) -> str | None:
    """``"containerd://<id>"``, ``"cri-o://<id>"``, ``"docker://<id>"`` → ``"<id>"``; empty → None."""
    if not raw:
        return None
    _, sep, rest = raw.partition("://")
    bare = rest if sep else raw
    return bare.strip() or None


# ---------------------------------------------------------------------------------------------------------
# Settings and client


@dataclass
class KubeSettings:
    """How the pod cache talks to the Kubernetes API server."""

    node_name: str
    """This node's name (from NODE_NAME, downward API): only pods with spec.nodeName equal to it are kept."""
    resync_s: float = 300.0
    """Seconds between full relists of this node's pods."""
    watch_timeout_s: int = 60
    """Server-side timeout of one watch request, in seconds; the watch is then reopened."""
    backoff_initial_s: float = 0.5
    """First reconnect delay after an error, in seconds; doubles per failure, with jitter."""
    backoff_max_s: float = 30.0
    """Largest reconnect delay, in seconds."""
    request_timeout_s: float = 10.0
    """Connect and read timeout of list and owner requests, in seconds (a watch reads for longer)."""
    owner_cache_ttl_s: float = 600.0
    """Seconds an owner lookup (ReplicaSet → Deployment, Job → CronJob) is reused."""
    owner_error_ttl_s: float = 30.0
    """Seconds a failed owner lookup is not retried (the immediate owner is used meanwhile)."""


# ---------------------------------------------------------------------------------------------------------
# Cache


class _GoneError(Exception):
    """The watch's resourceVersion is too old (HTTP 410): relist."""


class PodCache:
    """This node's pods, kept current by list + watch in a daemon thread; reads never call the API."""

    def __init__(
        self,
        api_client: ApiClient,
        settings: KubeSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        from kubernetes import client, watch

        self._settings = settings
        self._clock = clock  # seconds, monotonic: resync and owner TTLs
        self._wall_clock = wall_clock  # seconds since the epoch: last_sync_unix
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._api_exception: type[Exception] = client.ApiException
        self._watch_factory: Callable[[], Any] = watch.Watch
        self._field_selector = f"spec.nodeName={settings.node_name}"

        self._lock = threading.Lock()
        self._pods: dict[str, PodMeta] = {}
        # (kind, namespace, name) → (expiry on self._clock, (workload kind, workload name))
        self._owners: dict[tuple[str, str, str], tuple[float, tuple[str, str]]] = {}
        self._up = False
        self._state_logged: bool | None = None  # last state logged: None before the first list or error
        self._owner_state: bool | None = None
        self._bad_pod_logged = False
        self._last_sync_unix: float | None = None
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._rng = random.Random()  # noqa: S311  (back-off jitter, not cryptography)
        self.errors_total: dict[str, int] = {"list": 0, "watch": 0, "owner_lookup": 0}

    # -- public reads ---------------------------------------------------------------------------------

    def get(self, uid: str) -> PodMeta | None:
        """The pod with this UID if it is on this node, from memory."""
        return self._pods.get(uid)

    def pods(self) -> list[PodMeta]:
        """All pods on this node, from memory."""
        return list(self._pods.values())

    def wait_synced(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` seconds for the first successful list; True when it happened."""
        return self._synced.wait(timeout_s)

    @property
    def up(self) -> bool:
        """True after a successful list while the watch is healthy; False while the API is unreachable."""
        return self._up

    @property
    def last_sync_unix(self) -> float | None:
        """Unix time (seconds) of the last successful full list; None before the first."""
        return self._last_sync_unix

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the list/watch thread; returns at once and never raises for API errors."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="gpuattr-pod-cache", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, closing an open watch; waits up to ``timeout_s`` seconds for it to end."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        while thread.is_alive():
            with self._lock:
                current = self._watch
            if current is not None:
                current.stop()  # shuts the socket down; repeated in case the watch was just opening
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("pod cache thread did not stop within %.1f s", timeout_s)
                break
            thread.join(min(0.1, remaining))
        self._thread = None

    # -- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # consecutive failed rounds: the back-off exponent
        gone_in_a_row = 0  # consecutive 410s: the first relists at once, later ones back off
        while not self._stopping.is_set():
            phase = "list"
            try:
                resource_version = self._relist()
                phase = "watch"
                next_resync = self._clock() + self._settings.resync_s
                while not self._stopping.is_set():
                    remaining_s = next_resync - self._clock()
                    if remaining_s <= 0:
                        break
                    resource_version, healthy = self._watch_once(resource_version, remaining_s)
                    if healthy:
                        failures = gone_in_a_row = 0
            except _GoneError:
                self._count("http_410")
                log.debug("pod watch expired (410 Gone); relisting")
                if gone_in_a_row:
                    self._stopping.wait(self._backoff_s(gone_in_a_row - 1))
                gone_in_a_row += 1
            except Exception as exc:
                if self._stopping.is_set():
                    break
                self._on_error(phase, exc)
                delay_s = self._backoff_s(failures)
                failures += 1
                self._stopping.wait(delay_s)

    def _relist(self) -> str | None:
        pod_list = self._core.list_pod_for_all_namespaces(
            field_selector=self._field_selector,
            resource_version="0",  # served from the API server's watch cache
            _request_timeout=self._settings.request_timeout_s,
        )
        fresh: dict[str, PodMeta] = {}
        for pod in pod_list.items or ():
            meta = self._safe_pod_meta(pod)
            if meta is not None:
                fresh[meta.uid] = meta
        with self._lock:
            self._pods = fresh
        self._last_sync_unix = self._wall_clock()
        self._set_up(True, None)
        self._synced.set()
        metadata = pod_list.metadata
        return getattr(metadata, "resource_version", None) if metadata is not None else None

    def _watch_once(self, resource_version: str | None, remaining_s: float) -> tuple[str | None, bool]:
        """Stream one watch request; returns the last resourceVersion and whether the watch was healthy."""
        from urllib3.exceptions import ReadTimeoutError

        timeout_s = max(1, min(self._settings.watch_timeout_s, math.ceil(remaining_s)))
        kwargs: dict[str, Any] = {
            "field_selector": self._field_selector,
            "timeout_seconds": timeout_s,
            "allow_watch_bookmarks": True,
            # Client-side read timeout: a server that ignores timeoutSeconds still ends the request.
            "_request_timeout": (
                self._settings.request_timeout_s,
                timeout_s + self._settings.request_timeout_s,
            ),
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        current = self._watch_factory()
        with self._lock:
            self._watch = current
        healthy = False
        try:
            for event in current.stream(self._core.list_pod_for_all_namespaces, **kwargs):
                if self._stopping.is_set():
                    break
                healthy = True
                self._apply(event)
        except ReadTimeoutError:
            healthy = True  # an idle stream read out; reopen (an unreachable server fails to connect next)
        except self._api_exception as exc:
            if getattr(exc, "status", None) == 410:
                raise _GoneError from exc
            raise
        else:
            healthy = True
        finally:
            with self._lock:
                self._watch = None
        return current.resource_version or resource_version, healthy

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind not in {"ADDED", "MODIFIED", "DELETED"}:
            return  # BOOKMARK: only its resourceVersion matters, kept by the Watch
        pod = event.get("object")
        metadata = getattr(pod, "metadata", None)
        uid = getattr(metadata, "uid", None)
        if not uid:
            return
        node = getattr(getattr(pod, "spec", None), "node_name", None)
        if kind == "DELETED" or node != self._settings.node_name:
            with self._lock:
                self._pods.pop(uid, None)
            return
        meta = self._safe_pod_meta(pod)
        if meta is not None:
            with self._lock:
                self._pods[uid] = meta

    # -- pod → PodMeta --------------------------------------------------------------------------------

    def _safe_pod_meta(self, pod: Any) -> PodMeta | None:
        """:meth:`_pod_meta`, skipping (and counting as "pod") a pod it cannot read."""
        try:
            return self._pod_meta(pod)
        except Exception as exc:
            self._count("pod", exc)
            metadata = getattr(pod, "metadata", None)
            where = f"{getattr(metadata, 'namespace', None)}/{getattr(metadata, 'name', None)}"
            (log.debug if self._bad_pod_logged else log.warning)(
                "skipping pod %s: cannot read it (%s)", where, _describe(exc)
            )
            self._bad_pod_logged = True
            return None

    def _pod_meta(self, pod: Any) -> PodMeta | None:
        """PodMeta for a pod on this node (client-side check of the field selector), else None."""
        metadata = pod.metadata
        spec = pod.spec
        if metadata is None or not metadata.uid or spec is None:
            return None
        if spec.node_name != self._settings.node_name:
            return None
        namespace = metadata.namespace or ""
        name = metadata.name or ""
        kind, workload = self._workload(namespace, name, metadata.owner_references)
        status = pod.status
        ids: dict[str, str | None] = {}
        if status is not None:
            for statuses in (
                status.container_statuses,
                status.init_container_statuses,
                status.ephemeral_container_statuses,
            ):
                for container_status in statuses or ():
                    ids[container_status.name] = strip_container_id(container_status.container_id)
        containers = tuple(
            _container_meta(container, ids.get(container.name))
            for group in (spec.containers, spec.init_containers, spec.ephemeral_containers)
            for container in group or ()
        )
        return PodMeta(
            uid=metadata.uid,
            namespace=namespace,
            name=name,
            node=spec.node_name,
            labels=MappingProxyType(dict(metadata.labels or {})),
            annotations=MappingProxyType(dict(metadata.annotations or {})),
            workload_kind=kind,
            workload=workload,
            containers=containers,
        )

    def _workload(self, namespace: str, pod_name: str, owner_references: Iterable[Any] | None) -> tuple[str, str]:
        owner = _controller(owner_references)
        if owner is None:
            return "Pod", pod_name
        kind, name = owner
        if kind not in _FOLLOWED_KINDS:
            return kind, name
        key = (kind, namespace, name)
        now = self._clock()
        cached = self._owners.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            resolved = self._lookup_owner(kind, namespace, name)
        except Exception as exc:
            self._count("owner_lookup", exc)
            if self._owner_state is not False:
                log.warning(
                    "owner lookup of %s %s/%s failed (%s); using the immediate owner",
                    kind,
                    namespace,
                    name,
                    _describe(exc),
                )
                self._owner_state = False
            self._owners[key] = (now + self._settings.owner_error_ttl_s, (kind, name))
            return kind, name
        if self._owner_state is False:
            log.info("owner lookups work again")
        self._owner_state = True
        self._owners[key] = (now + self._settings.owner_cache_ttl_s, resolved)
        self._expire_owners(now)
        return resolved

    def _lookup_owner(self, kind: str, namespace: str, name: str) -> tuple[str, str]:
        """Read a ReplicaSet or Job (metadata only) and follow its controller to a Deployment / CronJob."""
        read: Callable[..., Any] = (
            self._apps.read_namespaced_replica_set if kind == "ReplicaSet" else self._batch.read_namespaced_job
        )
        response = read(name, namespace, _preload_content=False, _request_timeout=self._settings.request_timeout_s)
        try:
            document = json.loads(response.data)
        finally:
            response.release_conn()
        metadata = (document.get("metadata") or {}) if isinstance(document, dict) else {}
        parent = _controller_from_dicts(metadata.get("ownerReferences"))
        if parent is None:
            return kind, name
        return parent

    def _expire_owners(self, now: float) -> None:
        if len(self._owners) > 1024:
            self._owners = {key: value for key, value in self._owners.items() if value[0] > now}

    # -- state and errors -----------------------------------------------------------------------------

    def _count(self, reason: str, exc: BaseException | None = None) -> None:
        status = getattr(exc, "status", None) if exc is not None else None
        with self._lock:
            self.errors_total[reason] = self.errors_total.get(reason, 0) + 1
            if isinstance(status, int) and status > 0:
                key = f"http_{status}"
                self.errors_total[key] = self.errors_total.get(key, 0) + 1

    def _on_error(self, phase: str, exc: Exception) -> None:
        self._count(phase, exc)
        self._set_up(False, f"{phase} failed: {_describe(exc)}")

    def _set_up(self, up: bool, why: str | None) -> None:
        self._up = up
        if self._state_logged is up:
            return
        self._state_logged = up
        if up:
            log.info("pod cache in sync: %d pods on node %s", len(self._pods), self._settings.node_name)
        else:
            log.warning(
                "pod cache cannot reach the Kubernetes API (%s); serving the last %d known pods, retrying",
                why,
                len(self._pods),
            )

    def _backoff_s(self, failures: int) -> float:
        base_s = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2.0 ** min(failures, 30))
        return base_s / 2 + self._rng.uniform(0, base_s / 2)


# ---------------------------------------------------------------------------------------------------------
# Helpers


def _container_meta(container: Any, container_id: str | None) -> ContainerMeta:
    args = tuple(str(a) for a in (container.command or ())) + tuple(str(a) for a in (container.args or ()))
    env = {e.name: e.value for e in container.env or () if e.value is not None and e.value_from is None}
    return ContainerMeta(name=container.name, container_id=container_id, args=args, env=MappingProxyType(env))


def _controller(owner_references: Iterable[Any] | None) -> tuple[str, str] | None:
    for ref in owner_references or ():
        if ref.controller and ref.kind and ref.name:
            return str(ref.kind), str(ref.name)
    return None


def _controller_from_dicts(owner_references: Any) -> tuple[str, str] | None:
    if not isinstance(owner_references, list):
        return None
    for ref in owner_references:
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") and ref.get("name"):
            return str(ref["kind"]), str(ref["name"])
    return None


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
