"""Which devices the kubelet *allocated* to each container: a client of the kubelet pod-resources API (v1).

The kubelet serves ``v1.PodResourcesLister`` over gRPC on a unix socket
(``/var/lib/kubelet/pod-resources/kubelet.sock``). The answer names pods and containers by namespace and
name only (no pod UID, no container ID), and devices by the device plugin's opaque IDs, which
:func:`parse_device_id` turns into GPU / MIG UUIDs where it can.

``grpc`` and the generated stubs (``python -m exporter.resolve.proto.generate``) are imported only when a
:class:`PodResourcesClient` is created: they are optional dependencies of the agent.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from exporter.resolve.proto.podresources.v1 import api_pb2

log = logging.getLogger("gpuattr.podresources")

DEFAULT_SOCKET_PATH = "/var/lib/kubelet/pod-resources/kubelet.sock"
# Largest answer accepted, in bytes: the kubelet's own pod-resources client allows 16 MiB; nodes with
# plugins that advertise one device ID per MiB or per core percent send big answers.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# gRPC status codes after which the channel is dropped and rebuilt on the next call.
_CONNECTION_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})

# ---------------------------------------------------------------------------------------------------------
# Device IDs

# "<id>::<n>": a shared (time-sliced or MPS) replica of a device, NVIDIA device plugin.
_REPLICA_RE = re.compile(r"(?P<base>.+)::(?P<replica>[0-9]{1,18})", re.ASCII)
# GKE: "nvidia0", "nvidia0/vgpu3" (time-sharing), "nvidia0/gi3" (MIG), "nvidia0/gi3/vgpu1" (MIG + sharing).
_GKE_RE = re.compile(
    r"(?P<gpu>nvidia(?P<index>[0-9]{1,9}))(?:/gi(?P<gi>[0-9]{1,9}))?(?:/vgpu(?P<vgpu>[0-9]{1,18}))?",
    re.ASCII,
)
# Old MIG device naming: "MIG-GPU-<gpu uuid>/<gpu instance>/<compute instance>".
_OLD_MIG_RE = re.compile(r"MIG-(?P<gpu>GPU-[0-9A-Za-z-]+)/[0-9]{1,9}/[0-9]{1,9}", re.ASCII)


@dataclass(frozen=True)
class DeviceRef:
    """One device ID from the kubelet, decoded.

    ``gpu_uuid`` is the physical GPU's UUID ("GPU-...") when the ID carries it; otherwise the device's own
    identifier with any sharing suffix removed: the MIG UUID for "MIG-<uuid>[::n]" (the parent GPU is not
    in the ID), "nvidiaN" for GKE IDs, or the whole ID for unknown schemes.
    """

    gpu_uuid: str
    mig_uuid: str | None  # "MIG-..." when the device is a MIG instance
    replica: int | None  # sharing replica index ("<id>::<n>", GKE ".../vgpuN"); None when not shared
    raw: str  # the device ID exactly as the kubelet gave it
    gke_index: int | None = None  # N of a GKE "nvidiaN..." ID (an NVML device index), else None


def parse_device_id(device_id: str) -> DeviceRef:
    """Decode a device plugin's device ID; never raises, always keeps the ID in ``raw``."""
    text = device_id.strip()

    gke = _GKE_RE.fullmatch(text)
    if gke is not None:
        vgpu = gke.group("vgpu")
        return DeviceRef(
            gpu_uuid=gke.group("gpu"),
            mig_uuid=None,
            replica=int(vgpu) if vgpu is not None else None,
            raw=device_id,
            gke_index=int(gke.group("index")),
        )

    replica: int | None = None
    shared = _REPLICA_RE.fullmatch(text)
    if shared is not None:
        text = shared.group("base")
        replica = int(shared.group("replica"))

    if text.startswith("MIG-"):
        old = _OLD_MIG_RE.fullmatch(text)
        gpu_uuid = old.group("gpu") if old is not None else text
        return DeviceRef(gpu_uuid=gpu_uuid, mig_uuid=text, replica=replica, raw=device_id)
    return DeviceRef(gpu_uuid=text, mig_uuid=None, replica=replica, raw=device_id)


# ---------------------------------------------------------------------------------------------------------
# Client


@dataclass(frozen=True)
class Allocation:
    """One device allocated to one container."""

    namespace: str
    pod: str
    container: str
    resource: str  # extended resource name, e.g. "nvidia.com/gpu", "nvidia.com/mig-1g.10gb"
    device: DeviceRef


class PodResourcesError(RuntimeError):
    """The pod-resources API could not be asked or refused to answer.

    ``code`` is the gRPC status name (e.g. "UNAVAILABLE"; a missing socket file reads as "UNAVAILABLE" too).
    """

    def __init__(self, socket_path: str, method: str, code: str, details: str) -> None:
        super().__init__(f"kubelet pod-resources {method} on unix://{socket_path}: {code}: {details}")
        self.socket_path = socket_path
        self.method = method
        self.code = code
        self.details = details


class _ListerStub(Protocol):
    """The part of the generated ``PodResourcesListerStub`` this client calls."""

    def List(self, request: api_pb2.ListPodResourcesRequest, *, timeout: float) -> api_pb2.ListPodResourcesResponse: ...

    def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, *, timeout: float
    ) -> api_pb2.AllocatableResourcesResponse: ...

    def Get(self, request: api_pb2.GetPodResourcesRequest, *, timeout: float) -> api_pb2.GetPodResourcesResponse: ...


def _load_optional_modules() -> tuple[Any, Any, Any]:
    """``(grpc, api_pb2, api_pb2_grpc)``; ImportError saying what to install or generate."""
    try:
        grpc = importlib.import_module("grpc")
        pb2 = importlib.import_module("exporter.resolve.proto.podresources.v1.api_pb2")
        pb2_grpc = importlib.import_module("exporter.resolve.proto.podresources.v1.api_pb2_grpc")
    except ImportError as exc:
        raise ImportError(
            "the kubelet pod-resources client needs grpcio and protobuf (extra 'kubernetes') and the "
            f"generated stubs (python -m exporter.resolve.proto.generate): {exc}"
        ) from exc
    return grpc, pb2, pb2_grpc


def _is_unsupported(error: PodResourcesError) -> bool:
    """True when the kubelet lacks the method (too old) or has it switched off by a feature gate."""
    return error.code == "UNIMPLEMENTED" or (error.code == "UNKNOWN" and "disabled" in error.details.lower())


def _is_pod_not_found(error: PodResourcesError) -> bool:
    """True for Get's answer about a pod the kubelet does not run (the kubelet answers UNKNOWN)."""
    return error.code == "NOT_FOUND" or (error.code == "UNKNOWN" and "not found" in error.details.lower())


class PodResourcesClient:
    """Reads device allocations from the kubelet pod-resources API.

    Connects lazily; every failure raises :class:`PodResourcesError` naming the socket, after which the
    next call connects afresh (the kubelet recreates its socket when it restarts). Thread-safe.
    """

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET_PATH,
        *,
        resource_prefixes: Sequence[str] = ("nvidia.com/",),
        timeout_s: float = 5.0,
    ) -> None:
        self.socket_path = socket_path
        self.resource_prefixes = tuple(resource_prefixes)
        self.timeout_s = timeout_s  # deadline of each call, seconds
        self._grpc, self._pb2, self._pb2_grpc = _load_optional_modules()
        self._lock = threading.Lock()
        self._channel: Any = None
        self._stub: _ListerStub | None = None
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket connected to
        self._up: bool | None = None  # last state logged
        # Whether the kubelet serves GetAllocatableResources / Get; None until first asked.
        self.allocatable_supported: bool | None = None
        self.get_supported: bool | None = None

    # -- public API -----------------------------------------------------------------------------------

    def list_allocations(self) -> list[Allocation]:
        """Every allocated device of a wanted resource, one entry per (container, device ID)."""
        response: api_pb2.ListPodResourcesResponse = self._call("List", self._pb2.ListPodResourcesRequest())
        return self._allocations(response.pod_resources)

    def get_pod_allocations(self, namespace: str, pod: str) -> list[Allocation]:
        """The wanted devices of one pod ([] when the kubelet does not run it).

        Uses ``Get``; on a kubelet without it (before 1.34 unless the feature gate is on) falls back to
        filtering ``List`` and sets ``get_supported`` to False.
        """
        if self.get_supported is not False:
            request = self._pb2.GetPodResourcesRequest(pod_name=pod, pod_namespace=namespace)
            try:
                response: api_pb2.GetPodResourcesResponse = self._call("Get", request)
            except PodResourcesError as exc:
                if _is_pod_not_found(exc):
                    self.get_supported = True
                    return []
                if not _is_unsupported(exc):
                    raise
                log.info("kubelet pod-resources Get unsupported (%s); using List instead", exc.code)
                self.get_supported = False
            else:
                self.get_supported = True
                if not response.HasField("pod_resources"):
                    return []
                return self._allocations([response.pod_resources])
        return [a for a in self.list_allocations() if a.namespace == namespace and a.pod == pod]

    def allocatable(self) -> list[tuple[str, DeviceRef]]:
        """``(resource, device)`` for every wanted device the node can allocate, used or not.

        A kubelet without GetAllocatableResources (or with it switched off) gives [] and sets
        ``allocatable_supported`` to False.
        """
        try:
            response: api_pb2.AllocatableResourcesResponse = self._call(
                "GetAllocatableResources", self._pb2.AllocatableResourcesRequest()
            )
        except PodResourcesError as exc:
            if not _is_unsupported(exc):
                raise
            if self.allocatable_supported is not False:
                log.info("kubelet pod-resources GetAllocatableResources unsupported (%s)", exc.code)
            self.allocatable_supported = False
            return []
        self.allocatable_supported = True
        return [
            (devices.resource_name, parse_device_id(device_id))
            for devices in response.devices
            if self._wanted(devices.resource_name)
            for device_id in devices.device_ids
        ]

    def close(self) -> None:
        """Close the channel; a later call connects again."""
        with self._lock:
            self._drop_channel()

    def __enter__(self) -> PodResourcesClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------------

    def _wanted(self, resource_name: str) -> bool:
        return resource_name.startswith(self.resource_prefixes)

    def _allocations(self, pods: Iterable[api_pb2.PodResources]) -> list[Allocation]:
        return [
            Allocation(
                namespace=pod.namespace,
                pod=pod.name,
                container=container.name,
                resource=devices.resource_name,
                device=parse_device_id(device_id),
            )
            for pod in pods
            for container in pod.containers
            for devices in container.devices
            if self._wanted(devices.resource_name)
            for device_id in devices.device_ids
        ]

    def _call(self, method: str, request: Any) -> Any:
        """Invoke ``method`` with the call deadline; PodResourcesError on any failure."""
        with self._lock:
            stub = self._connect(method)
        try:
            response = getattr(stub, method)(request, timeout=self.timeout_s)
        except self._grpc.RpcError as exc:
            code = exc.code()
            code_name = code.name if code is not None else "UNKNOWN"
            error = PodResourcesError(self.socket_path, method, code_name, exc.details() or "")
            if code_name in _CONNECTION_CODES:
                with self._lock:
                    self._drop_channel()
                self._set_state(up=False, reason=error)
            raise error from None
        self._set_state(up=True)
        return response

    def _connect(self, method: str) -> _ListerStub:
        """The stub of a channel to the current socket file, (re)built when needed. Holds the lock."""
        try:
            st = os.stat(self.socket_path)
        except OSError as exc:
            self._drop_channel()
            error = PodResourcesError(self.socket_path, method, "UNAVAILABLE", f"socket unreachable: {exc}")
            self._set_state(up=False, reason=error)
            raise error from None
        if not stat.S_ISSOCK(st.st_mode):
            self._drop_channel()
            error = PodResourcesError(self.socket_path, method, "UNAVAILABLE", "not a unix socket")
            self._set_state(up=False, reason=error)
            raise error
        socket_id = (st.st_dev, st.st_ino)
        if self._stub is not None and socket_id != self._socket_id:
            self._drop_channel()  # the kubelet restarted and made a new socket
        if self._stub is None:
            self._channel = self._grpc.insecure_channel(
                f"unix://{os.path.abspath(self.socket_path)}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
            make_stub: Callable[[Any], _ListerStub] = self._pb2_grpc.PodResourcesListerStub
            self._stub = make_stub(self._channel)
            self._socket_id = socket_id
        return self._stub

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None
        self._socket_id = None

    def _set_state(self, *, up: bool, reason: PodResourcesError | None = None) -> None:
        """Log once per change between reachable and unreachable."""
        if up == self._up:
            return
        self._up = up
        if up:
            log.info("kubelet pod-resources API reachable on unix://%s", self.socket_path)
        else:
            log.warning("kubelet pod-resources API unreachable: %s", reason)
